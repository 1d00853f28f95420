"""LoopLM: a looped language model (local layers before, one shared block looped, local layers after).

    ids [B, T] -> embed -> layers_before (prelude) -> e
               -> h_0 = e;  h_r = LoopBlock([inject(h_{r-1}, e)])  r = 1..R   (one set of weights)
               -> layers_after (coda) -> norm -> lm_head -> logits [B, T, V]

Reading order is the data's path: `run` below goes top to bottom. Lessons 18 (looping), 19
(adaptive exit), 20 (KV caches for loops), 21 (ternary BitLinear in the shared block).

The exit rules, with the rule for tokens that leave the loop early (deterministic, per token):
- "none": every token runs `loop_count` iterations.
- "gate" (Ouro): lambda_r = sigmoid(w . h_r + b); exit at the first r whose CDF of the exit
  distribution reaches q = exit_threshold.
- "kl" (Huginn): exit at the first r >= 2 with KL(p_r || p_{r-1}) < exit_threshold, where p_r is the
  next-token distribution read from h_r.
- "entropy": exit at the first r with H(p_r) < exit_threshold.
Every exit is clamped to [min_loops, max_loops]. A token that has exited keeps its state (h and
the gate state G are copied forward), *but later iterations still compute its K/V from that frozen
state*: tokens after it attend to a complete cache at every iteration. That rule is the same in a
batched prefill and in token-by-token decoding, which is why the two agree exactly.
("kl"/"entropy" read p_r as lm_head(norm(h_r)); that is the model's own distribution only without a
coda, so they require n_after = 0: with a coda, p_r would need the coda's attention at every step.)
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .. import checks
from ..errors import CacheError, ConfigError, ShapeError
from ..nn import functional as F
from ..nn.block import DecoderBlock, default_hidden
from ..nn.embedding import Embedding
from ..nn.linear import Linear
from ..nn.looped import (EXITS, KV_POLICIES, LoopBlock, LoopCaches, entropy, freeze, kl_divergence,
                         make_loop_caches)
from ..nn.module import ModuleList
from ..nn.norm import RMSNorm
from ..nn.rope import RotaryEmbedding
from ..ops import cat, stack
from ..tensor import Tensor
from .base import CausalLM


@dataclass
class LoopConfig:
    """Everything that shapes a LoopLM (stored as `looplm.*` metadata in GGUF)."""

    vocab_size: int = 64
    d_model: int = 32
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (MHA)
    hidden: int | None = None  # None = SwiGLU's 8/3 C rounded up to a multiple of 8
    max_len: int = 256
    n_before: int = 0  # local (unshared) layers before the loop: the "prelude"
    n_after: int = 0  # local layers after the loop: the "coda"
    loop_count: int = 2  # R when exit == "none"
    min_loops: int = 1
    max_loops: int | None = None  # None = loop_count; the T_max of adaptive exit
    exit: str = "none"  # "none" | "gate" | "kl" | "entropy"
    exit_threshold: float = 0.5  # q for "gate"; KL (nats) for "kl"; entropy (nats) for "entropy"
    kv_policy: str = "per_iteration"  # "per_iteration" | "shared_first" | "last_step"
    input_injection: bool = False  # Huginn: each iteration sees Linear([h ; e])
    gating: bool = False  # per-iteration, per-channel gates mixing in the running mean G
    bitlinear: bool = False  # ternary BitLinear projections in the shared block
    rope: bool = True
    rope_base: float = 10000.0
    eps: float = 1e-5

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden is None:
            self.hidden = default_hidden(self.d_model, "swiglu")
        if self.max_loops is None:
            self.max_loops = max(self.loop_count, self.min_loops)
        for name in ("vocab_size", "d_model", "n_heads", "n_kv_heads", "hidden", "max_len", "loop_count",
                     "min_loops", "max_loops"):
            checks.positive_int(f"LoopConfig.{name}", getattr(self, name))
        for name in ("n_before", "n_after"):
            checks.integer(f"LoopConfig.{name}", getattr(self, name), lo=0)
        if self.min_loops > self.max_loops:
            raise ConfigError(f"min_loops={self.min_loops} > max_loops={self.max_loops}: no loop count satisfies both")
        checks.choice("LoopConfig.exit", self.exit, EXITS)
        checks.choice("LoopConfig.kv_policy", self.kv_policy, KV_POLICIES)
        for name in ("input_injection", "gating", "bitlinear", "rope"):
            checks.boolean(f"LoopConfig.{name}", getattr(self, name))
        checks.number("LoopConfig.exit_threshold", self.exit_threshold)
        checks.number("LoopConfig.rope_base", self.rope_base, lo=0.0, lo_open=True)
        checks.number("LoopConfig.eps", self.eps, lo=0.0, lo_open=True)
        if self.exit in ("kl", "entropy") and self.n_after:
            raise ConfigError(f"exit={self.exit!r} reads the next-token distribution after every iteration, which "
                              f"with a coda (n_after={self.n_after}) needs the coda's attention and caches at every "
                              f"step: it cannot be exact here. Use n_after=0, or exit='gate'")
        if self.exit == "gate" and not 0.0 < self.exit_threshold <= 1.0:
            raise ConfigError(f"exit='gate' needs a CDF threshold q in (0, 1], got {self.exit_threshold}")
        if self.n_heads % self.n_kv_heads or self.d_model % self.n_heads:
            raise ShapeError(f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}: "
                             f"need n_heads | d_model and n_kv_heads | n_heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_iter(self) -> int:
        """Iterations the loop runs: loop_count without adaptive exit, else max_loops (T_max)."""
        return self.loop_count if self.exit == "none" else self.max_loops

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class LoopOutput:
    """What `LoopLM.run` returns.

    logits [B, T, V]; loops [B, T] iterations each token used; step_logits: list of R [B, T, V]
    (only with steps=True); exit_probs [B, T, R] Ouro's p(t) (steps=True and exit="gate");
    lambdas [B, T, R] the per-step exit probabilities (exit="gate").
    """

    logits: Tensor
    loops: np.ndarray
    step_logits: list | None = None
    exit_probs: Tensor | None = None
    lambdas: np.ndarray | None = None


class LoopLM(CausalLM):
    """A looped decoder-only LM. `model(ids)` -> logits [B, T, V]; `model.run(...)` -> LoopOutput."""

    def __init__(self, config: LoopConfig):
        super().__init__()
        c = self.config = config
        rope = RotaryEmbedding(c.head_dim, base=c.rope_base, max_position_embeddings=c.max_len) if c.rope else None

        def local():
            return DecoderBlock(c.d_model, c.n_heads, c.n_kv_heads, c.hidden, eps=c.eps, rope=rope)

        self.embed_tokens = Embedding(c.vocab_size, c.d_model)
        self.layers_before = ModuleList([local() for _ in range(c.n_before)])
        if c.input_injection:  # Huginn's adapter: [h ; e] (2C) -> C
            self.inject = Linear(2 * c.d_model, c.d_model, bias=False)
        self.loop = LoopBlock(c.d_model, c.n_heads, c.n_kv_heads, c.hidden, rope=rope, gating=c.gating,
                              n_gates=max(c.max_loops, c.loop_count), bitlinear=c.bitlinear, eps=c.eps)
        if c.exit == "gate":
            self.exit_gate = Linear(c.d_model, 1)
        self.layers_after = ModuleList([local() for _ in range(c.n_after)])
        self.norm = RMSNorm(c.d_model, eps=c.eps)
        self.lm_head = Linear(c.d_model, c.vocab_size, bias=False)

    # ---- caches ---------------------------------------------------------------------------------
    def new_caches(self, batch_size: int = 1, max_len: int | None = None, dtype=None, loops: int | None = None
                   ) -> LoopCaches:
        """Empty caches laid out for this model's kv_policy (see `litetorch.nn.looped.LoopCaches`)."""
        c = self.config
        dtype = self.lm_head.weight.dtype if dtype is None else dtype
        return make_loop_caches(c.kv_policy, c.n_iter if loops is None else loops, c.n_before, c.n_after,
                                batch_size, c.n_kv_heads, max_len or c.max_len, c.head_dim, dtype)

    # ---- the forward pass, in the data's order ------------------------------------------------------
    def forward(self, ids, caches: LoopCaches | None = None, loops: int | None = None) -> Tensor:
        """ids [B, T] -> logits [B, T, V] (with adaptive exit applied per token, if configured)."""
        return self.run(ids, caches, loops).logits

    # lesson 18: begin (run)
    def run(self, ids, caches: LoopCaches | None = None, loops: int | None = None, steps: bool = False) -> LoopOutput:
        """ids [B, T] -> LoopOutput.

        caches: from `new_caches()`; the new tokens sit at positions caches.length .. + T - 1.
        loops:  override the number of iterations (the loop count, or T_max with adaptive exit).
        steps:  training view: run every iteration for every token (no early exit) and return the
                logits after each iteration and Ouro's exit distribution (needs caches=None).
        """
        c = self.config
        ids = self._check_ids(ids, caches)
        B, T = ids.shape
        R = c.n_iter if loops is None else checks.positive_int("loops", loops)
        steps = checks.boolean("steps", steps)
        past = 0
        if caches is not None:
            if steps:
                raise ConfigError("steps=True is the training view (every iteration's logits); run it without caches")
            if caches.policy != c.kv_policy or caches.n_iter != R:
                raise CacheError(f"caches were made for policy={caches.policy!r} with {caches.n_iter} iterations; "
                                 f"this call needs policy={c.kv_policy!r} with {R} (use model.new_caches(loops=...))")
            caches.check_room(T)  # before any cache is written
            past = caches.length
        policy = c.kv_policy if caches is not None else ("shared_first" if c.kv_policy == "shared_first" else "exact")
        adaptive = c.exit != "none" and not steps
        min_loops = min(c.min_loops, R)

        # Embed + prelude (ordinary local layers, each with its own cache)
        x = self.embed_tokens(ids)  # [B, T] -> [B, T, C]
        for i, blk in enumerate(self.layers_before):
            x = blk(x, cache=caches.before[i] if caches is not None else None)  # [B, T, C]
        e = x  # what input injection re-reads at every iteration

        # The loop: one block, R times
        h, G, ref_kv = e, None, None
        done = np.zeros((B, T), dtype=bool)  # tokens that have exited (state frozen)
        used = np.full((B, T), R, dtype=np.int64)
        states, lambdas, cdf, surv, prev_probe = [], [], np.zeros((B, T)), np.ones((B, T)), None
        if policy == "last_step" and past:  # every past token's K/V from its last iteration (constants)
            ref_kv = (caches.loop[0].keys, caches.loop[0].values)  # [B, Hkv, past, Dh]
        for r in range(1, R + 1):
            inp = self.inject(cat([h, e], dim=-1)) if c.input_injection else h  # [B, T, 2C] -> [B, T, C]
            # KV policy -> which keys this iteration reads, and which cache it writes
            if policy == "per_iteration":
                kw = dict(mode="causal", cache=caches.loop[r - 1])  # one cache per iteration: exact
            elif policy == "shared_first":
                kw = dict(mode="causal", cache=caches.loop[0] if caches is not None else None) if r == 1 else \
                    dict(mode="read_first", ref_kv=ref_kv)  # r >= 2 re-reads iteration 1's K/V
            elif policy == "last_step":
                kw = dict(mode="read_last", ref_kv=ref_kv)  # None when nothing is cached yet
            else:  # no cache: per_iteration and last_step are the same exact model
                kw = dict(mode="causal")
            h_new, G_new, kv = self.loop(inp, G, r, past=past, **kw)
            if policy == "shared_first" and r == 1:
                ref_kv = kv  # the keys/values iteration 1 attended over: [B, Hkv, past + T, Dh]
            last_kv = kv

            # Adaptive exit: decide per token from its new state; exited tokens keep their old one
            if adaptive:
                if c.exit == "gate":
                    lam = self.exit_gate(h_new).data[..., 0].astype(np.float64)  # [B, T]
                    lam = 1.0 / (1.0 + np.exp(-lam))
                    lambdas.append(lam)
                    p_r = surv if r == R else surv * lam  # Ouro's p(r): survive to r, then exit
                    cdf, surv = cdf + p_r, surv * (1.0 - lam)
                    crit = cdf >= c.exit_threshold - 1e-12
                else:
                    probe = self.lm_head(self.norm(h_new)).data.astype(np.float64)  # [B, T, V]
                    if c.exit == "entropy":
                        crit = entropy(probe) < c.exit_threshold
                    else:
                        crit = kl_divergence(probe, prev_probe) < c.exit_threshold if r > 1 else np.zeros_like(done)
                    prev_probe = probe
                now = ~done & (((r >= min_loops) & crit) | (r == R))
                h = freeze(done, h, h_new)
                G = freeze(done, G, G_new) if G_new is not None else None
                used[now] = r
                done = done | now  # a new array: `where` above keeps a reference to the old one
            else:
                h, G = h_new, G_new
            if steps:
                states.append(h)
        if policy == "last_step":  # store each new token's K/V from its last iteration
            caches.loop[0].append(*last_kv)

        # Coda + readout
        if steps:
            step_logits = [self._readout(s, None) for s in states]  # R x [B, T, V]
            probs, lam = self._exit_probs(states) if c.exit == "gate" else (None, None)
            return LoopOutput(step_logits[-1], used, step_logits, probs, lam)
        logits = self._readout(h, caches)
        return LoopOutput(logits, used, None, None, np.stack(lambdas, axis=-1) if lambdas else None)
    # lesson 18: end (run)

    def _readout(self, h: Tensor, caches) -> Tensor:
        """Coda + final norm + LM head: [B, T, C] -> [B, T, V]."""
        for i, blk in enumerate(self.layers_after):
            h = blk(h, cache=caches.after[i] if caches is not None else None)
        return self.lm_head(self.norm(h))

    # lesson 19: begin (exit distribution)
    def _exit_probs(self, states) -> tuple[Tensor, np.ndarray]:
        """Ouro's exit distribution as a differentiable Tensor: [B, T, R] from R states [B, T, C].

        lambda_t = sigmoid(w . h_t + b); p(t) = lambda_t prod_{j<t}(1 - lambda_j); p(R) = the rest.
        """
        lambdas = [self.exit_gate(s).sigmoid()[..., 0] for s in states]  # R x [B, T]
        R = len(states)
        ps, surv = [], None
        for t, lam in enumerate(lambdas):
            if t == R - 1:
                ps.append(surv if surv is not None else lam * 0.0 + 1.0)
            else:
                ps.append(lam if surv is None else surv * lam)
                surv = (1.0 - lam) if surv is None else surv * (1.0 - lam)
        return stack(ps, dim=-1), np.stack([lam.data for lam in lambdas], axis=-1)  # [B, T, R] each
    # lesson 19: end (exit distribution)

    def _check_ids(self, ids, caches=None) -> np.ndarray:
        """checks.py's input checks, shared with Llama and GPT: the same mistake, the same error."""
        ids = checks.input_ids(ids, self.config.vocab_size, "ids")  # [B, T] integer ids in 0..V-1
        if caches is not None and not isinstance(caches, LoopCaches):
            raise CacheError(f"caches must be the LoopCaches from model.new_caches(), got {type(caches).__name__}")
        checks.context(caches.length if caches is not None else 0, ids.shape[1], self.config.max_len)
        return ids

    # ---- what the generation loop uses (models/base.py; `lt.generate(model, tok, prompt)`) --------
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def context_length(self) -> int:
        return self.config.max_len

    @property
    def chunked_prefill_is_exact(self) -> bool:
        """A prompt run in pieces equals one call for the exact policies; `last_step` is an approximation
        whose numbers depend on which tokens share a call (lesson 20)."""
        return self.config.kv_policy != "last_step"

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> LoopCaches:
        return self.new_caches(batch_size, max_len)

    def logits(self, ids, cache=None, logits_to_keep: int = 0) -> Tensor:
        """ids [B, T] -> logits [B, T, V] (or the last logits_to_keep positions), adaptive exits applied."""
        k = checks.logits_to_keep(logits_to_keep, self._check_ids(ids, cache).shape[1])  # before anything runs
        logits = self.run(ids, cache).logits
        return logits[:, -k:] if k else logits

    def extra_repr(self):
        c = self.config
        return (f"n_before={c.n_before}, loop=1 block x {c.n_iter}, n_after={c.n_after}, exit={c.exit!r}, "
                f"kv_policy={c.kv_policy!r}")


