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
Deployment (`PackedBitLinear`): after training only W_q is needed, and W_q is a ternary matrix T times
one scale per matrix, so it is stored as 2 bits per weight (`pack_ternary`: four weights per byte)
plus the scales: 16x less than float32. Its forward unpacks T, divides by the scale and runs the same
lines as BitLinear's, so its logits equal the float path's exactly (the STE below is exact for that).
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

    torch writes it x + stopgrad(q - x), whose value is q up to one rounding of the add and the
    subtract. Here the op records q itself and a backward that passes the incoming gradient to x
    unchanged: the forward is q *exactly*, so the packed form (which only has q) computes the same
    numbers to the last bit.
    """
    return Tensor._make(np.asarray(q, dtype=x.dtype), (x,), lambda g: (g,), "ste")
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
        """The stored form: an int8 matrix T in {-1, 0, 1} [out, in] and, per matrix it stacks, the scale
        s = 1 / mean|W| that `weight_quant` divides by ([len(out_splits)], the weight's dtype), so that
        W_q = T / s row block by row block, to the bit."""
        ternary, scales = [], []
        for w in np.split(self.weight.data, np.cumsum(self.out_splits)[:-1]):
            s = w.dtype.type(1.0) / np.maximum(np.abs(w).mean(), w.dtype.type(1e-5))  # as weight_quant
            ternary.append(np.clip(np.round(w * s), -1.0, 1.0).astype(np.int8))
            scales.append(s)
        return np.concatenate(ternary), np.asarray(scales, dtype=self.weight.dtype)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# --------------------------------------------------------------------------------------------
# Deployment: 2 bits per weight
# --------------------------------------------------------------------------------------------
# lesson 21: begin (packing)
def pack_ternary(T: np.ndarray) -> np.ndarray:
    """[out, in] int8 in {-1, 0, 1} -> [out, ceil(in / 4)] uint8, four weights per byte.

    Weight j of a row is stored as the code T + 1 (0, 1 or 2) in bits 2 (j mod 4) .. 2 (j mod 4) + 1 of
    byte j // 4: the first weight in the lowest two bits. (A row whose length is not a multiple of 4 is
    padded with code 1, a zero weight.)
    """
    T = np.asarray(T)
    if T.ndim != 2 or T.dtype.kind not in "iu" or (T.size and (T.min() < -1 or T.max() > 1)):
        raise ShapeError(f"pack_ternary: T must be an integer matrix [out, in] with values in {{-1, 0, 1}}, "
                         f"got shape {T.shape} dtype {T.dtype}")
    out, n = T.shape
    codes = np.ones((out, -(-n // 4) * 4), dtype=np.uint8)  # code 1 = weight 0 (the padding)
    codes[:, :n] = T + 1
    codes = codes.reshape(out, -1, 4)  # [out, in/4, 4]: the four weights of each byte
    return codes[..., 0] | (codes[..., 1] << 2) | (codes[..., 2] << 4) | (codes[..., 3] << 6)


def unpack_ternary(packed: np.ndarray, in_features: int) -> np.ndarray:
    """[out, ceil(in / 4)] uint8 -> [out, in] int8 in {-1, 0, 1}: the inverse of `pack_ternary`."""
    codes = (packed[..., None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3  # [out, in/4, 4]
    return codes.reshape(packed.shape[0], -1)[:, :in_features].astype(np.int8) - 1  # [out, in]
# lesson 21: end (packing)


class PackedBitLinear(Module):
    """BitLinear's deployment form: x [..., in] -> [..., out] with the weights stored in 2 bits each.

    Buffers (no float latent weights): `weight_packed` [out, ceil(in/4)] uint8 (`pack_ternary`) and
    `weight_scale` [len(out_splits)] (s = 1 / mean|W| of each stacked matrix, W_q = T / s); `bias` as
    BitLinear's. Built from a trained layer with `PackedBitLinear.from_bitlinear(layer)`, or empty
    (zeros) to be filled by `load_state_dict`. The forward is BitLinear's with W_q unpacked: the same
    numbers to the bit.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype=None, eps: float = 1e-5,
                 act_bits: int = 8, out_splits=None):
        super().__init__()
        self.in_features, self.out_features, self.eps, self.act_bits = in_features, out_features, eps, act_bits
        self.out_splits = tuple(out_splits) if out_splits is not None else (out_features,)
        if sum(self.out_splits) != out_features or min(self.out_splits) < 1:
            raise ShapeError(f"out_splits {self.out_splits} must be positive row counts summing to "
                             f"out_features={out_features}")
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.register_buffer("weight_packed", np.full((out_features, -(-in_features // 4)), 0x55, dtype=np.uint8))
        self.register_buffer("weight_scale", np.ones(len(self.out_splits), dtype=dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_bitlinear(cls, layer: BitLinear) -> "PackedBitLinear":
        packed = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=layer.weight.dtype,
                     eps=layer.eps, act_bits=layer.act_bits, out_splits=layer.out_splits)
        T, scales = layer.ternary_weight()
        packed.weight_packed, packed.weight_scale = pack_ternary(T), scales
        if layer.bias is not None:
            packed.bias = Parameter(layer.bias.data.copy())
        return packed

    def ternary(self) -> np.ndarray:
        """T [out, in] int8 in {-1, 0, 1}."""
        return unpack_ternary(self.weight_packed, self.in_features)

    def dequantized_weight(self) -> np.ndarray:
        """W_q [out, in] = T / s, block by block: what `weight_quant` gives the float path, to the bit."""
        dtype = self.weight_scale.dtype
        blocks = np.split(self.ternary(), np.cumsum(self.out_splits)[:-1])
        return np.concatenate([t.astype(dtype) / s for t, s in zip(blocks, self.weight_scale)])

    def forward(self, x) -> Tensor:
        x_n = F.rms_norm(x, (self.in_features,), None, self.eps)  # [..., in], no affine weight
        x_q = ste(x_n, activation_quant(x_n.data, self.act_bits))  # 8-bit values, as BitLinear's
        return F.linear(x_q, Tensor(self.dequantized_weight()), self.bias)  # W_q unpacked: a constant

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weights and scales (the bias not counted)."""
        return self.weight_packed.nbytes + self.weight_scale.nbytes

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"packed 2 bits/weight")
