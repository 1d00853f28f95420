"""Two ways to make a doubly stochastic matrix, the residual mixing of mHC and mHC-lite. Lesson 27.

A doubly stochastic matrix has entries >= 0 and every row and every column summing to 1. The set of
them (the Birkhoff polytope) is closed under products, and each one is a convex combination of
permutation matrices (Birkhoff-von Neumann). Mixing n residual streams with such a matrix moves signal
between the streams but cannot create or destroy it: the mean over the streams is kept, and no
product of them, however long, has a row or column sum other than 1.

- `sinkhorn_knopp(logits, n_iters)`: mHC's projection (Xie et al. 2025, arXiv 2512.24880, eq. 9).
  Start from M = exp(logits) and alternately divide every column by its sum and every row by its sum.
  Exact only in the limit; `n_iters` iterations get close (see the docstring for how close).
- `permutation_matrices(n)`: the n! vertices of the polytope, for mHC-lite (Yang & Gao 2026,
  arXiv 2601.05732), which writes H_res = sum_k a_k P_k with softmax weights a: exact by construction.

Everything is built from litetorch ops, so autograd differentiates through every iteration.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .. import checks
from ..errors import DTypeError, ShapeError
from ..tensor import Tensor


# lesson 27: begin (sinkhorn)
def sinkhorn_knopp(logits: Tensor, n_iters: int = 20) -> Tensor:
    """mHC's Sinkhorn-Knopp projection (eq. 9): logits [..., n, n] -> M [..., n, n], nearly doubly stochastic.

        M(0) = exp(logits);   M(t) = T_r(T_c(M(t-1))),  t = 1 .. n_iters
    T_c divides every column by its sum, T_r every row by its sum. mHC uses n_iters = t_max = 20.

    How close: the last step is T_r, so every row sums to 1 to rounding (~n ulp). The columns converge
    geometrically, at a rate set by the spread of the logits. With every logit in [-1, 1] (a spread of
    2), 20 iterations leave every column sum within 1e-7 of 1 for n = 2, 1e-9 for n = 3 and 1e-11 for
    4 <= n <= 8 (float64; tests/test_hyper.py checks this on 2000 random matrices per n). A spread of
    8 still leaves ~1e-2 after 20 iterations: that gap is what mHC-lite's exact construction removes.
    """
    logits = logits if isinstance(logits, Tensor) else Tensor(logits)
    if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ShapeError(f"sinkhorn_knopp: logits must be [..., n, n] (square in the last two dims), "
                         f"got shape {logits.shape}")
    if logits.dtype.kind != "f":
        raise DTypeError(f"sinkhorn_knopp: logits must be floating point, got dtype {logits.dtype}")
    n_iters = checks.integer("n_iters", n_iters, lo=1)
    # exp(logits - max) is exp(logits) times one constant per matrix, which the first T_c divides away;
    # subtracting it only keeps exp from overflowing (the max carries no gradient because it cancels).
    M = (logits - logits.data.max(axis=(-2, -1), keepdims=True)).exp()  # [..., n, n], every entry > 0
    for _ in range(n_iters):
        M = M / M.sum(dim=-2, keepdim=True)  # T_c: every column sums to 1
        M = M / M.sum(dim=-1, keepdim=True)  # T_r: every row sums to 1
    return M
# lesson 27: end (sinkhorn)


def permutation_matrices(n: int, dtype=np.float64) -> np.ndarray:
    """The n! permutation matrices of size n, [n!, n, n], in itertools order (the identity first).

    P_k[i, j] = 1 where j = perm_k[i]: row i of P_k x is row perm_k[i] of x.
    """
    n = checks.positive_int("n", n)
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)  # [n!, n]
    out = np.zeros((math.factorial(n), n, n), dtype=dtype)
    out[np.arange(len(perms))[:, None], np.arange(n)[None, :], perms] = 1.0
    return out