# --------------------------------------------------------------------------------------------
# Training objective (Ouro): sum_t p(t) CE_t - beta H(p) [+ compute penalty] [+ distillation]
# --------------------------------------------------------------------------------------------
# lesson 19: begin (loss)
def looplm_loss(out: LoopOutput, targets, beta: float = 0.0, compute_penalty: float = 0.0,
                teacher_logits=None, temperature: float = 1.0, distill_weight: float = 0.0,
                ignore_index: int = -100) -> Tensor:
    """Mean over non-ignored tokens of

        sum_t p(t) CE_t  -  beta H(p)  +  compute_penalty * E_p[t]        (exit-gated, steps=True)
        CE_R                                                              (otherwise: the last step)
      + distill_weight * tau^2 * KL(softmax(teacher / tau) || softmax(student_R / tau))

    out: `model.run(ids, steps=True)`; targets [B, T] ints; teacher_logits [B, T, V].
    """
    t = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    valid = (t != ignore_index).reshape(-1)  # [N]
    n = float(max(valid.sum(), 1))
    V = out.logits.shape[-1]
    flat_t = t.reshape(-1)
    if out.exit_probs is not None and out.step_logits is not None:
        R = len(out.step_logits)
        ce = stack([F.cross_entropy(lg.reshape(-1, V), flat_t, ignore_index=ignore_index, reduction="none")
                    for lg in out.step_logits], dim=-1)  # [N, R]
        p = out.exit_probs.reshape(-1, R)  # [N, R]
        per_tok = (p * ce).sum(dim=-1)  # expected CE under the exit distribution
        if beta:
            H = -(p * p.clamp(min=1e-12).log()).sum(dim=-1)  # entropy of p: keeps exits from collapsing
            per_tok = per_tok - H * float(beta)
        if compute_penalty:
            steps_ = Tensor(np.arange(1, R + 1, dtype=p.dtype))
            per_tok = per_tok + (p * steps_).sum(dim=-1) * float(compute_penalty)  # E_p[t]
        loss = (per_tok * Tensor(valid.astype(p.dtype))).sum() / n
    else:
        loss = F.cross_entropy(out.logits.reshape(-1, V), flat_t, ignore_index=ignore_index)
    if teacher_logits is not None and distill_weight:
        tau = float(temperature)
        tl = np.asarray(teacher_logits.data if isinstance(teacher_logits, Tensor) else teacher_logits)
        tl = tl.reshape(-1, V).astype(out.logits.dtype) / tau
        tz = tl - tl.max(-1, keepdims=True)
        t_logp = tz - np.log(np.exp(tz).sum(-1, keepdims=True))  # teacher log-probs (constants)
        s_logp = (out.logits.reshape(-1, V) * (1.0 / tau)).log_softmax(dim=-1)
        kl = (Tensor(np.exp(t_logp)) * (Tensor(t_logp) - s_logp)).sum(dim=-1)  # [N]
        loss = loss + (kl * Tensor(valid.astype(kl.dtype))).sum() * (float(distill_weight) * tau * tau / n)
    return loss
