"""Elementwise arithmetic: + - * / neg pow, with broadcasting-aware gradients.

Each backward returns one gradient per input; `unbroadcast` sums it back to that input's
shape (a value broadcast to many places gets the sum of their gradients).
"""
import numpy as np

from ..tensor import Tensor, _promote, as_tensor, get_default_dtype, unbroadcast


def _operands(a, b):
    """Wrap both sides; a Python/NumPy scalar takes the tensor's dtype (never upcasts float32)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.data.dtype == b.data.dtype:
        return a, b  # the common case inside a model: nothing to wrap or promote
    if isinstance(a, Tensor):
        b = as_tensor(b, like=a)
    else:
        a = as_tensor(a, like=b)
    return _promote(a, b)


def _float_and_scalar(a, b) -> bool:
    """Fast path: a float tensor and a Python number. NumPy 2 keeps the array's dtype for a Python
    scalar, so no wrapping is needed (this is most `x * scale`, `x + eps` in a model)."""
    return type(b) in (float, int) and isinstance(a, Tensor) and a.data.dtype.kind == "f"


def add(a, b) -> Tensor:
    if _float_and_scalar(a, b) or _float_and_scalar(b, a):
        t, s = (a, b) if isinstance(a, Tensor) else (b, a)
        return Tensor._make(t.data + s, (t,), lambda g: (g,), "add")
    a, b = _operands(a, b)
    sa, sb = a.shape, b.shape
    return Tensor._make(a.data + b.data, (a, b), lambda g: (unbroadcast(g, sa), unbroadcast(g, sb)), "add")


def sub(a, b) -> Tensor:
    if _float_and_scalar(a, b):
        return Tensor._make(a.data - b, (a,), lambda g: (g,), "sub")
    a, b = _operands(a, b)
    sa, sb = a.shape, b.shape
    return Tensor._make(a.data - b.data, (a, b), lambda g: (unbroadcast(g, sa), unbroadcast(-g, sb)), "sub")


# lesson 01: begin (mul)
def mul(a, b) -> Tensor:
    if _float_and_scalar(a, b) or _float_and_scalar(b, a):
        t, s = (a, b) if isinstance(a, Tensor) else (b, a)
        return Tensor._make(t.data * s, (t,), lambda g: (g * s,), "mul")
    # lesson 01: begin (mul of two tensors) exercise
    a, b = _operands(a, b)

    def backward(g):
        # d(ab)/da = b, d(ab)/db = a
        ga = unbroadcast(g * b.data, a.shape) if a.requires_grad else None
        gb = unbroadcast(g * a.data, b.shape) if b.requires_grad else None
        return ga, gb

    return Tensor._make(a.data * b.data, (a, b), backward, "mul")
    # lesson 01: end (mul of two tensors) exercise
# lesson 01: end (mul)


# lesson 01: begin (div) exercise
def div(a, b) -> Tensor:
    """a / b with broadcasting; true division, so ints give floats (like torch)."""
    if _float_and_scalar(a, b):
        return Tensor._make(a.data / b, (a,), lambda g: (g / b,), "div")
    a, b = _operands(a, b)
    if a.data.dtype.kind != "f":  # true division of ints gives floats, like torch
        a, b = a.to(np.float32), b.to(np.float32)

    def backward(g):
        # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        ga = unbroadcast(g / b.data, a.shape) if a.requires_grad else None
        gb = unbroadcast(-g * a.data / (b.data * b.data), b.shape) if b.requires_grad else None
        return ga, gb

    return Tensor._make(a.data / b.data, (a, b), backward, "div")
# lesson 01: end (div) exercise


def neg(a: Tensor) -> Tensor:
    return Tensor._make(-a.data, (a,), lambda g: (-g,), "neg")


def pow(a, b) -> Tensor:
    """a ** b for a tensor base and a scalar or tensor exponent (and scalar ** tensor)."""
    if isinstance(a, Tensor) and not isinstance(b, Tensor) and np.ndim(b) == 0:
        if a.data.dtype.kind != "f":
            if isinstance(b, (int, np.integer)) and b >= 0:  # int ** int stays int, like torch
                return Tensor(a.data ** int(b))
            a = a.to(get_default_dtype())  # int ** 0.5 is a float: the default one, not float64
        p = float(b)  # a Python float: keeps the dtype of `a`
        out = a.data ** p

        def backward_scalar(g):
            # d(x^p)/dx = p x^(p-1); for p == 0 the function is constant, so the gradient is 0
            # everywhere (computing 0 * 0^-1 at x = 0 would give NaN; torch also returns 0)
            if p == 0.0:
                return (np.zeros_like(g),)
            return (g * (p * a.data ** (p - 1.0)),)

        return Tensor._make(out, (a,), backward_scalar, "pow")

    a, b = _operands(a, b)
    out = a.data ** b.data

    def backward(g):
        ga = unbroadcast(g * b.data * a.data ** (b.data - 1), a.shape) if a.requires_grad else None
        gb = None
        if b.requires_grad:
            # d(a^b)/db = a^b ln a. Where a == 0 and b >= 0, a^b is 0 (or 1) for all nearby b >= 0,
            # and 0 * ln 0 would be NaN: use 0 there, as torch does.
            with np.errstate(divide="ignore", invalid="ignore"):
                db = out * np.log(a.data)
            db = np.where((a.data == 0) & (b.data >= 0), 0, db).astype(out.dtype, copy=False)
            gb = unbroadcast(g * db, b.shape)
        return ga, gb

    return Tensor._make(out, (a, b), backward, "pow")
