"""Fused projections: several Linear layers that read the same input, run as one matmul (lesson 22).

Q, K and V all multiply the same x; so do SwiGLU's gate and up. Stacking their weights
[out_1 + out_2 + ..., in] turns several small matrix-vector products into one larger one: one
BLAS call and one graph node instead of three, which matters when decoding one token at a time
(each call costs ~10-30 µs of fixed overhead whatever its size).

The weights are kept *once*: after stacking, each Linear's `weight.data` becomes a view into the
stack (`np.shares_memory`), so the model's memory does not grow. If anything replaces a weight
(`load_state_dict`, `.to(float64)`, an optimizer writing a new array) the view check fails and
the stack is rebuilt on the next call, so the fused path can never run on stale weights.

Only the inference path uses it (under `no_grad`, and without biases); training keeps the
separate Linears, whose gradients autograd handles one by one, and so does `debug.capture`
when it records a projection's output.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..tensor import Tensor, is_grad_enabled
from . import functional as F


ENABLED = True  # lessons flip this to measure the unfused path (same numbers, slower)


class FusedLinear:
    """Runs `linears` (sharing one input) as one matmul; returns their outputs split apart."""

    def __init__(self, *linears):
        self.linears = linears
        self.sizes = [lin.out_features for lin in linears]
        self.stacked: np.ndarray | None = None
        self._stacked_tensor: Tensor | None = None  # the stack wrapped once, not on every call

    def usable(self) -> bool:
        # Not while training (autograd needs the separate Linears), not with biases, and not while
        # someone watches a projection (`debug.capture` wraps its forward): then it must really run.
        if not ENABLED or is_grad_enabled():
            return False
        for lin in self.linears:
            if lin.bias is not None or "forward" in lin.__dict__:
                return False
        return True

    def _weight(self) -> np.ndarray:
        W = self.stacked
        stale = W is None
        for lin in self.linears:
            stale = stale or lin.weight.data.base is not W
        if stale:
            # (Re)build: stack the current weights, then make each Parameter a view of its rows.
            W = np.concatenate([lin.weight.data for lin in self.linears], axis=0)  # [sum(out), in]
            start = 0
            for lin, n in zip(self.linears, self.sizes):
                lin.weight.data = W[start:start + n]  # a view: the weights exist once
                start += n
            self.stacked, self._stacked_tensor = W, Tensor(W)
        return W

    def matmul(self, x: Tensor) -> Tensor:
        """All the projections of x in one matmul: [..., in] -> [..., sum(out)], the outputs side by side."""
        self._weight()  # (rebuilds the stack if a weight was replaced)
        return F.linear(x, self._stacked_tensor)

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        return ops.split(self.matmul(x), self.sizes, dim=-1)  # views [..., out_i], one per Linear
