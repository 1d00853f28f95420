"""The pieces of a looped (weight-shared, recurrent-depth) transformer, lessons 18-20.

A looped model applies *one* block R times: depth (compute) grows with R, parameters do not.

    h_0 = e                                  e = the prelude's output (embedding + local layers)
    h_r = Block(h_{r-1})           r = 1..R  the same weights every time

This file holds what is new compared with an ordinary decoder block:

- `LoopBlock`: every layer of a LoopLM, the shared block and the local ones. Pre-norm; its token
  mixer is attention or Gated DeltaNet, its FFN SwiGLU or a sparse MoE; optional per-iteration,
  per-channel gates that mix in a running mean G of earlier iterations' sublayer outputs, optional
  hyper-connections around both sublayers, and an optional switch to ternary `BitLinear` projections.
- `loop_attention`: attention for iteration r under the three KV-cache policies.
- exit rules: Ouro's exit distribution (`exit_distribution`, `q_exit_step`), Huginn's KL between
  successive steps (`kl_divergence`), and entropy (`entropy`).
- `LoopCaches` and `kv_bytes_per_token`: where each policy keeps its keys and values (and the Gated
  DeltaNet layers their states).

Shapes: B batch, T tokens, C = d_model, H / Hkv query / key-value heads, Dh head dim, V vocab,
R iterations of the loop.
"""
from __future__ import annotations

import numpy as np

from .. import checks
from ..errors import CacheError, ConfigError
from ..ops import cat, where
from ..tensor import Parameter, Tensor
from .attention import MultiHeadAttention
from .bitlinear import BitLinear
from .ffn import SwiGLU
from .gated_deltanet import DeltaNetCache, GatedDeltaNet
from .hyper import make_mapping
from .kv_cache import KVCache
from .module import Module, ModuleList
from .moe import SparseMoeBlock
from .norm import RMSNorm
from .sdpa import attend

EXITS = ("none", "gate", "kl", "entropy")
KV_POLICIES = ("per_iteration", "shared_first", "last_step")


# --------------------------------------------------------------------------------------------
# Attention for one iteration, under a KV-cache policy
# --------------------------------------------------------------------------------------------
# lesson 20: begin (attention)
def loop_attention(attn: MultiHeadAttention, x: Tensor, past: int, mode: str = "causal",
                   cache: KVCache | None = None, ref_kv=None):
    """Attention of the shared block at one iteration. x [B, T, C] -> (y [B, T, C], (k, v)).

    The new tokens sit at positions past .. past + T - 1. Returns the output and the keys/values
    this call attended over in "causal" mode (the iteration-1 K/V that `shared_first` re-reads),
    or the fresh k/v of the new tokens in the other modes (what `last_step` stores at the end).

    mode "causal"     ordinary causal attention; k/v are appended to `cache` first if one is given
                      (per_iteration at every r; shared_first at r = 1).
    mode "read_first" shared_first at r >= 2: query i sees `ref_kv` (the iteration-1 K/V of
                      positions 0 .. past + T - 1) at positions *before* its own, plus its own
                      fresh k/v of this iteration.
    mode "read_last"  last_step decoding: query i sees every row of `ref_kv` (the cached K/V of
                      positions 0 .. past - 1, each from its token's last iteration) plus the fresh
                      k/v of the new tokens up to itself.
    """
    B, T, _ = x.shape
    H, Dh = attn.n_heads, attn.head_dim
    q, k, v = attn.project(x, past)  # [B, H, T, Dh], [B, Hkv, T, Dh] x 2, RoPE'd
    if mode == "causal":
        if cache is not None:
            k, v = cache.append(k, v)  # [B, Hkv, past + T, Dh]
        y = attend(q, k, v, is_causal=True, enable_gqa=True)  # [B, H, T, Dh]: sdpa (lesson 03, or lesson 22's kernel)
        kv = (k, v)
    else:
        rk, rv = ref_kv if ref_kv is not None else (None, None)  # [B, Hkv, T_ref, Dh]
        T_ref = rk.shape[2] if rk is not None else 0
        i = np.arange(T)[:, None]
        if mode == "read_first":  # ref key j (absolute position j) visible iff j < past + i
            ref_mask = np.arange(T_ref)[None, :] < past + i  # [T, T_ref]
            own_mask = np.eye(T, dtype=bool)  # [T, T]: only its own fresh key
        elif mode == "read_last":
            ref_mask = np.ones((T, T_ref), dtype=bool)  # every past token, from its last iteration
            own_mask = np.arange(T)[None, :] <= i  # causal among the new tokens
        else:
            raise ConfigError(f"unknown attention mode {mode!r}")
        keys = cat([rk, k], dim=2) if T_ref else k  # [B, Hkv, T_ref + T, Dh]
        vals = cat([rv, v], dim=2) if T_ref else v
        mask = np.concatenate([ref_mask, own_mask], axis=1) if T_ref else own_mask  # [T, T_ref + T]
        y = attend(q, keys, vals, attn_mask=mask, enable_gqa=True)  # [B, H, T, Dh]
        kv = (k, v)
    y = y.transpose(1, 2).reshape(B, T, H * Dh)  # [B, H, T, Dh] -> [B, T, H*Dh]
    return attn.o_proj(y), kv
