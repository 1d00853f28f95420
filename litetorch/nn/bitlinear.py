"""BitLinear b1.58: ternary weights {-1, 0, +1} and 8-bit activations, trained with a straight-through
estimator, lesson 21.

BitNet b1.58 (Ma et al. 2024, "The Era of 1-bit LLMs", arXiv 2402.17764) replaces every `nn.Linear`
of a transformer block with a layer whose weights, in the forward pass, take only three values
(times one scale per matrix) and whose inputs are quantized to 8 bits per token:

    x_n = RMSNorm(x)                                  (no affine weight: a fresh norm inside the layer)
    s_x = 127 / max(|x_n|)    per token               x_q = clamp(round(x_n s_x), -128, 127) / s_x
    s_w = 1 / mean(|W|)       per tensor ("absmean")  W_q = clamp(round(W s_w), -1, 1) / s_w
    y   = x_q W_q^T

`round` is round-half-to-even, as both `np.round` and `torch.round` do (2.5 -> 2, 0.5 -> 0).

The rounding has zero gradient almost everywhere, so training uses the straight-through estimator
(STE): the forward uses q(x), the backward pretends q was the identity,

    x_ste = x + stopgrad(q(x) - x)      # value q(x), gradient d/dx = 1

The full-precision W is the parameter the optimizer updates; W_q is recomputed from it each step.
(The paper also describes a deployment path with packed ternary weights and integer kernels; this
file is the *training* view: same numbers, float arithmetic.)
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..random import _gen
from ..tensor import Parameter, Tensor, get_default_dtype
from . import functional as F
from .module import Module


# lesson 21: begin
# lesson 21: begin (ste) exercise
def ste(x: Tensor, q: np.ndarray) -> Tensor:
    """Straight-through estimator: the value of q, the gradient of the identity.

    x + stopgrad(q - x): the forward equals q (up to one rounding of the add/sub), the backward
    passes the incoming gradient to x unchanged.
    """
    return x + Tensor(q - x.data)  # Tensor(...) holds no graph: that is the stop-gradient
# lesson 21: end (ste) exercise


# lesson 21: begin (activation_quant) exercise
def activation_quant(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """Per-token absmax quantization to signed `bits`-bit integers, returned dequantized. [..., C] -> [..., C]."""
    qmax = float(2 ** (bits - 1) - 1)  # 127
    absmax = np.maximum(np.abs(x).max(axis=-1, keepdims=True), x.dtype.type(1e-5))  # [..., 1]
    scale = x.dtype.type(qmax) / absmax  # 127 / max|x| per token: the largest entry maps to +-127
    return np.clip(np.round(x * scale), -qmax - 1.0, qmax).astype(x.dtype) / scale
# lesson 21: end (activation_quant) exercise


# lesson 21: begin (weight_quant) exercise
def weight_quant(w: np.ndarray) -> np.ndarray:
    """Per-tensor absmean ternary quantization, returned dequantized: entries in {-1, 0, +1} * mean|W|."""
    scale = w.dtype.type(1.0) / np.maximum(np.abs(w).mean(), w.dtype.type(1e-5))  # 1 / mean|W|
    return np.clip(np.round(w * scale), -1.0, 1.0).astype(w.dtype) / scale
# lesson 21: end (weight_quant) exercise


class BitLinear(Module):
    """x [..., in] -> [..., out], with ternary weights and 8-bit activations in the forward pass.

    A drop-in for `Linear` (same `weight [out, in]` and `bias` names, same init), so a block can
    use it in place of any projection (`LoopConfig(bitlinear=True)` does it for the shared block).
    `out_splits`: for a fused projection (attention's `qkv_proj`, SwiGLU's `gate_up_proj`), the row
    counts of the matrices it stacks; each gets its own absmean scale, as separate BitLinears would.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype=None, generator=None,
                 eps: float = 1e-5, act_bits: int = 8, out_splits=None):
        super().__init__()
        self.in_features, self.out_features, self.eps, self.act_bits = in_features, out_features, eps, act_bits
        self.out_splits = tuple(out_splits) if out_splits is not None else (out_features,)
        if sum(self.out_splits) != out_features or min(self.out_splits) < 1:
            raise ShapeError(f"out_splits {self.out_splits} must be positive row counts summing to "
                             f"out_features={out_features}")
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        bound = 1.0 / math.sqrt(in_features)
        rng = _gen(generator)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(rng.uniform(-bound, bound, (out_features,)).astype(dtype)) if bias else None

    # lesson 21: begin (BitLinear.forward) exercise
    def forward(self, x) -> Tensor:
        x_n = F.rms_norm(x, (self.in_features,), None, self.eps)  # [..., in], no affine weight
        x_q = ste(x_n, activation_quant(x_n.data, self.act_bits))  # 8-bit values, identity gradient
        blocks = np.split(self.weight.data, np.cumsum(self.out_splits)[:-1])  # one matrix per scale
        w_q = ste(self.weight, np.concatenate([weight_quant(w) for w in blocks]))  # ternary * scale
        return F.linear(x_q, w_q, self.bias)  # [..., in] @ [in, out] -> [..., out]
    # lesson 21: end (BitLinear.forward) exercise
# lesson 21: end

    def ternary_weight(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored form: an int8 matrix in {-1, 0, 1} [out, in] and one float scale mean|W| per matrix
        it stacks ([len(out_splits)]), so that W_q = T * scale row block by row block."""
        ternary, scales = [], []
        for w in np.split(self.weight.data, np.cumsum(self.out_splits)[:-1]):
            gamma = max(float(np.abs(w).mean()), 1e-5)
            ternary.append(np.clip(np.round(w * (w.dtype.type(1.0) / w.dtype.type(gamma))), -1, 1).astype(np.int8))
            scales.append(gamma)
        return np.concatenate(ternary), np.asarray(scales)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
