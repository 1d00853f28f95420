"""Indexing (slices and integer-array gathers), where, masked_fill.

Gather's backward is a *scatter-add*: if id 7 appears three times in a batch, embedding row 7
was used three times and must receive the sum of three gradients (`np.add.at`, not `g[idx] = ...`,
which would keep only the last one).
"""
import numpy as np

from ..errors import ShapeError
from ..tensor import Tensor, _promote, as_tensor, unbroadcast


_BASIC = (int, np.integer, slice, type(None), type(Ellipsis))


def _is_basic(idx) -> bool:
    """Slices/ints/None/Ellipsis only: every element is picked at most once."""
    if not isinstance(idx, tuple):
        return isinstance(idx, _BASIC)
    for i in idx:  # (a plain loop: this runs for every `split` piece of every decode step)
        if not isinstance(i, _BASIC):
            return False
    return True


def _unwrap_one(i):
    if isinstance(i, Tensor):
        i = i.data
    return np.array(i) if isinstance(i, (np.ndarray, list)) else i


def _unwrap(idx):
    """Index arrays are copied: the backward must scatter to the positions used in the forward,
    even if the caller reuses (edits) its index array afterwards."""
    return tuple(_unwrap_one(i) for i in idx) if isinstance(idx, tuple) else _unwrap_one(idx)


def getitem(x: Tensor, idx) -> Tensor:
    basic = _is_basic(idx)
    if not basic:  # (slices and ints need no unwrapping: the common case, e.g. every `split`)
        idx = _unwrap(idx)
    try:
        out = x.data[idx]
    except IndexError as e:
        raise ShapeError(f"index out of range for tensor of shape {x.shape}: {e}") from None

    def backward(g):
        gx = np.zeros_like(x.data)
        if basic:
            gx[idx] = g
        else:
            np.add.at(gx, idx, g)  # repeated indices accumulate
        return (gx,)

    # A full integer index gives a NumPy scalar; wrap it as a 0-d array (a copy, so no aliasing).
    return Tensor._make(out if isinstance(out, np.ndarray) else np.asarray(out), (x,), backward, "getitem")


def where(cond, a, b) -> Tensor:
    """Elementwise `a if cond else b` (cond is a bool array or tensor; broadcasting applies)."""
    # a copy: the backward must see the condition as it was, even if the caller edits it later
    c = np.array(cond.data if isinstance(cond, Tensor) else cond, dtype=bool, copy=True)
    if isinstance(a, Tensor):
        b = as_tensor(b, like=a)
    else:
        a = as_tensor(a, like=b)
    a, b = _promote(a, b)
    out = np.where(c, a.data, b.data)

    def backward(g):
        ga = unbroadcast(np.where(c, g, 0).astype(g.dtype, copy=False), a.shape) if a.requires_grad else None
        gb = unbroadcast(np.where(c, 0, g).astype(g.dtype, copy=False), b.shape) if b.requires_grad else None
        return ga, gb

    return Tensor._make(out, (a, b), backward, "where")


def masked_fill(x: Tensor, mask, value) -> Tensor:
    """Put `value` where `mask` is True (mask broadcasts to x); no gradient flows to filled places."""
    m = np.array(mask.data if isinstance(mask, Tensor) else mask, copy=True)  # snapshot for backward
    if m.dtype != np.bool_:
        raise ShapeError(f"masked_fill mask must be bool, got dtype {m.dtype}")
    try:
        np.broadcast_shapes(m.shape, x.shape)
    except ValueError:
        raise ShapeError(f"masked_fill mask of shape {m.shape} does not broadcast to {x.shape}") from None
    if np.broadcast_shapes(m.shape, x.shape) != x.shape:
        raise ShapeError(f"masked_fill mask of shape {m.shape} would enlarge the tensor of shape {x.shape}")
    out = np.where(m, np.asarray(value, dtype=x.dtype), x.data)
    return Tensor._make(out, (x,), lambda g: (np.where(m, 0, g).astype(g.dtype, copy=False),), "masked_fill")
