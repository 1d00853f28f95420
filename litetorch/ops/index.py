"""Indexing (slices and integer-array gathers), index_add, where, masked_fill.

Gather's backward is a *scatter-add*: if id 7 appears three times in a batch, embedding row 7
was used three times and must receive the sum of three gradients (`np.add.at`, not `g[idx] = ...`,
which would keep only the last one).
"""
import numpy as np

from ..errors import DTypeError, ShapeError
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


def index_add(x: Tensor, dim: int, index, source: Tensor) -> Tensor:
    """torch.index_add, out of place: a copy of x with slice i of `source` added at position index[i] along `dim`.

    x [..., N, ...], index [n] ints in 0..N-1, source [..., n, ...] (x's shape with N replaced by n).
    A repeated index receives the sum of its slices (`np.add.at`). This is the *combine* step of a
    mixture of experts: each expert's output rows go back to the tokens they came from.
        dL/dx = g                   (x passes through unchanged)
        dL/dsource = g[index]       (each source slice reads the gradient of the row it was added to)
    """
    idx = np.array(index.data if isinstance(index, Tensor) else index)  # a copy: the backward needs it as it was
    if idx.size == 0:
        idx = idx.astype(np.int64)  # np.array([]) is float64; an empty index adds nothing
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise ShapeError(f"index_add: index must be a 1-D array of integers, got shape {idx.shape}, dtype {idx.dtype}")
    d = dim % x.ndim
    expected = x.shape[:d] + (len(idx),) + x.shape[d + 1:]
    if source.shape != expected:
        raise ShapeError(f"index_add: source has shape {source.shape}, expected {expected} "
                         f"(x {x.shape} with dim {dim} of size len(index) = {len(idx)})")
    if source.dtype != x.dtype:
        raise DTypeError(f"index_add: source has dtype {source.dtype}, expected x's {x.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= x.shape[d]):
        raise ShapeError(f"index_add: index values must lie in [0, {x.shape[d]}), got {idx.min()}..{idx.max()}")
    lead = (slice(None),) * d
    out = x.data.copy()
    np.add.at(out, lead + (idx,), source.data)  # repeated indices accumulate
    return Tensor._make(out, (x, source), lambda g: (g, np.take(g, idx, axis=d)), "index_add")