# lesson 20: end (attention)


# --------------------------------------------------------------------------------------------
# The block (shared, and local)
# --------------------------------------------------------------------------------------------
MIXERS = ("attention", "deltanet")  # the token mixer of a layer
MLPS = ("dense", "moe")  # its feed-forward network


class LoopBlock(Module):
    """One layer of a LoopLM: x [B, T, C] (+ global state G) -> (h [B, T, C], G, kv).

    The shared block runs once per iteration r = 1..R; the local layers before and after the loop are
    the same kind of block, run once (r = 1). Pre-norm, like `DecoderBlock`:

        token mixer   `self_attn` (attention, under the loop's KV policy) or `linear_attn` (Qwen3-Next's
                      Gated DeltaNet, with its recurrent state)              either passed as `mixer`
        feed-forward  `mlp`: SwiGLU, or a sparse MoE block                   passed as `mlp`
        residual      plain (x + F(x)); gated (per-iteration, per-channel gates mixing in the running
                      mean G: `gating=True`); or hyper-connections (n streams, `hyper="mhc"` ...)

    Parameter names follow HF (Llama's `input_layernorm`, `self_attn`, `post_attention_layernorm`,
    `mlp`; Qwen3-Next's `linear_attn`); plus `gate_attn`, `gate_ffn` [n_gates, C] when gated, and
    `hc_attn.k.*`, `hc_mlp.k.*` (k = 0 .. n_hc_sets - 1: one set of mappings per iteration, or one set
    shared by all) around the two sublayers with hyper-connections. Without `mixer`/`mlp`, the block
    builds Llama's attention (d_model, n_heads, n_kv_heads, rope) and a SwiGLU of width `hidden`.
    """

    def __init__(self, d_model: int, n_heads: int | None = None, n_kv_heads: int | None = None,
                 hidden: int | None = None, rope=None, gating: bool = False, n_gates: int = 1,
                 bitlinear: bool = False, eps: float = 1e-5, gate_init: float = 0.0, *, mixer: Module | None = None,
                 mlp: Module | None = None, hyper: str | None = None, n_streams: int = 4, n_hc_sets: int = 1,
                 layer_index: int = 0):
        super().__init__()
        self.d_model = d_model
        self.input_layernorm = RMSNorm(d_model, eps=eps)
        mixer = MultiHeadAttention(d_model, n_heads, n_kv_heads, rope=rope) if mixer is None else mixer
        if isinstance(mixer, GatedDeltaNet):
            self.self_attn, self.linear_attn = None, mixer
        elif isinstance(mixer, MultiHeadAttention):
            self.self_attn, self.linear_attn = mixer, None
        else:
            raise ConfigError(f"LoopBlock: mixer must be a MultiHeadAttention or a GatedDeltaNet, "
                              f"got {type(mixer).__name__}")
        self.post_attention_layernorm = RMSNorm(d_model, eps=eps)
        self.mlp = SwiGLU(d_model, hidden) if mlp is None else mlp
        if bitlinear:  # ternary projections everywhere in the block (same names and shapes)
            if isinstance(self.mlp, SparseMoeBlock):
                raise ConfigError("bitlinear=True ternarises the block's Linear projections; a MoE block keeps its "
                                  "experts as 3-D parameters, not Linears: use a dense FFN with bitlinear")
            for mod in (self.self_attn or self.linear_attn, self.mlp):
                for name, lin in list(mod._modules.items()):
                    if lin is not None and hasattr(lin, "in_features"):
                        splits = [n for _, n in mod.fused_parts().get(name, [])] or None  # q, k, v: a scale each
                        setattr(mod, name, BitLinear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                                     out_splits=splits))
        self.gating, self.n_gates, self.hyper = gating, n_gates, hyper
        if gating and hyper is not None:
            raise ConfigError("gating and hyper-connections are two different residual rules for one block; "
                              "choose one (gating=False with hyper, or hyper=None with gating)")
        dtype = self.input_layernorm.weight.dtype
        if gating:
            self.gate_attn = Parameter(np.full((n_gates, d_model), gate_init, dtype=dtype))
            self.gate_ffn = Parameter(np.full((n_gates, d_model), gate_init, dtype=dtype))
        if hyper is not None:  # HC's layer index counts sublayers: attention is 2i, the FFN 2i + 1
            self.hc_attn = ModuleList([make_mapping(hyper, d_model, n_streams, 2 * layer_index, dtype=dtype)
                                       for _ in range(n_hc_sets)])
            self.hc_mlp = ModuleList([make_mapping(hyper, d_model, n_streams, 2 * layer_index + 1, dtype=dtype)
                                      for _ in range(n_hc_sets)])

    @property
    def kind(self) -> tuple[str, str]:
        """(mixer, mlp): ("attention" or "deltanet", "dense" or "moe")."""
        return ("deltanet" if self.linear_attn is not None else "attention",
                "moe" if isinstance(self.mlp, SparseMoeBlock) else "dense")

    def make_cache(self, batch_size: int, max_len: int, dtype):
        """This layer's cache: a KVCache [B, Hkv, max_len, Dh], or a DeltaNetCache (fixed size)."""
        if self.linear_attn is not None:
            return self.linear_attn.make_cache(batch_size, dtype)
        a = self.self_attn
        return KVCache(batch_size, a.n_kv_heads, max_len, a.head_dim, dtype)

    # lesson 18: begin (gated block) exercise
    def forward(self, x: Tensor, G: Tensor | None, r: int, past: int = 0, mode: str = "causal",
                cache=None, ref_kv=None):
        """Iteration r (1-based) of the loop. x [B, T, C] ([B, T, n, C] streams with hyper-connections);
        G [B, T, C] or None (= 0 at r = 1).

        Plain (pre-norm):                   h' = x + A;   h = h' + F
        Gated, a = sigmoid(g_attn[r]), b = sigmoid(g_ffn[r]) per channel, G_0 = 0:
            h' = x + a A + (1 - a) G_{r-1}
            h  = h' + b F + (1 - b) G_{r-1}
            G_r = G_{r-1} + ((A + F) / 2 - G_{r-1}) / r        (running mean of the raw A and F)
        Hyper-connections (lesson 27), around each sublayer, with the mappings of iteration r's set:
            x' = H_res x + H_post^T A(H_pre x);   h = H_res' x' + H_post'^T F(H_pre' x')
        where A = mixer(norm(.)), F = ffn(norm(.)). With a = b = 1 (large gate logits) the gated block
        is exactly the plain one; so is the hyper-connected one with n = 1 and identity mappings.
        """
        if self.hyper is not None:  # n residual streams: x [B, T, n, C]
            k = min(r, len(self.hc_attn)) - 1  # one set of mappings per iteration, or one shared set
            pre, post, res = self.hc_attn[k](x)  # [B, T, n], [B, T, n], [B, T, n, n]
            A, kv = self.mix(self.input_layernorm(_read(pre, x)), past, mode, cache, ref_kv)  # [B, T, C]
            x = res @ x + _write(post, A)  # mix the streams, write A into each: [B, T, n, C]
            pre, post, res = self.hc_mlp[k](x)
            Fo = self.mlp(self.post_attention_layernorm(_read(pre, x)))  # [B, T, C]
            return res @ x + _write(post, Fo), None, kv
        A, kv = self.mix(self.input_layernorm(x), past, mode, cache, ref_kv)  # [B, T, C]
        if not self.gating:
            h = x + A
            return h + self.mlp(self.post_attention_layernorm(h)), None, kv
        g = min(r, self.n_gates) - 1  # iterations beyond the trained ones reuse the last gate
        a, b = self.gate_attn[g].sigmoid(), self.gate_ffn[g].sigmoid()  # [C] each, in (0, 1)
        if G is None:
            G = x * 0.0  # G_0 = 0 (a tensor so both branches below are one formula)
        h = x + a * A + (1.0 - a) * G
        Fo = self.mlp(self.post_attention_layernorm(h))  # [B, T, C]
        h = h + b * Fo + (1.0 - b) * G
        G = G + ((A + Fo) * 0.5 - G) * (1.0 / r)
        return h, G, kv
    # lesson 18: end (gated block) exercise

    def mix(self, x: Tensor, past: int, mode: str, cache, ref_kv):
        """The token mixer on normalised x [B, T, C] -> (y [B, T, C], kv): attention under the loop's KV
        policy (`loop_attention`), or Gated DeltaNet continuing its recurrent state (kv = None)."""
        if self.linear_attn is not None:
            return self.linear_attn(x, cache=cache), None
        return loop_attention(self.self_attn, x, past, mode, cache, ref_kv)


