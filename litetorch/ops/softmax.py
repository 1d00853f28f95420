"""softmax and log_softmax in their numerically stable forms.

Subtracting the row max before `exp` changes nothing mathematically (it cancels in the ratio)
but keeps every exponent <= 0, so nothing overflows even for logits of 1e4.
"""
import numpy as np

from ..tensor import Tensor


# lesson 01: begin (softmax)
def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x), along `dim`."""
    m = np.max(x.data, axis=dim, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)  # a row of all -inf stays NaN-free until the division (like torch: NaN)
    e = np.exp(x.data - m)
    s = e / np.sum(e, axis=dim, keepdims=True)

    def backward(g):
        # Jacobian-vector product: ds_i = s_i (g_i - sum_j g_j s_j)
        return (s * (g - np.sum(g * s, axis=dim, keepdims=True)),)

    return Tensor._make(s, (x,), backward, "softmax")
# lesson 01: end (softmax)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """log softmax = x - max - log(sum exp(x - max)): never takes the log of an underflowed 0."""
    m = np.max(x.data, axis=dim, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    shifted = x.data - m
    lse = np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))
    out = shifted - lse

    def backward(g):
        # d/dx_i = g_i - softmax_i * sum_j g_j
        return (g - np.exp(out) * np.sum(g, axis=dim, keepdims=True),)

    return Tensor._make(out, (x,), backward, "log_softmax")
