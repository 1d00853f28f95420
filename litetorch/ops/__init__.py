"""The op families, and the binding that makes them Tensor methods and operators.

Each op is a plain function `op(tensor, ...) -> Tensor` in its family's file; here we attach them
so `x.exp()`, `x @ w`, `x.sum(dim=-1)` read like PyTorch.
"""
from ..tensor import Tensor
from . import arithmetic, index, matmul, reduce, shape, softmax, unary
from .arithmetic import add, div, mul, neg, pow, sub
from .index import getitem, index_add, masked_fill, where
from .matmul import matmul as matmul_fn
from .reduce import argmax, max, mean, min, sum, var
from .shape import cat, chunk, expand, flatten, permute, reshape, split, squeeze, stack, transpose, unsqueeze
from .softmax import log_softmax, softmax
from .unary import abs, clamp, exp, gelu, log, relu, rsqrt, sigmoid, silu, sqrt, tanh

T = Tensor
# operators
T.__add__ = lambda a, b: add(a, b)
T.__radd__ = lambda a, b: add(b, a)
T.__sub__ = lambda a, b: sub(a, b)
T.__rsub__ = lambda a, b: sub(b, a)
T.__mul__ = lambda a, b: mul(a, b)
T.__rmul__ = lambda a, b: mul(b, a)
T.__truediv__ = lambda a, b: div(a, b)
T.__rtruediv__ = lambda a, b: div(b, a)
T.__neg__ = neg
T.__pow__ = lambda a, b: pow(a, b)
T.__rpow__ = lambda a, b: pow(b if isinstance(b, Tensor) else Tensor(__import__("numpy").asarray(b, dtype=a.dtype)), a)
T.__matmul__ = lambda a, b: matmul_fn(a, b)
T.__rmatmul__ = lambda a, b: matmul_fn(Tensor(b), a)
T.__getitem__ = getitem
# comparisons: no gradient, bool results (like torch)
import numpy as _np  # noqa: E402


def _cmp(fn):
    return lambda a, b: Tensor(fn(a.data, b.data if isinstance(b, Tensor) else b))


T.__lt__ = _cmp(_np.less)
T.__le__ = _cmp(_np.less_equal)
T.__gt__ = _cmp(_np.greater)
T.__ge__ = _cmp(_np.greater_equal)
T.__eq__ = _cmp(_np.equal)
T.__ne__ = _cmp(_np.not_equal)
T.__invert__ = lambda a: Tensor(~a.data)
T.__and__ = _cmp(_np.logical_and)
T.__or__ = _cmp(_np.logical_or)

# methods
for _name, _fn in dict(
    exp=exp, log=log, sqrt=sqrt, rsqrt=rsqrt, tanh=tanh, sigmoid=sigmoid, relu=relu, silu=silu, gelu=gelu,
    abs=abs, clamp=clamp, sum=sum, mean=mean, max=max, min=min, var=var, argmax=argmax,
    amax=max, amin=min,  # torch's names for "values only" reductions (what max/min return here)
    reshape=reshape, view=reshape, transpose=transpose, permute=permute, unsqueeze=unsqueeze, squeeze=squeeze,
    flatten=flatten, expand=expand, split=split, chunk=chunk, masked_fill=masked_fill, index_add=index_add, matmul=matmul_fn,
    softmax=softmax, log_softmax=log_softmax, pow=pow,
).items():
    setattr(T, _name, _fn)
T.T = property(lambda a: transpose(a, 0, 1) if a.ndim == 2 else permute(a, tuple(reversed(range(a.ndim)))))
T.mT = property(lambda a: transpose(a, -2, -1))
T.contiguous = lambda a: a
T.expand_as = lambda a, other: expand(a, other.shape)
T.view_as = lambda a, other: reshape(a, other.shape)
