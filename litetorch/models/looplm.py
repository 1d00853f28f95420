"""LoopLM: a looped language model (local layers before, one shared block looped, local layers after).

    ids [B, T] -> embed [-> n streams] -> layers_before (prelude) -> e
               -> h_0 = e;  h_r = LoopBlock([inject(h_{r-1}, e)])  r = 1..R   (one set of weights)
               -> layers_after (coda) [-> sum of the streams] -> norm -> lm_head -> logits [B, T, V]

Reading order is the data's path: `run` below goes top to bottom. Lessons 18 (looping), 19
(adaptive exit), 20 (KV caches for loops), 21 (ternary BitLinear in the shared block).

Layers by index. Every layer has a kind, set by its index in the order the data meets them:

    index   0 .. n_before - 1          the local layers before the loop (layers_before[i] is index i)
            n_before                   the shared block (one index, however many times it runs)
            n_before + 1 .. n_layers-1 the local layers after the loop (layers_after[j] is n_before + 1 + j)

`layer_types[index]` is its token mixer ("attention" or "deltanet": Qwen3-Next's Gated DeltaNet) and
`mlp_types[index]` its FFN ("dense" SwiGLU or "moe"), for local layers and the shared block alike.

Residuals: plain, gated (the shared block only: `gating`), or hyper-connections around every
sublayer of every block (`hyper` = "shc" | "dhc" | "mhc" | "mhc_lite", `hyper_streams` n): the
embedding is copied into n streams, every block mixes and writes them, the coda's output is their sum.
The shared block has one set of mappings per iteration (`hyper_per_iteration=True`) or one set shared
by every iteration. Neither choice changes the caches: a mapping reads only its own token's streams,
so the streams are never cached; what attention caches is the K/V of the branch input H_pre x at the
iteration that computed it, exactly as without hyper-connections (per_iteration: one cache per
iteration; the other policies as below).

The exit rules, with the rule for tokens that leave the loop early (deterministic, per token):
- "none": every token runs `loop_count` iterations.
- "gate" (Ouro): lambda_r = sigmoid(w . h_r + b); exit at the first r whose CDF of the exit
  distribution reaches q = exit_threshold.
- "kl" (Huginn): exit at the first r >= 2 with KL(p_r || p_{r-1}) < exit_threshold, where p_r is the
  next-token distribution read from h_r.
- "entropy": exit at the first r with H(p_r) < exit_threshold.
Every exit is clamped to [min_loops, max_loops]. A token that has exited keeps its state (h and
the gate state G are copied forward), *but later iterations still compute its K/V (and advance a
Gated DeltaNet's state) from that frozen state*: tokens after it see a complete cache at every
iteration. That rule is the same in a batched prefill and in token-by-token decoding, which is why
the two agree exactly.
("kl"/"entropy" read p_r as lm_head(norm(h_r)); that is the model's own distribution only without a
coda, so they require n_after = 0: with a coda, p_r would need the coda's attention at every step.)

Cache rule per layer kind: an attention layer keeps K/V rows (local: one KVCache; shared: by
`kv_policy`); a Gated DeltaNet layer keeps its fixed-size state (local: one DeltaNetCache; shared: one
per iteration, so a Gated DeltaNet shared block needs kv_policy="per_iteration": a recurrent state
has no rows that a later iteration could re-read).

Training (loss, distillation, fit): `looplm_train.py`. Files (GGUF with packed ternary weights,
npz, safetensors): `looplm_files.py`. Named configs: `presets.py`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import checks
from ..errors import CacheError, ConfigError, ShapeError
from ..nn import functional as F
from ..nn.block import default_hidden
from ..nn.embedding import Embedding
from ..nn.ffn import SwiGLU
from ..nn.gated_deltanet import GatedDeltaNet
from ..nn.attention import MultiHeadAttention
from ..nn.hyper import KINDS as HYPER_KINDS
from ..nn.hyper import expand_streams, reduce_streams
from ..nn.linear import Linear
from ..nn.looped import (EXITS, KV_POLICIES, MIXERS, MLPS, LoopBlock, LoopCaches, entropy, freeze, kl_divergence)
from ..nn.module import ModuleList
from ..nn.moe import SparseMoeBlock
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
    head_dim: int | None = None  # None = d_model // n_heads
    tie_embeddings: bool = False  # the LM head reads the embedding matrix (no lm_head.weight)
    # per-layer kinds, by layer index (local-before, then the shared block, then local-after); None = all
    # "attention" / all "dense"
    layer_types: tuple | None = None  # "attention" | "deltanet"
    mlp_types: tuple | None = None  # "dense" | "moe"
    # Gated DeltaNet layers (Qwen3-Next's names; None = n_heads heads of head_dim)
    linear_num_key_heads: int | None = None
    linear_num_value_heads: int | None = None
    linear_key_head_dim: int | None = None
    linear_value_head_dim: int | None = None
    linear_conv_kernel_dim: int = 4
    # MoE layers (HF Qwen3-MoE / Qwen3-Next names in comments)
    n_experts: int = 8  # num_experts
    top_k: int = 2  # num_experts_per_tok
    moe_hidden: int | None = None  # moe_intermediate_size; None = hidden
    shared_expert_hidden: int | None = None  # shared_expert_intermediate_size; None = no shared expert
    norm_topk_prob: bool = True
    # hyper-connections around every sublayer (lesson 27)
    hyper: str | None = None  # None | "shc" | "dhc" | "mhc" | "mhc_lite"
    hyper_streams: int = 4  # n
    hyper_per_iteration: bool = True  # the shared block: one set of mappings per iteration, or one for all
    # Qwen3-Next's attention extras: counted by presets.py, not built by LoopLM (see LoopLM.__init__)
    attn_output_gate: bool = False
    qk_norm: bool = False

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden is None:
            self.hidden = default_hidden(self.d_model, "swiglu")
        if self.max_loops is None:
            self.max_loops = max(self.loop_count, self.min_loops)
        if self.head_dim is None and self.d_model % self.n_heads == 0:
            self.head_dim = self.d_model // self.n_heads
        for name in ("vocab_size", "d_model", "n_heads", "n_kv_heads", "hidden", "max_len", "loop_count",
                     "min_loops", "max_loops", "linear_conv_kernel_dim", "n_experts", "top_k",
                     "hyper_streams"):
            _check_int(name, getattr(self, name), 1)
        for name in ("n_before", "n_after"):
            _check_int(name, getattr(self, name), 0)
        for name in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                     "linear_value_head_dim", "moe_hidden", "shared_expert_hidden"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
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
        if self.n_heads % self.n_kv_heads or self.head_dim is None:
            raise ShapeError(f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}: "
                             f"need n_kv_heads | n_heads, and n_heads | d_model unless head_dim is given")
        _check_int("head_dim", self.head_dim, 1)
        self.layer_types = self._kinds("layer_types", self.layer_types, MIXERS)
        self.mlp_types = self._kinds("mlp_types", self.mlp_types, MLPS)
        if self.layer_types[self.n_before] == "deltanet" and self.kv_policy != "per_iteration":
            raise ConfigError(f"the shared block (layer {self.n_before}) is a Gated DeltaNet layer, whose cache is a "
                              f"recurrent state: only kv_policy='per_iteration' (one state per iteration) is exact "
                              f"for it, got {self.kv_policy!r}")
        if "moe" in self.mlp_types and not self.top_k <= self.n_experts:
            raise ConfigError(f"top_k={self.top_k} must be at most n_experts={self.n_experts}")
        if self.hyper is not None and self.hyper not in HYPER_KINDS:
            raise ConfigError(f"hyper must be None or one of {HYPER_KINDS}, got {self.hyper!r}")
        if self.hyper is not None and self.gating:
            raise ConfigError("gating and hyper-connections are two residual rules for the shared block; choose one")
        if self.bitlinear and self.mlp_types[self.n_before] == "moe":
            raise ConfigError("bitlinear=True ternarises the shared block's Linears; its MoE experts are 3-D "
                              "parameters: give the shared block a dense FFN (mlp_types) or bitlinear=False")

    def _kinds(self, name: str, kinds, options) -> tuple:
        kinds = (options[0],) * self.n_layers if kinds is None else tuple(kinds)
        if len(kinds) != self.n_layers or any(k not in options for k in kinds):
            raise ConfigError(f"{name} must list one of {options} for each of the {self.n_layers} layers "
                              f"(n_before={self.n_before} + 1 shared + n_after={self.n_after}), got {list(kinds)}")
        return kinds

    @property
    def n_layers(self) -> int:
        """Distinct layers: the local ones and the shared block (counted once)."""
        return self.n_before + 1 + self.n_after

    def layer_kind(self, index: int) -> tuple[str, str]:
        """(mixer, mlp) of the layer at `index` (0 .. n_layers - 1; n_before is the shared block)."""
        return self.layer_types[index], self.mlp_types[index]

    @property
    def n_iter(self) -> int:
        """Iterations the loop runs: loop_count without adaptive exit, else max_loops (T_max)."""
        return self.loop_count if self.exit == "none" else self.max_loops

    @property
    def n_loop_sets(self) -> int:
        """Per-iteration parameter sets the shared block keeps (gates, hyper-connection mappings)."""
        return max(self.max_loops, self.loop_count)

    def structure(self) -> str:
        """'1 local + 1 shared x 4 + 1 local' (with adaptive exit: 'x 1..4'; '6 layers (no loop)' for one pass)."""
        if self.n_iter == 1 and self.exit == "none":
            return f"{self.n_layers} layers (no loop)"
        loops = str(self.n_iter) if self.exit == "none" else f"{self.min_loops}..{self.max_loops}"
        return f"{self.n_before} local + 1 shared x {loops} + {self.n_after} local"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_types"], d["mlp_types"] = list(self.layer_types), list(self.mlp_types)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _check_int(name: str, v, lo: int) -> None:
    checks.integer(f"LoopConfig.{name}", v, lo=lo)


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
        if c.attn_output_gate or c.qk_norm:
            raise ConfigError("attn_output_gate / qk_norm (Qwen3-Next's gated attention) describe a model for "
                              "presets.py to count; LoopLM builds Llama's attention. Set both to False to build it")
        rope = RotaryEmbedding(c.head_dim, base=c.rope_base, max_position_embeddings=c.max_len) if c.rope else None

        self.embed_tokens = Embedding(c.vocab_size, c.d_model)
        if c.tie_embeddings:  # the head reads this matrix: N(0, 1/C) gives unit-scale logits from a normed h,
            self.embed_tokens.weight.data *= float(c.d_model) ** -0.5  # N(0, 1) would give logits ~ sqrt(C)
        self.layers_before = ModuleList([self._block(i, rope) for i in range(c.n_before)])
        if c.input_injection:  # Huginn's adapter: [h ; e] (2C) -> C
            self.inject = Linear(2 * c.d_model, c.d_model, bias=False)
        self.loop = self._block(c.n_before, rope, shared=True)
        if c.exit == "gate":
            self.exit_gate = Linear(c.d_model, 1)
        self.layers_after = ModuleList([self._block(c.n_before + 1 + j, rope) for j in range(c.n_after)])
        self.norm = RMSNorm(c.d_model, eps=c.eps)
        if not c.tie_embeddings:
            self.lm_head = Linear(c.d_model, c.vocab_size, bias=False)

    # lesson 18: begin (layers by index)
    def _block(self, index: int, rope, shared: bool = False) -> LoopBlock:
        """The layer at `index`, of the kind the config gives that index."""
        c = self.config
        mixer, mlp = c.layer_kind(index)
        if mixer == "deltanet":
            Hk = c.linear_num_key_heads or c.n_heads
            mixer = GatedDeltaNet(c.d_model, Hk, c.linear_num_value_heads or Hk, c.linear_key_head_dim or c.head_dim,
                                  c.linear_value_head_dim or c.head_dim, c.linear_conv_kernel_dim, eps=c.eps)
        else:
            mixer = MultiHeadAttention(c.d_model, c.n_heads, c.n_kv_heads, head_dim=c.head_dim, rope=rope)
        if mlp == "moe":
            mlp = SparseMoeBlock(c.d_model, c.n_experts, c.top_k, c.moe_hidden or c.hidden, c.norm_topk_prob,
                                 c.shared_expert_hidden)
        else:
            mlp = SwiGLU(c.d_model, c.hidden)
        return LoopBlock(c.d_model, mixer=mixer, mlp=mlp, gating=c.gating and shared, n_gates=c.n_loop_sets,
                         bitlinear=c.bitlinear and shared, eps=c.eps, hyper=c.hyper, n_streams=c.hyper_streams,
                         n_hc_sets=c.n_loop_sets if shared and c.hyper_per_iteration else 1, layer_index=index)
    # lesson 18: end (layers by index)

    @property
    def blocks(self) -> list[LoopBlock]:
        """Every distinct layer in index order: layers_before, the shared block, layers_after."""
        return list(self.layers_before) + [self.loop] + list(self.layers_after)

    # ---- caches ---------------------------------------------------------------------------------
    # lesson 20: begin (caches)
    def new_caches(self, batch_size: int = 1, max_len: int | None = None, dtype=None, loops: int | None = None
                   ) -> LoopCaches:
        """Empty caches laid out for this model's layer kinds and kv_policy (see `nn.looped.LoopCaches`)."""
        c = self.config
        dtype = self.embed_tokens.weight.dtype if dtype is None else dtype
        R, max_len = c.n_iter if loops is None else loops, max_len or c.max_len
        n_loop = R if c.kv_policy == "per_iteration" else 1
        before = [b.make_cache(batch_size, max_len, dtype) for b in self.layers_before]  # one per local layer
        after = [b.make_cache(batch_size, max_len, dtype) for b in self.layers_after]
        loop = [self.loop.make_cache(batch_size, max_len, dtype) for _ in range(n_loop)]  # R, or 1 by the policy
        return LoopCaches(c.kv_policy, R, before, after, loop, max_len, batch_size)
    # lesson 20: end (caches)

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

        # Embed (+ n copies: the residual streams of hyper-connections) + prelude (local layers, own caches)
        x = self.embed_tokens(ids)  # [B, T] -> [B, T, C]
        if c.hyper is not None:
            x = expand_streams(x, c.hyper_streams)  # [B, T, C] -> [B, T, n, C]
        for i, blk in enumerate(self.layers_before):
            x = blk(x, None, 1, past, cache=caches.before[i] if caches is not None else None)[0]
        e = x  # what input injection re-reads at every iteration

        # The loop: one block, R times
        h, G, ref_kv = e, None, None
        done = np.zeros((B, T), dtype=bool)  # tokens that have exited (state frozen)
        used = np.full((B, T), R, dtype=np.int64)
        states, lambdas, cdf, surv, prev_probe = [], [], np.zeros((B, T)), np.ones((B, T)), None
        if policy == "last_step" and past:  # every past token's K/V from its last iteration (constants)
            ref_kv = (caches.loop[0].keys, caches.loop[0].values)  # [B, Hkv, past, Dh]
        for r in range(1, R + 1):
            inp = self.inject(cat([h, e], dim=-1)) if c.input_injection else h  # [.., 2C] -> [.., C]
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
                    lam = self.exit_gate(self._collapse(h_new)).data[..., 0].astype(np.float64)  # [B, T]
                    lam = 1.0 / (1.0 + np.exp(-lam))
                    lambdas.append(lam)
                    p_r = surv if r == R else surv * lam  # Ouro's p(r): survive to r, then exit
                    cdf, surv = cdf + p_r, surv * (1.0 - lam)
                    crit = cdf >= c.exit_threshold - 1e-12
                else:
                    probe = self._head(h_new).data.astype(np.float64)  # [B, T, V]
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
            step_logits = [self._readout(s, None, past) for s in states]  # R x [B, T, V]
            probs, lam = self._exit_probs(states) if c.exit == "gate" else (None, None)
            return LoopOutput(step_logits[-1], used, step_logits, probs, lam)
        logits = self._readout(h, caches, past)
        if caches is not None:
            caches.record(used)  # every cache now holds past + T positions
        return LoopOutput(logits, used, None, None, np.stack(lambdas, axis=-1) if lambdas else None)
    # lesson 18: end (run)

    def _readout(self, h: Tensor, caches, past: int) -> Tensor:
        """Coda + final norm + LM head: [B, T, C] (or streams [B, T, n, C]) -> [B, T, V]."""
        for i, blk in enumerate(self.layers_after):
            h = blk(h, None, 1, past, cache=caches.after[i] if caches is not None else None)[0]
        return self._head(h)

    def _collapse(self, h: Tensor) -> Tensor:
        """The one stream the readout sees: the sum of the n streams with hyper-connections, else h. -> [B, T, C]"""
        return reduce_streams(h) if self.config.hyper is not None else h

    def _head(self, h: Tensor) -> Tensor:
        """norm + LM head: [B, T, C] (or streams) -> logits [B, T, V] (the embedding matrix when tied)."""
        h = self.norm(self._collapse(h))
        return F.linear(h, self.embed_tokens.weight) if self.config.tie_embeddings else self.lm_head(h)

    # lesson 19: begin (exit distribution)
    def _exit_probs(self, states) -> tuple[Tensor, np.ndarray]:
        """Ouro's exit distribution as a differentiable Tensor: [B, T, R] from R states [B, T, C].

        lambda_t = sigmoid(w . h_t + b); p(t) = lambda_t prod_{j<t}(1 - lambda_j); p(R) = the rest.
        """
        lambdas = [self.exit_gate(self._collapse(s)).sigmoid()[..., 0] for s in states]  # R x [B, T]
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

    # ---- deployment ----------------------------------------------------------------------------------
    def pack_ternary(self) -> "LoopLM":
        """Replace every BitLinear of the shared block by its packed form (2 bits per weight + a scale per
        matrix, `nn.bitlinear.PackedBitLinear`); the float latent weights are dropped. Same logits."""
        from ..nn.bitlinear import BitLinear, PackedBitLinear
        for mod in list(self.modules()):
            for name, child in list(mod._modules.items()):
                if isinstance(child, BitLinear):
                    setattr(mod, name, PackedBitLinear.from_bitlinear(child))
        return self

    # ---- what the generation loop uses (models/base.py; `lt.generate(model, tok, prompt)`) --------
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
        return f"{c.structure()}, exit={c.exit!r}, kv_policy={c.kv_policy!r}, hyper={c.hyper!r}"