# lesson 19: end (loss)


# --------------------------------------------------------------------------------------------
# Files: GGUF (weights + looplm.* metadata), npz, safetensors
# --------------------------------------------------------------------------------------------
def gguf_metadata(config: LoopConfig, name: str = "looplm") -> dict:
    """`looplm.*` keys, the way llama.cpp names its `llama.*` hyper-parameters."""
    c = config
    meta = {"general.architecture": "looplm", "general.name": name,
            "looplm.vocab_size": int(c.vocab_size), "looplm.embedding_length": int(c.d_model),
            "looplm.attention.head_count": int(c.n_heads), "looplm.attention.head_count_kv": int(c.n_kv_heads),
            "looplm.feed_forward_length": int(c.hidden), "looplm.context_length": int(c.max_len),
            "looplm.attention.layer_norm_rms_epsilon": np.float64(c.eps), "looplm.rope.enabled": bool(c.rope),
            "looplm.rope.freq_base": np.float64(c.rope_base),
            "looplm.n_before": int(c.n_before), "looplm.n_after": int(c.n_after),
            "looplm.loop_count": int(c.loop_count), "looplm.min_loops": int(c.min_loops),
            "looplm.max_loops": int(c.max_loops), "looplm.exit": c.exit,
            "looplm.exit_threshold": np.float64(c.exit_threshold), "looplm.kv_policy": c.kv_policy,
            "looplm.input_injection": bool(c.input_injection), "looplm.gating": bool(c.gating),
            "looplm.bitlinear": bool(c.bitlinear)}
    return meta


