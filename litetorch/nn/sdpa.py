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

The attention layers do not call the definition by name but through `attend` (at the end of this
file): the definition, unless a runtime has chosen an equal, faster kernel with `sdpa_kernel`, as
torch's `F.scaled_dot_product_attention` picks among its backends (lesson 22).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from .. import checks
from ..errors import DTypeError, ShapeError
from ..tensor import Tensor, unbroadcast
from .dropout import dropout_mask


# lesson 03: begin (causal_mask) exercise
def causal_mask(Tq: int, Tk: int) -> np.ndarray:
    """Bottom-right aligned causal mask, bool [Tq, Tk], True = may attend.

    Query i is absolute position (Tk - Tq) + i, so it sees keys j <= i + (Tk - Tq).
    Tq == Tk gives the lower triangle; Tq == 1 (a decode step) gives a row of all True.
    """
    offset = Tk - Tq
    return np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + offset  # [Tq, Tk]
# lesson 03: end (causal_mask) exercise


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


def _group_heads(q: np.ndarray, k: np.ndarray, v: np.ndarray, enable_gqa: bool):
    """GQA without copying K/V: the G = H / Hkv query heads that share a kv head get an axis of their own,
    and k, v get a size-1 axis there, so each kv head broadcasts over its G query heads (stride 0).

    q [.., H, Tq, Dh] -> [.., Hkv, G, Tq, Dh];  k, v [.., Hkv, Tk, D] -> [.., Hkv, 1, Tk, D].
    Without GQA (or with H == Hkv) the arrays come back unchanged."""
    H, Hkv = (q.shape[-3], k.shape[-3]) if enable_gqa else (1, 1)
    if H == Hkv:
        return q, k, v
    # lesson 04: begin (gqa head groups) exercise
    q = q.reshape(q.shape[:-3] + (Hkv, H // Hkv) + q.shape[-2:])  # [.., H, Tq, Dh] -> [.., Hkv, G, Tq, Dh]
    return q, k[..., None, :, :], v[..., None, :, :]  # [.., Hkv, Tk, D] -> [.., Hkv, 1, Tk, D]
    # lesson 04: end (gqa head groups) exercise


def _ungroup(a: np.ndarray, H: int) -> np.ndarray:
    """[.., Hkv, G, T, D] -> [.., H, T, D]: the grouped head axes merged back (a view)."""
    return a.reshape(a.shape[:-4] + (H,) + a.shape[-2:])


# lesson 03: begin (mask)
def _mask_scores(scores: np.ndarray, attn_mask, is_causal: bool, grouped_heads: int | None) -> bool:
    """Set the scores of hidden keys to -inf in place (a float mask is added); return whether any mask
    was applied. scores [.., Tq, Tk]; `grouped_heads` = H when the scores are grouped [.., Hkv, G, Tq, Tk].
    `attn_mask` broadcasts to [.., H, Tq, Tk]."""
    Tq, Tk = scores.shape[-2:]
    s4 = _ungroup(scores, grouped_heads) if grouped_heads else scores  # [.., H, Tq, Tk], same memory
    mask = check_attn_mask(attn_mask, s4.shape, s4.dtype)
    causal = is_causal and Tq > 1  # a single query (a decode step) is the last position: it sees every key
    if causal:
        np.copyto(scores, -np.inf, where=~causal_mask(Tq, Tk))  # [Tq, Tk] broadcasts over the heads
    if mask is not None and mask.dtype == np.bool_:
        np.copyto(s4, -np.inf, where=~mask)
    elif mask is not None:
        s4 += mask.data if isinstance(mask, Tensor) else mask  # additive float mask (0, -inf or a bias)
    return causal or mask is not None
# lesson 03: end (mask)


# lesson 03: begin (sdpa) exercise
def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None, enable_gqa: bool = False, *, generator=None) -> Tensor:
    """softmax(q k^T * scale + mask) v.  q [.., H, Tq, Dh], k [.., Hkv, Tk, Dh], v [.., Hkv, Tk, Dv] -> [.., H, Tq, Dv].
    torch's arguments; the causal mask is aligned bottom-right (see the module docstring)."""
    q, k, v = (t if isinstance(t, Tensor) else Tensor(t) for t in (q, k, v))
    _check_qkv(q, k, v, enable_gqa)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else checks.number("scale", scale)  # a Python float
    qd, kd, vd = _group_heads(q.data, k.data, v.data, enable_gqa)  # GQA: each kv head meets its G query heads
    H = q.shape[-3] if qd.ndim > q.ndim else None  # set when the heads are grouped [.., Hkv, G, T, D]

    # 1. Scores: how well each query matches each key. Scaling by 1/sqrt(Dh) keeps their variance ~1
    #    whatever Dh, so softmax does not saturate; scaling q is cheaper than scaling the scores.
    qs = qd * scale
    scores = qs @ kd.swapaxes(-2, -1)  # [.., Tq, Dh] @ [.., Dh, Tk] -> [.., Tq, Tk]  (a fresh array)
    # 2. Mask: hidden keys get -inf, so softmax gives them exactly 0 weight.
    masked = _mask_scores(scores, attn_mask, is_causal, H)
    # 3. Softmax over the keys: each query's weights are >= 0 and sum to 1 (then dropout, if any).
    p = _safe_softmax(scores, masked)  # [.., Tq, Tk], in place
    keep = dropout_mask(p.shape, dropout_p, p.dtype, generator) if dropout_p > 0.0 else None  # 0 or 1/(1-p)
    pd = p if keep is None else p * keep
    # 4. Weighted sum of the values.
    out = pd @ vd  # [.., Tq, Tk] @ [.., Tk, Dv] -> [.., Tq, Dv]

    float_mask = attn_mask if isinstance(attn_mask, Tensor) and attn_mask.dtype.kind == "f" else None
    saved = (q, k, v, qs, kd, vd, p, pd, keep, scale, float_mask, H)
    return Tensor._make(_ungroup(out, H) if H else out, (q, k, v) + ((float_mask,) if float_mask is not None else ()),
                        lambda g: _sdpa_backward(g, *saved), "scaled_dot_product_attention")  # [.., H, Tq, Dv]
# lesson 03: end (sdpa) exercise


# lesson 03: begin (backward) exercise
def _sdpa_backward(g, q, k, v, qs, kd, vd, p, pd, keep, scale, float_mask, H):
    """g = dL/dout.  With S the scores, P = softmax(S), P' = P after dropout, out = P' v:
        dv = P'^T g          dP' = g v^T            dP = dP' * keep
        dS = P * (dP - rowsum(dP * P))               (softmax's Jacobian-vector product)
        dq = dS k * scale    dk = dS^T (q * scale)   dmask = dS
    K/V heads shared by a group of G query heads sum the G contributions (the size-1 axis)."""
    g = g.reshape(p.shape[:-1] + g.shape[-1:])  # [.., H, Tq, Dv] -> rows like the scores' [.., (Hkv, G,) Tq, Dv]
    d_pd = g @ vd.swapaxes(-2, -1)  # [.., Tq, Dv] @ [.., Dv, Tk] -> [.., Tq, Tk]
    dp = d_pd if keep is None else d_pd * keep
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))  # [.., Tq, Tk]
    grads = [
        unbroadcast((ds @ kd) * scale, qs.shape).reshape(q.shape),  # [.., Tq, Dh]
        unbroadcast(ds.swapaxes(-2, -1) @ qs, kd.shape).reshape(k.shape),  # [.., Tk, Dh]
        unbroadcast(pd.swapaxes(-2, -1) @ g, vd.shape).reshape(v.shape),  # [.., Tk, Dv]
    ]
    if float_mask is not None:
        grads.append(unbroadcast(_ungroup(ds, H) if H else ds, float_mask.shape))  # [.., H, Tq, Tk]
    return tuple(grads)
# lesson 03: end (backward) exercise


# lesson 22: begin (sdpa kernel)
_KERNEL: ContextVar = ContextVar("sdpa_kernel", default=scaled_dot_product_attention)


@contextmanager
def sdpa_kernel(kernel):
    """Inside this block, the attention layers compute attention with `kernel` instead of the definition.

    `kernel` takes scaled_dot_product_attention's arguments and must give its numbers; the runtime
    (runtime.py) passes one that skips the masked half of a long causal prompt, and
    tests/test_runtime.py proves it equal. Like torch.nn.attention.sdpa_kernel: a context, not a
    global (a ContextVar, so another thread keeps its own choice), restored on exit.
    """
    token = _KERNEL.set(kernel)
    try:
        yield kernel
    finally:
        _KERNEL.reset(token)


def attend(q, k, v, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
           enable_gqa: bool = False) -> Tensor:
    """What the attention layers call: `scaled_dot_product_attention` above, or the kernel in effect."""
    return _KERNEL.get()(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)
# lesson 22: end (sdpa kernel)
