"""Multi-head attention with grouped K/V heads (MHA / GQA / MQA), lesson 04.

One attention head asks one kind of question; H heads ask H kinds in parallel, each in its own
Dh-dimensional subspace, and `o_proj` mixes their answers back into the C-dim residual stream.

    n_kv_heads == n_heads          MHA  (every query head has its own keys/values)
    n_heads % n_kv_heads == 0      GQA  (each K/V head is shared by a group of n_heads/n_kv_heads)
    n_kv_heads == 1                MQA  (one K/V head for all)

Fewer K/V heads = a smaller KV cache (2 * n_layers * n_kv_heads * Dh numbers per token), which is
what limits long-context decoding; quality barely moves. Parameter names are HF Llama's
(`q_proj, k_proj, v_proj, o_proj`), with q, k and v kept as the row blocks of one `qkv_proj`, so
`model.layers.N.self_attn.*` weights load as they are.
"""
from __future__ import annotations

from .. import checks, ops
from ..errors import ShapeError
from ..tensor import Tensor
from .kv_cache import KVCache
from .linear import Linear
from .module import Module
from .sdpa import attend, check_attn_mask


# lesson 04: begin (repeat_kv) exercise
def repeat_kv(x, n_rep: int) -> Tensor:
    """[B, Hkv, T, Dh] -> [B, Hkv * n_rep, T, Dh]: kv head j serves query heads j*n_rep .. j*n_rep + n_rep - 1.

    Same as HF's `repeat_kv` (torch.repeat_interleave on dim 1). The broadcast (`expand`) is free,
    but merging the repeat axis into the head axis must copy; that is why attention here does not
    call this: `scaled_dot_product_attention(..., enable_gqa=True)` broadcasts each shared K/V
    head over its group of query heads instead (a stride of 0), with no copy at all.
    """
    x = x if isinstance(x, Tensor) else Tensor(x)
    if n_rep == 1:
        return x
    B, Hkv, T, Dh = x.shape
    x = x.reshape(B, Hkv, 1, T, Dh).expand(B, Hkv, n_rep, T, Dh)  # a broadcast view: no copy
    return x.reshape(B, Hkv * n_rep, T, Dh)  # the copy
# lesson 04: end (repeat_kv) exercise


class MultiHeadAttention(Module):
    """x [B, T, C] -> [B, T, C].   C = d_model, H = n_heads, Hkv = n_kv_heads, Dh = head_dim.

    `qkv_proj` is one Linear whose output rows are the queries, keys and values side by side
    ([H*Dh | Hkv*Dh | Hkv*Dh], as nanoGPT's `c_attn`): three projections of the same x in one matmul.
    HF checkpoints keep them as `q_proj`, `k_proj`, `v_proj`; `load_state_dict` stacks those rows
    and `state_dict(split_fused=True)` splits them again (see `fused_parts`).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None,
                 bias: bool = False, rope=None, dropout: float = 0.0):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads != 0:
            raise ShapeError(f"n_heads={n_heads} must be a positive multiple of n_kv_heads={n_kv_heads} "
                             f"(each K/V head serves an equal group of query heads)")
        if head_dim is None:
            if d_model % n_heads != 0:
                raise ShapeError(f"d_model={d_model} is not divisible by n_heads={n_heads}; "
                                 f"pass head_dim explicitly or choose a divisor")
            head_dim = d_model // n_heads
        if rope is not None and getattr(rope, "head_dim", head_dim) != head_dim:
            raise ShapeError(f"rope.head_dim={rope.head_dim} does not match the attention head_dim={head_dim}")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.dropout = checks.number("dropout", dropout, lo=0.0, hi=1.0)
        self.qkv_proj = Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias=bias)  # [q | k | v] rows
        self.o_proj = Linear(n_heads * head_dim, d_model, bias=bias)
        self.rope = rope

    def fused_parts(self) -> dict:
        H, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        return {"qkv_proj": [("q_proj", H * Dh), ("k_proj", Hkv * Dh), ("v_proj", Hkv * Dh)]}

    # lesson 04: begin (forward)
    def forward(self, x, attn_mask=None, is_causal: bool = True, cache: KVCache | None = None) -> Tensor:
        """attn_mask: bool (True = keep) or float (added), broadcastable to [B, H, T, past + T].
        cache: this layer's KVCache; the new tokens sit at positions len(cache) .. len(cache) + T - 1."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ShapeError(f"attention input must be [B, T, C] with C = d_model = {self.d_model}, got {x.shape}")
        B, T, _ = x.shape
        H, Dh = self.n_heads, self.head_dim
        past = len(cache) if cache is not None else 0
        q, k, v = self.project(x, past)  # [B, H, T, Dh], [B, Hkv, T, Dh], [B, Hkv, T, Dh]

        # KV cache: check the mask first (errors must leave the cache untouched), then append
        check_attn_mask(attn_mask, (B, H, T, past + T), x.dtype)
        if cache is not None:
            k, v = cache.append(k, v)  # [B, Hkv, past + T, Dh], views of the cache

        # scaled_dot_product_attention (lesson 03; `attend` may use a runtime's equal kernel, lesson 22).
        # GQA: it lets each K/V head serve its group of H / Hkv query heads (no repeat_kv copy)
        y = attend(q, k, v, attn_mask, dropout_p=self.dropout if self.training else 0.0,
                   is_causal=is_causal, enable_gqa=True)  # [B, H, T, Dh]

        # Merge heads and mix them
        y = y.transpose(1, 2).reshape(B, T, H * Dh)  # [B, H, T, Dh] -> [B, T, H*Dh]
        return self.o_proj(y)  # [B, T, C]

    # lesson 04: begin (project) exercise
    def project(self, x: Tensor, past: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, C] -> q [B, H, T, Dh], k [B, Hkv, T, Dh], v [B, Hkv, T, Dh]; q and k rotated by RoPE
        to the positions past .. past + T - 1."""
        B, T, _ = x.shape
        H, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv_proj(x).reshape(B, T, H + 2 * Hkv, Dh)  # one matmul: [B, T, (H + 2 Hkv) Dh] -> heads
        qkv = qkv.transpose(1, 2)  # [B, T, H + 2 Hkv, Dh] -> [B, H + 2 Hkv, T, Dh]: q's heads, k's, v's
        qk, v = ops.split(qkv, [H + Hkv, Hkv], dim=1)  # [B, H + Hkv, T, Dh], [B, Hkv, T, Dh]
        if self.rope is not None:  # RoPE treats every head alike: q's and k's heads in one call
            qk = self.rope(qk, offset=past)
        q, k = ops.split(qk, [H, Hkv], dim=1)  # [B, H, T, Dh], [B, Hkv, T, Dh]
        return q, k, v
    # lesson 04: end (project) exercise
    # lesson 04: end (forward)

    def extra_repr(self):
        kind = "MHA" if self.n_kv_heads == self.n_heads else "MQA" if self.n_kv_heads == 1 else "GQA"
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim} ({kind})")
