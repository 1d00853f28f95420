"""Scaled dot-product attention, step by step (lesson 03), with grouped K/V heads (lesson 04).

    out = softmax(q k^T / sqrt(Dh) + mask) v

Shapes (the one legend): q [..., H, Tq, Dh], k [..., Hkv, Tk, Dh], v [..., Hkv, Tk, Dv]
-> out [..., H, Tq, Dv].  "..." is the batch (usually B); the math does not care.

Semantics follow `torch.nn.functional.scaled_dot_product_attention`, with three decisions
written down here because they matter:

1. **Causal mask alignment.** `is_causal=True` lets query i see keys 0 .. i + (Tk - Tq):
   the mask is aligned to the *bottom-right* corner. When Tq == Tk this is the usual lower
   triangle (identical to torch). When Tq < Tk (a cached decode step: 1 new query, Tk cached
   keys) the new queries are the *last* Tq positions, so they see every earlier key. torch's own
   `is_causal` aligns the triangle top-left when Tq != Tk, which is wrong for cached decoding
   (the one new token would see only key 0); we do not copy that.
2. **Mask and causal together.** torch refuses `attn_mask` with `is_causal=True`; here both are
   applied (a key is visible only if both allow it), which is what a padded batch wants.
3. **Fully masked rows** (a query that may see no key at all): the output row is 0 and its
   gradient is 0, exactly as torch 2.13's CPU kernels return (older torch gave NaN). A float mask
   of -inf everywhere counts as fully masked; a finite "-1e9" mask does not (softmax of equal
   numbers is uniform, as in torch).

A boolean mask means True = take part in attention (torch's convention; the opposite of
`masked_fill`'s). A float mask is *added* to the scores (0 = keep, -inf = drop, anything else
is a bias such as ALiBi). Masks broadcast to [..., H, Tq, Tk].
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import DTypeError, ShapeError
from ..tensor import Tensor, unbroadcast


def causal_mask(Tq: int, Tk: int) -> np.ndarray:
    """Bottom-right aligned causal mask, bool [Tq, Tk], True = may attend.

    Query i is absolute position (Tk - Tq) + i, so it sees keys j <= i + (Tk - Tq).
    Tq == Tk gives the lower triangle; Tq == 1 (a decode step) gives a row of all True.
    """
    offset = Tk - Tq
    return np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + offset  # [Tq, Tk]


def check_attn_mask(attn_mask, scores_shape: tuple, dtype) -> np.ndarray | Tensor | None:
    """Validate a mask against the scores' shape [..., H, Tq, Tk] and dtype; return it ready to use.

    Raises ShapeError (does not broadcast, or would enlarge the scores) or DTypeError (a float mask
    whose dtype is not the activations' dtype: it would silently up- or down-cast). Used by
    MultiHeadAttention to reject a bad mask *before* it writes to a KV cache.
    """
    if attn_mask is None:
        return None
    m = attn_mask if isinstance(attn_mask, Tensor) else np.asarray(attn_mask)
    mshape, mdtype = m.shape, m.dtype
    try:
        ok = np.broadcast_shapes(mshape, scores_shape) == tuple(scores_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(
            f"attn_mask of shape {tuple(mshape)} does not broadcast to the attention scores "
            f"[..., H, Tq, Tk] = {tuple(scores_shape)}"
        )
    if mdtype == np.bool_:
        return m.data if isinstance(m, Tensor) else m
    if mdtype.kind != "f":
        raise DTypeError(f"attn_mask must be bool (True = keep) or float (added to scores), got dtype {mdtype}")
    if mdtype != dtype:
        raise DTypeError(f"float attn_mask has dtype {mdtype} but q/k/v are {dtype}; cast the mask to {dtype}")
    return m


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, enable_gqa: bool) -> None:
    """Every shape and dtype rule, checked before any arithmetic, with expected vs actual."""
    qd, kd, vd = q.data, k.data, v.data  # (the arrays: this runs on every decode step of every layer)
    for name, a in (("q", qd), ("k", kd), ("v", vd)):
        if a.ndim < 2:
            raise ShapeError(f"{name} must be [..., T, Dh], got shape {a.shape}")
        if a.dtype.kind != "f":
            raise DTypeError(f"{name} must be a float tensor, got dtype {a.dtype}")
    if not (qd.dtype == kd.dtype == vd.dtype):
        raise DTypeError(f"q, k, v must share one dtype, got q {qd.dtype}, k {kd.dtype}, v {vd.dtype}")
    qs, ks, vs = qd.shape, kd.shape, vd.shape
    if qs[-1] != ks[-1]:
        raise ShapeError(f"q and k must have the same head dim Dh: q has {qs[-1]} (shape {qs}), "
                         f"k has {ks[-1]} (shape {ks})")
    if ks[:-1] != vs[:-1]:
        raise ShapeError(f"k and v must agree on [..., Hkv, Tk]: k is {ks}, v is {vs}")
    if enable_gqa:
        if len(qs) < 3 or len(ks) < 3:
            raise ShapeError(f"enable_gqa needs [..., H, T, Dh] inputs, got q {qs}, k {ks}")
        H, Hkv = qs[-3], ks[-3]
        if H % Hkv != 0:
            raise ShapeError(f"q has {H} heads but k has {Hkv}; n_heads must be a multiple of n_kv_heads")
        batch_q, batch_k = qs[:-3], ks[:-3]
    else:
        batch_q, batch_k = qs[:-2], ks[:-2]
    try:
        if batch_q != batch_k:  # (equal shapes are the common case: skip the general check)
            np.broadcast_shapes(batch_q, batch_k)
    except ValueError:
        hint = ""
        if not enable_gqa and len(qs) >= 3 and len(ks) >= 3 and qs[-3] % ks[-3] == 0:
            hint = "; for grouped-query attention pass enable_gqa=True"
        raise ShapeError(f"q {qs} and k {ks} have batch/head dims that do not broadcast "
                         f"(q has {qs[-3] if len(qs) >= 3 else 1} heads, k has "
                         f"{ks[-3] if len(ks) >= 3 else 1}){hint}") from None


def _safe_softmax(s: np.ndarray, masked: bool = True) -> np.ndarray:
    """Softmax over the last axis of the scores `s`, in place; fully masked rows (all -inf) give 0, not NaN.

    Stable: subtract the row max before exp, so every exponent is <= 0 and nothing overflows.
    A row with no visible key has max -inf; using 0 instead gives exp(-inf) = 0 everywhere, and
    dividing that row by 1 instead of by its sum 0 keeps it 0. `masked=False` says no mask was
    applied (a decode step), so no row can be fully masked and the check is skipped.
    """
    m = s.max(axis=-1, keepdims=True)  # [.., 1]
    fully_masked = masked and not np.isfinite(m).all()  # only when some row is all -inf
    if fully_masked:
        m = np.where(np.isfinite(m), m, 0).astype(s.dtype, copy=False)
    s -= m
    np.exp(s, out=s)
    total = s.sum(axis=-1, keepdims=True)  # >= 1 in every row with a finite max (its max gives exp(0))
    if fully_masked:
        total = np.where(total > 0, total, 1).astype(s.dtype, copy=False)  # all-masked row: 0 / 1 = 0
    s /= total
    return s


# lesson 03: begin
def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None, enable_gqa: bool = False, *,
                                 generator=None) -> Tensor:
    """softmax(q k^T * scale + mask) v.   q [..., H, Tq, Dh], k [..., Hkv, Tk, Dh], v [..., Hkv, Tk, Dv]
    -> [..., H, Tq, Dv].

    attn_mask: bool (True = keep) or float (added), broadcastable to [..., H, Tq, Tk].
    is_causal: bottom-right aligned (see the module docstring); may be combined with attn_mask.
    scale:     default 1/sqrt(Dh), a Python float so float32 stays float32.
    enable_gqa: k/v carry Hkv heads, each shared by H/Hkv consecutive query heads (GQA; Hkv=1 is MQA).
    dropout_p: dropout on the attention weights (always applied when > 0, like torch: pass 0.0 in eval).

    One op: the forward below is plain NumPy, and `backward` is written out (as for RMSNorm), so a
    decode step runs a dozen NumPy calls per layer instead of a dozen graph nodes.
    """
    q, k, v = (t if isinstance(t, Tensor) else Tensor(t) for t in (q, k, v))
    _check_qkv(q, k, v, enable_gqa)
    Tq, Dh = q.shape[-2], q.shape[-1]
    Tk = k.shape[-2]

    # GQA without copying K/V: give the G query heads that share a kv head their own axis, and let
    # k/v broadcast over it (a size-1 axis): each kv head meets its G query heads with no repeat_kv copy.
    qd, kd, vd = q.data, k.data, v.data
    group = enable_gqa and q.shape[-3] != k.shape[-3]
    if group:
        H, Hkv = q.shape[-3], k.shape[-3]
        G = H // Hkv
        qd = qd.reshape(q.shape[:-3] + (Hkv, G, Tq, Dh))  # [.., H, Tq, Dh] -> [.., Hkv, G, Tq, Dh]
        kd = kd[..., None, :, :]  # [.., Hkv, Tk, Dh] -> [.., Hkv, 1, Tk, Dh]
        vd = vd[..., None, :, :]  # [.., Hkv, Tk, Dv] -> [.., Hkv, 1, Tk, Dv]

    # 1. Scale. Dividing by sqrt(Dh) keeps the scores' variance ~1 whatever Dh, so softmax does not
    #    saturate. Scaling q ([.., Tq, Dh]) is cheaper than scaling the scores ([.., Tq, Tk]).
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    qs = qd * scale

    # 2. Scores: how well each query matches each key.
    scores = qs @ kd.swapaxes(-2, -1)  # [.., Tq, Dh] @ [.., Dh, Tk] -> [.., Tq, Tk]  (a fresh array)
    s4 = scores.reshape(scores.shape[:-4] + (H, Tq, Tk)) if group else scores  # [.., H, Tq, Tk], a view

    # 3. Mask: hidden keys get -inf, so softmax gives them exactly 0 weight.
    mask = check_attn_mask(attn_mask, s4.shape, s4.dtype)
    if is_causal and Tq > 1:  # a single query (a decode step) is the last position: it sees every key
        np.copyto(scores, -np.inf, where=~causal_mask(Tq, Tk))  # [Tq, Tk] broadcasts over the heads
    if mask is not None:
        if mask.dtype == np.bool_:
            np.copyto(s4, -np.inf, where=~mask)
        else:
            s4 += mask.data if isinstance(mask, Tensor) else mask  # additive float mask (0, -inf or a bias)

    # 4. Softmax over the keys: each query's weights are >= 0 and sum to 1.
    p = _safe_softmax(scores, masked=(is_causal and Tq > 1) or mask is not None)  # [.., Tq, Tk], in place
    pd, keep = p, None  # pd: the weights after dropout
    if dropout_p > 0.0:  # inverted dropout on the weights: the draw F.dropout makes on [.., H, Tq, Tk]
        from .functional import dropout_mask
        if dropout_p > 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {dropout_p}")
        keep = dropout_mask(s4.shape, dropout_p, p.dtype, generator).reshape(p.shape)  # 0 or 1/(1-p)
        pd = p * keep

    # 5. Weighted sum of the values.
    out = pd @ vd  # [.., Tq, Tk] @ [.., Tk, Dv] -> [.., Tq, Dv]
    if group:
        out = out.reshape(out.shape[:-4] + (H, Tq, out.shape[-1]))  # [.., Hkv, G, Tq, Dv] -> [.., H, Tq, Dv]

    float_mask = mask if isinstance(mask, Tensor) and mask.dtype.kind == "f" else None
    parents = (q, k, v) if float_mask is None else (q, k, v, float_mask)

    def backward(g):
        """g = dL/dout.  With S the scores, P = softmax(S), P' = P after dropout, out = P' v:
            dv = P'^T g          dP' = g v^T            dP = dP' * keep
            dS = P * (dP - rowsum(dP * P))               (softmax's Jacobian-vector product)
            dq = dS k * scale    dk = dS^T (q * scale)   dmask = dS
        K/V heads shared by a group of G query heads sum the G contributions (the size-1 axis)."""
        g = g.reshape(q.shape[:-3] + (Hkv, G, Tq, g.shape[-1])) if group else g  # like the scores
        d_pd = g @ vd.swapaxes(-2, -1)  # [.., Tq, Dv] @ [.., Dv, Tk] -> [.., Tq, Tk]
        dp = d_pd * keep if keep is not None else d_pd
        ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))  # [.., Tq, Tk]
        grads = [
            unbroadcast((ds @ kd) * scale, qd.shape).reshape(q.shape),  # [.., Tq, Dh]
            unbroadcast(ds.swapaxes(-2, -1) @ qs, kd.shape).reshape(k.shape),  # [.., Tk, Dh]
            unbroadcast(pd.swapaxes(-2, -1) @ g, vd.shape).reshape(v.shape),  # [.., Tk, Dv]
        ]
        if float_mask is not None:
            grads.append(unbroadcast(ds.reshape(s4.shape), float_mask.shape))
        return tuple(grads)

    return Tensor._make(out, parents, backward, "scaled_dot_product_attention")
# lesson 03: end


CAUSAL_CHUNK = 128  # query rows per block in `causal_attention_in_chunks` (0 disables it)


def causal_attention_in_chunks(q, k, v, chunk: int = CAUSAL_CHUNK, enable_gqa: bool = True) -> Tensor:
    """Causal attention over a long prompt, one block of `chunk` queries at a time (lesson 22).

    With a causal mask, query i only sees keys 0..i (+ the cached past), so the full [Tq, Tk] score
    matrix is half wasted: its upper triangle is computed and then masked to -inf. Running the
    queries in blocks and giving block [c0, c1) only the keys it can see, k[..., :past + c1, :],
    skips most of that half and keeps the scores of one block in memory instead of all of them.
    Each block is exactly `scaled_dot_product_attention(..., is_causal=True)` (the bottom-right
    alignment makes the block's mask come out right), so the numbers are the same.
    """
    from ..ops import cat

    Tq, Tk = q.shape[-2], k.shape[-2]
    past = Tk - Tq
    outs = []
    for c0 in range(0, Tq, chunk):
        c1 = min(Tq, c0 + chunk)
        outs.append(scaled_dot_product_attention(q[..., c0:c1, :], k[..., :past + c1, :], v[..., :past + c1, :],
                                                 is_causal=True, enable_gqa=enable_gqa))  # [.., H, c, Dv]
    return outs[0] if len(outs) == 1 else cat(outs, dim=-2)  # [.., H, Tq, Dv]
