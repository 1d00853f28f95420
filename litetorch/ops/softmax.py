"""softmax and log_softmax in their numerically stable forms.

Subtracting the row max before `exp` changes nothing mathematically (it cancels in the ratio)
but keeps every exponent <= 0, so nothing overflows even for logits of 1e4.

Rows that hold no finite answer give NaN, as in PyTorch: a row containing +inf (inf - inf is
undefined), a row of all -inf (nothing to normalise), a row containing NaN. A row with some -inf
entries and a finite max is ordinary: those entries get probability exactly 0.
"""
import numpy as np

from ..tensor import Tensor


# lesson 01: begin (softmax) exercise
def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x), along `dim`."""
    m = np.max(x.data, axis=dim, keepdims=True)
    with np.errstate(invalid="ignore"):  # max +inf or -inf: x - m is NaN there, and the row is NaN (as in torch)
        e = np.exp(x.data - m)
        s = e / np.sum(e, axis=dim, keepdims=True)

    def backward(g):
        # Jacobian-vector product: ds_i = s_i (g_i - sum_j g_j s_j)
        return (s * (g - np.sum(g * s, axis=dim, keepdims=True)),)

    return Tensor._make(s, (x,), backward, "softmax")
# lesson 01: end (softmax) exercise


# lesson 01: begin (log_softmax) exercise
def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """log softmax = x - max - log(sum exp(x - max)): never takes the log of an underflowed 0."""
    m = np.max(x.data, axis=dim, keepdims=True)
    with np.errstate(invalid="ignore"):  # an infinite max makes the row NaN, as in torch (see the module docstring)
        shifted = x.data - m
        lse = np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))
        out = shifted - lse

    def backward(g):
        # d/dx_i = g_i - softmax_i * sum_j g_j
        return (g - np.exp(out) * np.sum(g, axis=dim, keepdims=True),)

    return Tensor._make(out, (x,), backward, "log_softmax")
# lesson 01: end (log_softmax) exercise
