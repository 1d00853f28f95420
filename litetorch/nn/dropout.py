"""Dropout: zero a random fraction p of the values while training, scale the rest by 1/(1-p).

Inverted dropout keeps the expected value of every element unchanged, so evaluation needs no
rescaling. The mask is its own function because attention draws one for its weights too
(`scaled_dot_product_attention(dropout_p=...)` makes the same draw as `dropout` on [.., H, Tq, Tk]).
"""
from __future__ import annotations

import numpy as np

from ..random import _gen
from ..tensor import Tensor
from ..errors import ConfigError


def dropout_mask(shape, p: float, dtype, generator=None) -> np.ndarray:
    """The multiplier of inverted dropout: 0 with probability p, else 1/(1-p) (all 0 when p = 1)."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"dropout probability must be in [0, 1], got {p}")
    if p == 1.0:
        return np.zeros(shape, dtype=dtype)
    return ((_gen(generator).random(shape) >= p) / (1.0 - p)).astype(dtype)


def dropout(x: Tensor, p: float = 0.5, training: bool = True, generator=None) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout),
    so the expected value is unchanged and eval mode needs no rescaling."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return x * Tensor(dropout_mask(x.shape, p, x.dtype, generator))
