"""The pieces of a looped (weight-shared, recurrent-depth) transformer, lessons 18-20.

A looped model applies *one* block R times: depth (compute) grows with R, parameters do not.

    h_0 = e                                  e = the prelude's output (embedding + local layers)
    h_r = Block(h_{r-1})           r = 1..R  the same weights every time

This file holds what is new compared with an ordinary decoder block:

- `LoopBlock`: the shared block. Pre-norm attention + SwiGLU (Llama's), optional per-iteration,
  per-channel gates that mix in a running mean G of earlier iterations' sublayer outputs, and an
  optional switch to ternary `BitLinear` projections.
- `loop_attention`: attention for iteration r under the three KV-cache policies.
- exit rules: Ouro's exit distribution (`exit_distribution`, `q_exit_step`), Huginn's KL between
  successive steps (`kl_divergence`), and entropy (`entropy`).
- `LoopCaches` and `kv_bytes_per_token`: where each policy keeps its keys and values.

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
from .kv_cache import KVCache, LayerCaches
from .module import Module
from .norm import RMSNorm
from .sdpa import scaled_dot_product_attention

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
        y = scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # [B, H, T, Dh]
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
        y = scaled_dot_product_attention(q, keys, vals, attn_mask=mask, enable_gqa=True)  # [B, H, T, Dh]
        kv = (k, v)
    y = y.transpose(1, 2).reshape(B, T, H * Dh)  # [B, H, T, Dh] -> [B, T, H*Dh]
    return attn.o_proj(y), kv
# lesson 20: end (attention)


# --------------------------------------------------------------------------------------------
# The shared block
# --------------------------------------------------------------------------------------------
class LoopBlock(Module):
    """The block the loop shares: x [B, T, C] (+ global state G) -> (h [B, T, C], G, kv).

    Parameter names follow `DecoderBlock` (HF Llama's): input_layernorm, self_attn,
    post_attention_layernorm, mlp; plus `gate_attn`, `gate_ffn` [n_gates, C] when gated.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, hidden: int, rope=None, gating: bool = False,
                 n_gates: int = 1, bitlinear: bool = False, eps: float = 1e-5, gate_init: float = 0.0):
        super().__init__()
        self.input_layernorm = RMSNorm(d_model, eps=eps)
        self.self_attn = MultiHeadAttention(d_model, n_heads, n_kv_heads, rope=rope)
        self.post_attention_layernorm = RMSNorm(d_model, eps=eps)
        self.mlp = SwiGLU(d_model, hidden)
        if bitlinear:  # ternary projections everywhere in the shared block (same names and shapes)
            for mod in (self.self_attn, self.mlp):
                for name, lin in list(mod._modules.items()):
                    if lin is not None and hasattr(lin, "in_features"):
                        splits = [n for _, n in mod.fused_parts().get(name, [])] or None  # q, k, v: a scale each
                        setattr(mod, name, BitLinear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                                     out_splits=splits))
        self.gating, self.n_gates = gating, n_gates
        if gating:
            self.gate_attn = Parameter(np.full((n_gates, d_model), gate_init, dtype=self.mlp.down_proj.weight.dtype))
            self.gate_ffn = Parameter(np.full((n_gates, d_model), gate_init, dtype=self.mlp.down_proj.weight.dtype))

    # lesson 18: begin (gated block) exercise
    def forward(self, x: Tensor, G: Tensor | None, r: int, past: int = 0, mode: str = "causal",
                cache: KVCache | None = None, ref_kv=None):
        """Iteration r (1-based) of the loop. x [B, T, C]; G [B, T, C] or None (= 0 at r = 1).

        Ungated (a plain pre-norm block):   h' = x + A;   h = h' + F
        Gated, a = sigmoid(g_attn[r]), b = sigmoid(g_ffn[r]) per channel, G_0 = 0:
            h' = x + a A + (1 - a) G_{r-1}
            h  = h' + b F + (1 - b) G_{r-1}
            G_r = G_{r-1} + ((A + F) / 2 - G_{r-1}) / r        (running mean of the raw A and F)
        where A = attention(norm(x)), F = ffn(norm(h')). With a = b = 1 (large gate logits) the
        gated block is exactly the plain one.
        """
        A, kv = loop_attention(self.self_attn, self.input_layernorm(x), past, mode, cache, ref_kv)  # [B, T, C]
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
    """Every KV cache a LoopLM needs, laid out by policy.

    before / after: one KVCache per local layer (`LayerCaches`).
    loop:           per_iteration -> one KVCache per iteration r = 1..R (the exact default);
                    shared_first  -> one KVCache, iteration 1's K/V (read by every later iteration);
                    last_step     -> one KVCache, each token's K/V from its *last* iteration.
    """

    def __init__(self, policy: str, n_iter: int, before, after, loop):
        self.policy, self.n_iter = policy, n_iter
        self.before, self.after, self.loop = before, after, list(loop)

    @property
    def all(self) -> list[KVCache]:
        return list(self.before or []) + list(self.after or []) + self.loop

    @property
    def length(self) -> int:
        """Positions cached (every cache agrees between forward calls)."""
        return self.loop[0].length

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.all)

    @property
    def bytes_per_token(self) -> int:
        return sum(c.bytes_per_token for c in self.all)

    def rows(self) -> int:
        """K rows held in total (= V rows): sum over caches of the cached length."""
        return sum(c.length for c in self.all)

    def reset(self) -> None:
        for c in self.all:
            c.reset()

    # What the generation loop asks of any cache (generation.py).
    rewindable = True

    @property
    def max_len(self) -> int:
        return self.loop[0].max_len

    def crop(self, n: int) -> None:
        shortest = min(c.length for c in self.all)
        checks.integer(f"crop(n): n (the cached length is {shortest})", n, lo=0, hi=shortest, error=CacheError)
        for c in self.all:
            c.crop(n)

    def grow(self, max_len: int) -> None:
        for c in self.all:
            c.grow(max_len)

    def checkpoint(self) -> int:
        return self.length

    def rollback(self, length: int) -> None:
        for c in self.all:
            c.crop(min(c.length, length))

    def check_room(self, T: int) -> None:
        if self.length + T > self.loop[0].max_len:
            raise CacheError(f"KV cache overflow: {self.length} of {self.loop[0].max_len} positions used, "
                             f"{T} more requested")

    def __repr__(self):
        return (f"LoopCaches(policy={self.policy!r}, loop_caches={len(self.loop)}, "
                f"local={len(self.all) - len(self.loop)}, len={self.length})")


def make_loop_caches(policy: str, n_iter: int, n_before: int, n_after: int, batch_size: int, n_kv_heads: int,
                     max_len: int, head_dim: int, dtype=np.float32) -> LoopCaches:
    if policy not in KV_POLICIES:
        raise ConfigError(f"kv_policy must be one of {KV_POLICIES}, got {policy!r}")

    def new():
        return KVCache(batch_size, n_kv_heads, max_len, head_dim, dtype)

    n_loop = n_iter if policy == "per_iteration" else 1
    before = LayerCaches(new() for _ in range(n_before)) if n_before else None
    after = LayerCaches(new() for _ in range(n_after)) if n_after else None
    return LoopCaches(policy, n_iter, before, after, [new() for _ in range(n_loop)])


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
    """Tokens that have exited keep their state: where(done, old, new). done [B, T]; old, new [B, T, C]."""
    if not done.any():
        return new
    return where(done[..., None], old, new)