_META_TO_FIELD = {"vocab_size": "vocab_size", "embedding_length": "d_model", "attention.head_count": "n_heads",
                  "attention.head_count_kv": "n_kv_heads", "feed_forward_length": "hidden",
                  "context_length": "max_len", "attention.layer_norm_rms_epsilon": "eps", "rope.enabled": "rope",
                  "rope.freq_base": "rope_base"}


def save_gguf(model: LoopLM, path, name: str = "looplm") -> Path:
    """Write weights (F32, litetorch's state_dict names) and `looplm.*` metadata to a GGUF file."""
    from ..io.gguf import write_gguf
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model.state_dict().items()}
    return write_gguf(path, gguf_metadata(model.config, name), tensors)


def load_gguf(path) -> LoopLM:
    """Rebuild a LoopLM from `save_gguf`'s file: config from `looplm.*`, weights by name."""
    from ..errors import ModelFormatError
    from ..io.gguf import GGUFFile
    with GGUFFile(path) as f:
        if f.get("general.architecture") != "looplm":
            raise ModelFormatError(f"{path}: general.architecture is {f.get('general.architecture')!r}, not 'looplm'")
        d = {}
        for key, value in f.metadata.items():
            if key.startswith("looplm."):
                k = key[len("looplm."):]
                d[_META_TO_FIELD.get(k, k)] = value.item() if isinstance(value, np.generic) else value
        model = LoopLM(LoopConfig.from_dict(d))
        model.load_state_dict({k: f.dequantize(k) for k in f.tensors})
    return model


