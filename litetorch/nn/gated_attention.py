"""The pieces Qwen3-Next adds to attention: an output gate per head, and zero-centred q/k norms.

Gated attention (Qiu et al. 2025, "Gated Attention for Large Language Models"; Qwen3-Next's
full-attention layers): `q_proj` produces, for every head, a query *and* a gate of the same size.
After attention, each head's output is multiplied elementwise by sigmoid(gate), before `o_proj`:

    q_proj(x)          [B, T, H * 2 * Dh]   per head h: [q_h ; g_h]  (q and gate interleaved by head,
                                            not all queries then all gates)
    o = SDPA(q, k, v)  [B, T, H * Dh]       heads merged
    o = o * sigmoid(g)                      a data-dependent valve on every output coordinate
    out = o_proj(o)

The gate lets a head output (close to) nothing for a token, which a softmax alone cannot: its weights
sum to 1, so "attend nowhere" has to be faked by attending to a dump token (an attention sink).

q/k norms: before RoPE, each head's query and key vector goes through an RMSNorm over Dh
(`q_norm`, `k_norm`, as in Qwen3); in Qwen3-Next that is the zero-centred variant,
`nn.ZeroCenteredRMSNorm(head_dim)`, applied to q [B, T, H, Dh] and k [B, T, Hkv, Dh].
These are functions, not an attention class: `MultiHeadAttention` wires them in.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ShapeError
from ..tensor import Tensor
from . import functional as F


def split_query_and_gate(qg, head_dim: int):
    """q_proj's output [..., H * 2 * Dh] -> query [..., H, Dh] and gate [..., H * Dh] (HF Qwen3NextAttention's layout)."""
    if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)) or head_dim < 1:
        raise ConfigError(f"head_dim must be a positive int, got {type(head_dim).__name__} {head_dim!r}")
    qg = qg if isinstance(qg, Tensor) else Tensor(qg)
    if qg.ndim < 1 or qg.shape[-1] % (2 * head_dim) != 0:
        raise ShapeError(f"split_query_and_gate: the last dim must be H * 2 * head_dim = H * {2 * head_dim} "
                         f"(a query and a gate per head), got shape {qg.shape}")
    lead = qg.shape[:-1]
    qg = qg.reshape(lead + (-1, 2 * head_dim))  # [..., H * 2 Dh] -> [..., H, 2 Dh]
    query, gate = qg.chunk(2, dim=-1)  # [..., H, Dh] each: the first half of each head is its query
    return query, gate.reshape(lead + (-1,))  # gate: [..., H, Dh] -> [..., H * Dh], like the merged heads


def gate_attention_output(attn_output, gate) -> Tensor:
    """attn_output [..., H * Dh] (heads merged) * sigmoid(gate) [..., H * Dh] -> [..., H * Dh], the input of o_proj."""
    attn_output = attn_output if isinstance(attn_output, Tensor) else Tensor(attn_output)
    gate = gate if isinstance(gate, Tensor) else Tensor(gate)
    if attn_output.shape != gate.shape:
        raise ShapeError(f"gate_attention_output: attention output {attn_output.shape} and gate {gate.shape} "
                         f"must have the same shape [..., H * Dh]")
    return attn_output * F.sigmoid(gate)  # each coordinate passes in proportion to its gate, in (0, 1)
