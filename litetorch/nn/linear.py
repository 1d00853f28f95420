"""`Linear`: y = x W^T + b, with W stored [out_features, in_features] exactly like torch."""
import math

import numpy as np

from ..tensor import Parameter, get_default_dtype
from . import functional as F
from . import init
from .module import Module


class Linear(Module):
    """Applies y = x W^T + b.   x: [..., in_features] -> [..., out_features].

    Initialization as torch's default (kaiming_uniform with a=sqrt(5)): every weight and bias
    entry ~ U(-1/sqrt(in_features), 1/sqrt(in_features)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None, generator=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter(init.uniform((out_features, in_features), bound, dtype, generator))  # [out, in]
        self.bias = Parameter(init.uniform((out_features,), bound, dtype, generator)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