def _read(pre: Tensor, x: Tensor) -> Tensor:
    """HC's read: H_pre [B, T, n] (or [n]) x streams [B, T, n, C] -> [B, T, C], one weighted sum of the streams."""
    return (pre.unsqueeze(-2) @ x).squeeze(-2)  # [B, T, 1, n] @ [B, T, n, C] -> [B, T, C]


def _write(post: Tensor, y: Tensor) -> Tensor:
    """HC's write: H_post [B, T, n] (or [n]) and y [B, T, C] -> [B, T, n, C], y added to stream i with weight post_i."""
    return post.unsqueeze(-1) * y.unsqueeze(-2)  # [B, T, n, 1] * [B, T, 1, C]


# --------------------------------------------------------------------------------------------
# Adaptive exit
# --------------------------------------------------------------------------------------------
# lesson 19: begin
def exit_distribution(lambdas: np.ndarray) -> np.ndarray:
    """Ouro's exit distribution over steps 1..T_max from per-step exit probabilities.

    lambdas [..., T_max] (lambda_t = sigmoid(w . h_t + b); the last one is not used):
        p(t)     = lambda_t * prod_{j<t} (1 - lambda_j)     t < T_max
        p(T_max) = prod_{j<T_max} (1 - lambda_j)            (the remaining mass)
    -> p [..., T_max], summing to 1. (NumPy version; the model builds the same thing from Tensors.)
    """
    lam = np.asarray(lambdas, dtype=np.float64)
    T = lam.shape[-1]
    surv = np.cumprod(np.concatenate([np.ones(lam.shape[:-1] + (1,)), 1.0 - lam[..., :-1]], axis=-1), axis=-1)
    p = surv * lam  # [..., T]: prob. of surviving to t, then exiting at t
    p[..., T - 1] = surv[..., T - 1]  # the last step takes all remaining mass
    return p


