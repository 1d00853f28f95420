"""Sinusoidal positional encoding ("Attention Is All You Need", section 3.5), lesson 07.

Before RoPE, a position was a vector *added* to the token embedding:

    PE[p, 2i]     = sin(p / base^(2i / C))
    PE[p, 2i + 1] = cos(p / base^(2i / C))

Each pair of columns is a clock running at its own speed (the same frequencies RoPE uses);
PE[p + k] is a fixed rotation of PE[p], which is what lets attention learn relative offsets.
"""
from __future__ import annotations

import numpy as np

from ..errors import ContextLengthError, ShapeError
from ..tensor import Tensor
from .module import Module


# lesson 07: begin (sinusoidal) exercise
def sinusoidal_positional_encoding(max_len: int, d_model: int, base: float = 10000.0, dtype=np.float32) -> np.ndarray:
    """The table PE [max_len, d_model] (computed in float64, returned in `dtype`)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]  # [max_len, 1]
    inv_freq = base ** (-np.arange(0, d_model, 2, dtype=np.float64) / d_model)  # [ceil(C/2)]
    angles = pos * inv_freq  # [max_len, ceil(C/2)]
    pe = np.zeros((max_len, d_model), dtype=np.float64)
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles[:, : d_model // 2])  # an odd C has one more sin column than cos
    return pe.astype(dtype)
# lesson 07: end (sinusoidal) exercise


class SinusoidalPositionalEncoding(Module):
    """x [B, T, C] -> x + PE[offset : offset + T] (then dropout). No parameters; the table is fixed."""

    def __init__(self, d_model: int, max_len: int = 5000, base: float = 10000.0, dropout: float = 0.0):
        super().__init__()
        from .activation import Dropout

        self.d_model, self.max_len, self.base = d_model, max_len, base
        self.dropout = Dropout(dropout)
        self._pe = {}  # dtype -> table

    def table(self, dtype=np.float32) -> np.ndarray:
        dtype = np.dtype(dtype)
        if dtype not in self._pe:
            self._pe[dtype] = sinusoidal_positional_encoding(self.max_len, self.d_model, self.base, dtype)
        return self._pe[dtype]

    def forward(self, x, offset: int = 0) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(x)
        T = x.shape[-2]
        if x.shape[-1] != self.d_model:
            raise ShapeError(f"SinusoidalPositionalEncoding(d_model={self.d_model}) got x of shape {x.shape}")
        if offset + T > self.max_len:
            raise ContextLengthError(f"positions up to {offset + T - 1} exceed max_len={self.max_len}")
        return self.dropout(x + self.table(x.dtype)[offset:offset + T])  # [B, T, C] + [T, C]

    def extra_repr(self):
        return f"d_model={self.d_model}, max_len={self.max_len}"
