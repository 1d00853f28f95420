"""Elementwise functions: exp log sqrt rsqrt tanh sigmoid relu silu gelu abs clamp.

Each local derivative is written next to its forward, reusing the forward's output where the
calculus allows (exp' = exp, tanh' = 1 - tanh^2, sigmoid' = s(1 - s)).
"""
import math

import numpy as np

from ..tensor import Tensor
from ..errors import ConfigError


def exp(x: Tensor) -> Tensor:
    out = np.exp(x.data)
    return Tensor._make(out, (x,), lambda g: (g * out,), "exp")


def log(x: Tensor) -> Tensor:
    return Tensor._make(np.log(x.data), (x,), lambda g: (g / x.data,), "log")


def sqrt(x: Tensor) -> Tensor:
    out = np.sqrt(x.data)
    return Tensor._make(out, (x,), lambda g: (g * 0.5 / out,), "sqrt")


def rsqrt(x: Tensor) -> Tensor:
    """1/sqrt(x); d/dx = -1/2 x^(-3/2) = -1/2 out^3."""
    out = 1.0 / np.sqrt(x.data)
    return Tensor._make(out, (x,), lambda g: (g * -0.5 * out * out * out,), "rsqrt")


def tanh(x: Tensor) -> Tensor:
    out = np.tanh(x.data)
    return Tensor._make(out, (x,), lambda g: (g * (1.0 - out * out),), "tanh")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), in four passes over one buffer (it runs on every SwiGLU hidden unit).

    For very negative z, exp(-z) overflows to inf and 1 / (1 + inf) = 0: exactly the limit, so the
    overflow is harmless and its warning is silenced. For large positive z, exp(-z) underflows to 0
    and the result is 1. In between, relative error stays at the float's rounding.
    """
    e = np.negative(z)
    with np.errstate(over="ignore"):
        np.exp(e, out=e)
    e += 1.0
    return np.reciprocal(e, out=e)


def sigmoid(x: Tensor) -> Tensor:
    out = _sigmoid(x.data)
    return Tensor._make(out, (x,), lambda g: (g * out * (1.0 - out),), "sigmoid")


def relu(x: Tensor) -> Tensor:
    mask = x.data > 0
    return Tensor._make(np.where(mask, x.data, 0).astype(x.dtype, copy=False), (x,), lambda g: (g * mask,), "relu")


# lesson 06: begin (silu) exercise
def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x) (a.k.a. swish); d/dx = s + x s (1 - s)."""
    s = _sigmoid(x.data)
    return Tensor._make(x.data * s, (x,), lambda g: (g * (s + x.data * s * (1.0 - s)),), "silu")
# lesson 06: end (silu) exercise


_erf = np.vectorize(math.erf, otypes=[np.float64])  # NumPy has no erf; math.erf is exact to 1 ulp


def erf(z: np.ndarray) -> np.ndarray:
    """Error function of an ndarray, computed in float64 and cast back to z's dtype."""
    if z.size == 0:
        return z.copy()
    return _erf(z.astype(np.float64, copy=False)).astype(z.dtype, copy=False)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU(x) = x * Phi(x). `approximate="none"` uses erf (exact); `"tanh"` the GPT-2 formula."""
    z = x.data
    if approximate == "none":
        cdf = 0.5 * (1.0 + erf(z * _INV_SQRT_2))
        out = z * cdf

        def backward(g):
            pdf = np.exp(-0.5 * z * z) * _INV_SQRT_2PI  # standard normal density
            return (g * (cdf + z * pdf),)

    elif approximate == "tanh":
        inner = _SQRT_2_OVER_PI * (z + 0.044715 * z * z * z)
        t = np.tanh(inner)
        out = 0.5 * z * (1.0 + t)

        def backward(g):
            d_inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * z * z)
            return (g * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * d_inner),)

    else:
        raise ConfigError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return Tensor._make(out, (x,), backward, "gelu")


def abs(x: Tensor) -> Tensor:
    return Tensor._make(np.abs(x.data), (x,), lambda g: (g * np.sign(x.data),), "abs")


def clamp(x: Tensor, min=None, max=None) -> Tensor:
    """Clip to [min, max]; the gradient flows only where the value was not clipped."""
    lo = -np.inf if min is None else min
    hi = np.inf if max is None else max
    out = np.clip(x.data, lo, hi).astype(x.dtype, copy=False)
    keep = (x.data >= lo) & (x.data <= hi)
    return Tensor._make(out, (x,), lambda g: (g * keep,), "clamp")