def q_exit_step(lambdas: np.ndarray, q: float, min_loops: int = 1, max_loops: int | None = None) -> np.ndarray:
    """The first step (1-based) whose CDF of the exit distribution reaches q, clamped to [min_loops, max_loops]."""
    p = exit_distribution(lambdas)
    T = p.shape[-1]
    max_loops = T if max_loops is None else max_loops
    cdf = np.cumsum(p, axis=-1)
    first = np.argmax(cdf >= q - 1e-12, axis=-1) + 1  # cdf[T-1] == 1 >= q, so argmax always finds one
    return np.clip(first, min_loops, max_loops)


def entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy (nats) of softmax(logits) over the last axis: [..., V] -> [...]."""
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -(np.exp(logp) * logp).sum(axis=-1)


def kl_divergence(logits_p: np.ndarray, logits_q: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) over the last axis: [..., V] -> [...] (nats, >= 0)."""
    def logsm(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    lp, lq = logsm(logits_p), logsm(logits_q)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)
# lesson 19: end


# --------------------------------------------------------------------------------------------
# KV caches for loops
# --------------------------------------------------------------------------------------------
class LoopCaches:
    """Every cache a LoopLM needs, laid out by policy, and how many loops each cached token used.

    before / after: one cache per local layer: a KVCache (attention) or a DeltaNetCache (Gated DeltaNet).
    loop:           per_iteration -> one cache per iteration r = 1..R (the exact default; for a Gated
                                     DeltaNet shared block, one recurrent state per iteration);
                    shared_first  -> one KVCache, iteration 1's K/V (read by every later iteration);
                    last_step     -> one KVCache, each token's K/V from its *last* iteration.
    loops:          [B, length] the iterations each cached token used (what `GenerationStats` reports).

    With a Gated DeltaNet layer anywhere, the caches cannot be cut back to an arbitrary length (a
    recurrent state has no rows to drop): `rewindable` is False, `crop` accepts only 0 (reset) and the
    current length, and `checkpoint`/`rollback` snapshot and restore the states.
    """

    def __init__(self, policy: str, n_iter: int, before, after, loop, max_len: int, batch_size: int = 1):
        self.policy, self.n_iter = policy, n_iter
        self.before, self.after, self.loop = list(before or []), list(after or []), list(loop)
        self._max_len, self.length = int(max_len), 0
        self._loops = np.zeros((batch_size, self._max_len), dtype=np.int64)  # loops used per cached token

    @property
    def all(self) -> list:
        return self.before + self.after + self.loop

    @property
    def kv(self) -> list[KVCache]:
        """The attention caches (the ones that grow with the length)."""
        return [c for c in self.all if isinstance(c, KVCache)]

    @property
    def states(self) -> list[DeltaNetCache]:
        """The recurrent states (fixed size)."""
        return [c for c in self.all if isinstance(c, DeltaNetCache)]

    @property
    def loops(self) -> np.ndarray:
        """[B, length] iterations each cached token used."""
        return self._loops[:, :self.length]

    def record(self, loops: np.ndarray) -> None:
        """After a forward pass over T new tokens: their loop counts [B, T]; the caches now hold length + T."""
        T = loops.shape[1]
        self._loops[:, self.length:self.length + T] = loops
        self.length += T

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.all)

    @property
    def bytes_per_token(self) -> int:
        """What one more cached position costs (the attention caches; a recurrent state does not grow)."""
        return sum(c.bytes_per_token for c in self.kv)

    @property
    def state_bytes(self) -> int:
        """The fixed bytes of the recurrent states (0 without Gated DeltaNet layers)."""
        return sum(c.nbytes for c in self.states)

    def rows(self) -> int:
        """K rows held in total (= V rows): sum over attention caches of the cached length."""
        return sum(c.length for c in self.kv)

    def reset(self) -> None:
        for c in self.all:
            c.reset()
        self.length = 0

    # What the generation loop asks of any cache (generation.py).
    @property
    def rewindable(self) -> bool:
        return not self.states

    @property
    def max_len(self) -> int:
        return self._max_len

    def crop(self, n: int) -> None:
        checks.integer(f"crop(n): n (the cached length is {self.length})", n, lo=0, hi=self.length, error=CacheError)
        if n == self.length:
            return
        if n == 0:
            return self.reset()
        if not self.rewindable:
            raise CacheError(f"crop({n}): these caches hold Gated DeltaNet states, which cannot be cut back to an "
                             f"earlier length (only reset, or restored from a checkpoint)")
        for c in self.all:
            c.crop(n)
        self.length = int(n)

    def grow(self, max_len: int) -> None:
        for c in self.kv:
            c.grow(max_len)
        loops = np.zeros((self._loops.shape[0], int(max_len)), dtype=np.int64)
        loops[:, :self.length] = self.loops
        self._loops, self._max_len = loops, int(max_len)

    def checkpoint(self):
        """What `rollback` needs to undo a forward pass that fails midway: the length, and copies of the states."""
        return self.length, [c.snapshot() for c in self.states]

    def rollback(self, state) -> None:
        length, snaps = state
        for c in self.kv:
            c.crop(min(c.length, length))
        for c, snap in zip(self.states, snaps):
            c.restore(snap)
        self.length = length

    def check_room(self, T: int) -> None:
        if self.length + T > self._max_len:
            raise CacheError(f"KV cache overflow: {self.length} of {self._max_len} positions used, "
                             f"{T} more requested")

    def __repr__(self):
        return (f"LoopCaches(policy={self.policy!r}, loop_caches={len(self.loop)}, "
                f"local={len(self.before) + len(self.after)}, len={self.length})")


def kv_bytes_per_token(policy: str, n_iter: int, n_before: int, n_after: int, n_kv_heads: int, head_dim: int,
                       dtype=np.float32) -> int:
    """Bytes of K and V one token adds to the caches of a LoopLM (every layer, every iteration kept).

        per_iteration: (n_before + n_after + R) * 2 * Hkv * Dh * itemsize   grows with the loop count
        shared_first / last_step: (n_before + n_after + 1) * 2 * Hkv * Dh * itemsize   as if unlooped
    """
    if policy not in KV_POLICIES:
        raise ConfigError(f"kv_policy must be one of {KV_POLICIES}, got {policy!r}")
    n_loop = n_iter if policy == "per_iteration" else 1
    return (n_before + n_after + n_loop) * 2 * n_kv_heads * head_dim * np.dtype(dtype).itemsize


def freeze(done: np.ndarray, old: Tensor, new: Tensor) -> Tensor:
    """Tokens that have exited keep their state: where(done, old, new). done [B, T]; old, new [B, T, C]
    (or [B, T, n, C]: n residual streams)."""
    if not done.any():
        return new
    return where(done.reshape(done.shape + (1,) * (new.ndim - 2)), old, new)