def save_npz(model: LoopLM, path) -> None:
    """state_dict + the config as JSON (np.load(path) needs no pickle)."""
    np.savez(path, __config__=np.array(json.dumps(model.config.to_dict())), **model.state_dict())


def load_npz(path) -> LoopLM:
    with np.load(path, allow_pickle=False) as z:
        model = LoopLM(LoopConfig.from_dict(json.loads(str(z["__config__"]))))
        model.load_state_dict({k: z[k] for k in z.files if k != "__config__"})
    return model


def save_safetensors(model: LoopLM, path) -> None:
    from ..io.safetensors import save_safetensors as _save
    _save(path, model.state_dict(), metadata={"looplm_config": json.dumps(model.config.to_dict())})


def load_safetensors(path) -> LoopLM:
    from ..io.safetensors import load_safetensors as _load
    from ..io.safetensors import read_safetensors_header
    meta = read_safetensors_header(path)[1]
    model = LoopLM(LoopConfig.from_dict(json.loads(meta["looplm_config"])))
    model.load_state_dict(_load(path))
    return model


# --------------------------------------------------------------------------------------------
# A small training loop (the GPT trainer lives elsewhere; this one knows the loop's loss)
# --------------------------------------------------------------------------------------------
def fit(model: LoopLM, batches, steps: int, lr: float = 3e-3, weight_decay: float = 0.0, beta: float = 0.0,
        compute_penalty: float = 0.0, clip: float = 1.0, warmup: int = 20, log_every: int = 0) -> dict:
    """Train with AdamW + warmup/cosine on `batches()` -> (ids [B, T], targets [B, T]) or
    (ids, targets, loops): a batch may set its own loop count (a depth curriculum). Returns a log."""
    from ..optim import AdamW, clip_grad_norm_
    opt = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        batch = batches()
        ids, tgt, loops = batch if len(batch) == 3 else (*batch, None)
        frac = step / max(steps - 1, 1)
        scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        out = model.run(ids, loops=loops, steps=model.config.exit == "gate")
        loss = looplm_loss(out, tgt, beta=beta, compute_penalty=compute_penalty)
        opt.zero_grad()
        loss.backward()
        if clip:
            clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.item()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  ({time.perf_counter() - t0:.1f}s)")
    return {"losses": losses, "seconds": time.perf_counter() - t0}
