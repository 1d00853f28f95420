"""Qwen3's attention: q/k RMSNorm per head, and (Qwen3-Next) an output gate and partial RoPE. Lesson 26.

The attention of lesson 04 with three changes, each a line of the forward below:

    q/k norms      each head's query and key vector is RMS-normalized over Dh before RoPE (`q_norm`,
                   `k_norm`, one weight [Dh] shared by all heads). The scores q.k then cannot grow
                   without bound as training sharpens a head, a classic source of loss spikes.
                   Qwen3-MoE uses the plain RMSNorm; Qwen3-Next the zero-centred one (scale 1 + w).
    output gate    (Qwen3-Next) q_proj also produces a gate per head; after attention each head's
                   output is multiplied by sigmoid(gate) (`gated_attention.py`), so a head can say
                   "nothing for this token" instead of faking it with an attention sink.
    partial RoPE   (Qwen3-Next) only the first rotary_dim = Dh / 4 coordinates of each head rotate
                   (`RotaryEmbedding(rotary_dim=...)`); the rest match on content alone.

As in `MultiHeadAttention`, the three input projections are one `qkv_proj`, rows
[q_proj | k_proj | v_proj]. With the gate, HF's `q_proj` already holds, head by head, the query and
its gate ([q_0 ; g_0 ; q_1 ; g_1 ; ...], 2 H Dh rows), and `fused_parts` maps HF's three names.
Shapes: x [B, T, C]; H query heads, Hkv key/value heads, Dh = head_dim.
"""
from __future__ import annotations

from .. import ops
from ..errors import ConfigError, ShapeError
from ..tensor import Tensor
from .gated_attention import gate_attention_output, split_query_and_gate
from .kv_cache import KVCache
from .linear import Linear
from .module import Module
from .norm import RMSNorm, ZeroCenteredRMSNorm
from .sdpa import attend

QK_NORMS = ("rms", "zero_centered")


class Qwen3Attention(Module):
    """x [B, T, C] -> [B, T, C].   HF `Qwen3MoeAttention` (qk_norm="rms") and `Qwen3NextAttention`
    (qk_norm="zero_centered", output_gate=True, a RoPE with rotary_dim = Dh / 4).

    rope: the model's `RotaryEmbedding` (head_dim = Dh; its rotary_dim says how much of a head rotates).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, rope, eps: float = 1e-6,
                 qk_norm: str = "rms", output_gate: bool = False, bias: bool = False):
        super().__init__()
        if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads != 0:
            raise ShapeError(f"n_heads={n_heads} must be a positive multiple of n_kv_heads={n_kv_heads} "
                             f"(each K/V head serves an equal group of query heads)")
        if qk_norm not in QK_NORMS:
            raise ConfigError(f"qk_norm must be one of {QK_NORMS}, got {qk_norm!r}")
        if rope is None or rope.head_dim != head_dim:
            raise ShapeError(f"Qwen3Attention needs a RotaryEmbedding with head_dim = {head_dim}, got {rope!r}")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.output_gate = bool(output_gate)
        q_rows = (2 if output_gate else 1) * n_heads * head_dim  # with the gate: a query and a gate per head
        self.qkv_proj = Linear(d_model, q_rows + 2 * n_kv_heads * head_dim, bias=bias)  # [q (+gate) | k | v] rows
        self.o_proj = Linear(n_heads * head_dim, d_model, bias=bias)
        Norm = ZeroCenteredRMSNorm if qk_norm == "zero_centered" else RMSNorm
        self.q_norm = Norm(head_dim, eps=eps)  # over Dh, one weight shared by every head
        self.k_norm = Norm(head_dim, eps=eps)
        self.rope = rope

    def fused_parts(self) -> dict:
        H, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        q_rows = (2 if self.output_gate else 1) * H * Dh
        return {"qkv_proj": [("q_proj", q_rows), ("k_proj", Hkv * Dh), ("v_proj", Hkv * Dh)]}

    # lesson 26: begin (Qwen3Attention.forward)
    def forward(self, x, cache: KVCache | None = None) -> Tensor:
        """x [B, T, C] -> [B, T, C]; with a cache, the new tokens sit at positions len(cache) .. len(cache) + T - 1."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ShapeError(f"attention input must be [B, T, C] with C = d_model = {self.d_model}, got {x.shape}")
        B, T, _ = x.shape
        H, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        past = len(cache) if cache is not None else 0

        # One matmul for q (and its gate), k and v
        q, k, v = ops.split(self.qkv_proj(x), [self.qkv_proj.out_features - 2 * Hkv * Dh, Hkv * Dh, Hkv * Dh], dim=-1)
        if self.output_gate:
            q, gate = split_query_and_gate(q, Dh)  # [B, T, H, Dh], [B, T, H*Dh]: per head [query ; gate]
        else:
            q = q.reshape(B, T, H, Dh)  # [B, T, H*Dh] -> [B, T, H, Dh]
        k, v = k.reshape(B, T, Hkv, Dh), v.reshape(B, T, Hkv, Dh)  # [B, T, Hkv*Dh] -> [B, T, Hkv, Dh]

        # q/k norms over each head's Dh, then RoPE (on the first rotary_dim coordinates)
        q = self.rope(self.q_norm(q).transpose(1, 2), offset=past)  # [B, T, H, Dh] -> [B, H, T, Dh]
        k = self.rope(self.k_norm(k).transpose(1, 2), offset=past)  # [B, T, Hkv, Dh] -> [B, Hkv, T, Dh]
        v = v.transpose(1, 2)  # [B, T, Hkv, Dh] -> [B, Hkv, T, Dh]

        # KV cache, then causal attention with grouped K/V heads
        if cache is not None:
            k, v = cache.append(k, v)  # [B, Hkv, past + T, Dh], views of the cache
        y = attend(q, k, v, is_causal=True, enable_gqa=True)  # [B, H, T, Dh]: sdpa (lesson 03, or lesson 22's kernel)
        y = y.transpose(1, 2).reshape(B, T, H * Dh)  # [B, H, T, Dh] -> [B, T, H*Dh]

        # Output gate: every coordinate of every head passes in proportion to sigmoid(gate)
        if self.output_gate:
            y = gate_attention_output(y, gate)  # [B, T, H*Dh]
        return self.o_proj(y)  # [B, T, C]
    # lesson 26: end (Qwen3Attention.forward)

    def extra_repr(self):
        gate = ", output_gate" if self.output_gate else ""
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, q/k norm={type(self.q_norm).__name__}{gate}")
