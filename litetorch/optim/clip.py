"""Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_).

All gradients are treated as one long vector. If its norm exceeds `max_norm`, every gradient is
scaled by the same factor, so the *direction* of the update is kept and only its length is capped:

    total = || (g_1, ..., g_n) ||_p  =  || (||g_1||_p, ..., ||g_n||_p) ||_p
    g_i  <- g_i * min(1, max_norm / (total + 1e-6))

The 1e-6 keeps the division finite for an all-zero gradient (and makes the factor slightly
below 1 when total == max_norm), exactly as torch.
"""
from __future__ import annotations

import math

import numpy as np

from ..tensor import Tensor
from ..errors import StateError


# lesson 02: begin (clip) exercise
def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> Tensor:
    """Scale the gradients of `parameters` in place so their global norm is at most `max_norm`.

    Returns the total norm *before* clipping, as a 0-d Tensor in the gradients' dtype (like
    torch; call `.item()` for a Python float). Parameters without a gradient are ignored.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return Tensor(np.zeros((), dtype=np.float32))
    norm_type = float(norm_type)
    dtype = grads[0].dtype
    norms = np.array([_vector_norm(g, norm_type) for g in grads], dtype=dtype)  # one norm per tensor
    total = _vector_norm(norms, norm_type)  # the norm of the norms = the norm of everything
    if error_if_nonfinite and not np.isfinite(total):
        raise StateError(f"the total norm of order {norm_type} of the gradients is non-finite ({total}), "
                         f"so it cannot be clipped; pass error_if_nonfinite=False to scale by it anyway")
    coef = np.minimum(dtype.type(max_norm) / (total + 1e-6), 1.0)  # computed in the grads' dtype, as torch
    for p in params:
        if p.grad is not None:
            p.grad *= coef  # in place, like torch; applied even when coef == 1 (torch does the same)
    return Tensor(np.asarray(total, dtype=dtype))
# lesson 02: end (clip) exercise


def _vector_norm(x: np.ndarray, p: float):
    """||x||_p of all elements, in x's dtype (p = inf: max |x|; p = 0: count of non-zeros)."""
    x = x.ravel()
    if x.size == 0:
        return x.dtype.type(0)
    if p == math.inf:
        return np.max(np.abs(x))
    if p == -math.inf:
        return np.min(np.abs(x))
    if p == 0.0:
        return x.dtype.type(np.count_nonzero(x))
    if p == 2.0:
        return np.sqrt(np.dot(x, x))
    if p == 1.0:
        return np.sum(np.abs(x))
    return np.sum(np.abs(x) ** p) ** (1.0 / p)
