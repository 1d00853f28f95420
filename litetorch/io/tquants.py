"""TQ2_0, llama.cpp's ternary block type (2 bits per weight), quantized and dequantized in NumPy. Lesson 21.

    type    weights/block  bytes/block  layout (little-endian)                         weight
    TQ2_0   256            66           qs: 64 bytes of 2-bit codes | d: fp16           w = d * (code - 1)

Each block of 256 weights is two groups of 128. In group g (0 or 1), byte g*32 + l holds four weights,
one per pair of bits: weight g*128 + k*32 + l in bits 2k, 2k+1 (k = 0..3). The codes 0, 1, 2 stand for
-1, 0, +1. The quantizer picks d = max|w| of the block and code = roundf(w / d) + 1 (C's roundf:
half away from zero), as `quantize_row_tq2_0_ref` in ggml-quants.c and `gguf.quants.TQ2_0`; the bytes
are equal to the gguf package's (tests/test_ternary_pack.py).

A BitNet b1.58 matrix is T * (one scale per matrix) with T in {-1, 0, 1}. Written as TQ2_0 from T
itself, every block gets d = 1 (0 for an all-zero block), fp16-exact, so the file holds T exactly; the
float32 scale is stored beside it as its own tensor (a per-block fp16 d could not hold it exactly).
"""
from __future__ import annotations

import numpy as np

from litetorch.errors import ShapeError

QK_K = 256  # weights per TQ2_0 block
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: half away from zero."""
    return np.copysign(np.floor(np.abs(x) + np.float32(0.5)), x)


def quantize_tq2_0(x: np.ndarray) -> np.ndarray:
    """float [..., K] (K a multiple of 256) -> TQ2_0 bytes [..., K // 256 * 66]."""
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] % QK_K:
        raise ShapeError(f"TQ2_0 quantizes rows in blocks of {QK_K}; the last dimension must be a multiple of "
                         f"{QK_K}, got shape {x.shape}")
    lead = x.shape[:-1]
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK_K)  # [n, 256]
    d = np.abs(blocks).max(axis=1, keepdims=True)  # [n, 1]
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0)
    codes = (_roundf(blocks * inv).astype(np.int8) + 1).astype(np.uint8)  # [n, 256] in 0..2
    codes = codes.reshape(-1, 2, 4, 32) << _SHIFTS.reshape(1, 1, 4, 1)  # [n, group, k, l]
    qs = (codes[:, :, 0] | codes[:, :, 1] | codes[:, :, 2] | codes[:, :, 3]).reshape(-1, 64)  # [n, 64]
    out = np.concatenate([qs, d.astype("<f2").view(np.uint8)], axis=1)  # [n, 66]
    return out.reshape(*lead, -1)


def dequantize_tq2_0(blocks: np.ndarray) -> np.ndarray:
    """TQ2_0: [n, 66] uint8 -> [n, 256] float32."""
    d = blocks[:, 64:66].view("<f2").astype(np.float32)  # [n, 1]
    qs = blocks[:, :64].reshape(-1, 2, 1, 32) >> _SHIFTS.reshape(1, 1, 4, 1)  # [n, group, k, l]
    codes = (qs & 3).reshape(-1, QK_K).astype(np.int8) - 1  # [n, 256] in -1..1
    return d * codes.astype(np.float32)


DEQUANTIZERS = {"TQ2_0": dequantize_tq2_0}
QUANTIZERS = {"TQ2_0": quantize_tq2_0}
