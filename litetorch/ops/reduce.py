"""Reductions: sum mean max min var, over all elements or along `dim` (torch names; `axis` works too).

Backward of a reduction broadcasts the output gradient back over the reduced axes; `keepdim`
is re-inserted first so shapes line up.
"""
import math
import numbers

import numpy as np

from ..tensor import Tensor


def _axes(x: Tensor, dim, axis):
    d = axis if dim is None else dim
    if d is None:
        return None
    d = (d,) if isinstance(d, numbers.Integral) else tuple(d)  # numbers.Integral: np.int64 too
    return tuple(a % x.ndim if x.ndim else 0 for a in d)


def _expand_back(g: np.ndarray, x: Tensor, axes, keepdim: bool) -> np.ndarray:
    """Re-insert reduced axes (size 1) so `g` broadcasts against x."""
    if axes is None:
        return np.broadcast_to(g.reshape((1,) * x.ndim), x.shape) if not keepdim else np.broadcast_to(g, x.shape)
    if not keepdim:
        g = np.expand_dims(g, axes)
    return np.broadcast_to(g, x.shape)


def sum(x: Tensor, dim=None, keepdim: bool = False, *, axis=None, keepdims=None) -> Tensor:
    keepdim = keepdims if keepdims is not None else keepdim
    axes = _axes(x, dim, axis)
    out = np.sum(x.data, axis=axes, keepdims=keepdim)
    return Tensor._make(np.asarray(out), (x,), lambda g: (_expand_back(g, x, axes, keepdim),), "sum")


def mean(x: Tensor, dim=None, keepdim: bool = False, *, axis=None, keepdims=None) -> Tensor:
    keepdim = keepdims if keepdims is not None else keepdim
    axes = _axes(x, dim, axis)
    n = x.data.size if axes is None else math.prod(x.shape[a] for a in axes)
    # sum / n (what np.mean does, without its ~20 µs of bookkeeping: this runs 61 times per token)
    out = np.asarray(np.add.reduce(x.data, axis=axes, keepdims=keepdim) / float(n))
    if out.dtype != x.dtype and x.dtype.kind == "f":
        out = out.astype(x.dtype)
    return Tensor._make(out, (x,), lambda g: (_expand_back(g / n, x, axes, keepdim),), "mean")


# lesson 01: begin (amax) exercise
def max(x: Tensor, dim=None, keepdim: bool = False, *, axis=None, keepdims=None) -> Tensor:
    """Largest value (torch.amax semantics): on ties the gradient is shared equally."""
    keepdim = keepdims if keepdims is not None else keepdim
    axes = _axes(x, dim, axis)
    out = np.max(x.data, axis=axes, keepdims=keepdim)

    def backward(g):
        full = _expand_back(np.asarray(out), x, axes, keepdim)
        mask = (x.data == full).astype(x.dtype)
        count = _expand_back(np.asarray(np.sum(mask, axis=axes, keepdims=keepdim)), x, axes, keepdim)
        return (_expand_back(g, x, axes, keepdim) * mask / count,)

    return Tensor._make(np.asarray(out), (x,), backward, "max")
# lesson 01: end (amax) exercise


def min(x: Tensor, dim=None, keepdim: bool = False, *, axis=None, keepdims=None) -> Tensor:
    from .arithmetic import neg

    return neg(max(neg(x), dim, keepdim, axis=axis, keepdims=keepdims))


def var(x: Tensor, dim=None, keepdim: bool = False, *, correction: int = 1, unbiased=None,
        axis=None, keepdims=None) -> Tensor:
    """Variance with Bessel's `correction` (torch default 1: divide by N - 1)."""
    keepdim = keepdims if keepdims is not None else keepdim
    if unbiased is not None:
        correction = 1 if unbiased else 0
    axes = _axes(x, dim, axis)
    n = x.data.size if axes is None else math.prod(x.shape[a] for a in axes)
    mu = np.mean(x.data, axis=axes, keepdims=True)
    centered = x.data - mu
    denom = float(n - correction)
    out = np.sum(centered * centered, axis=axes, keepdims=keepdim) / denom

    def backward(g):
        # d/dx_i sum_j (x_j - mu)^2 / D = 2 (x_i - mu) / D   (the mu-terms cancel: sum of centered = 0)
        return (_expand_back(g, x, axes, keepdim) * (2.0 / denom) * centered,)

    return Tensor._make(np.asarray(out, dtype=x.dtype), (x,), backward, "var")


def argmax(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """Index of the largest value (no gradient: an index is not differentiable)."""
    out = np.argmax(x.data, axis=dim, keepdims=keepdim) if dim is not None else np.argmax(x.data)
    return Tensor(np.asarray(out, dtype=np.int64))
