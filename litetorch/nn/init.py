"""Parameter initialization, and `skip_init()` for models whose weights are about to be loaded.

torch's defaults, which litetorch follows:
  Linear     weight, bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features))   (kaiming_uniform, a=sqrt(5))
  Embedding  weight ~ N(0, 1)
  RMSNorm / LayerNorm  weight = 1, bias = 0
"""
from contextlib import contextmanager

import numpy as np

from ..random import _gen

_skip = False


@contextmanager
def skip_init():
    """Inside, random-initialized layers allocate with `np.empty` (untouched pages cost no memory):
    loading a 135M-parameter checkpoint then needs one copy of the weights, not two."""
    global _skip
    prev, _skip = _skip, True
    try:
        yield
    finally:
        _skip = prev


def uniform(shape, bound: float, dtype, generator=None) -> np.ndarray:
    if _skip:
        return np.empty(shape, dtype=dtype)
    return _gen(generator).uniform(-bound, bound, shape).astype(dtype)


def normal(shape, dtype, std: float = 1.0, generator=None) -> np.ndarray:
    if _skip:
        return np.empty(shape, dtype=dtype)
    return (_gen(generator).standard_normal(shape) * std).astype(dtype)
