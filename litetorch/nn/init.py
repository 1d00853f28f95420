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
    """Inside, random-initialized layers allocate nothing: each such parameter starts as a placeholder
    of its shape and dtype that takes no memory (every element is the same one zero), for a loader to
    replace. Loading a 135M-parameter checkpoint then needs one copy of the weights, not two, and a model
    whose weights stay in their file (weights="quantized") never reserves room for a float copy."""
    global _skip
    prev, _skip = _skip, True
    try:
        yield
    finally:
        _skip = prev


def _placeholder(shape, dtype) -> np.ndarray:
    """[*shape] of dtype, all strides 0: one zero seen everywhere (writes land on that one element)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, strides=(0,) * len(shape), writeable=True)


def uniform(shape, bound: float, dtype, generator=None) -> np.ndarray:
    if _skip:
        return _placeholder(shape, dtype)
    return _gen(generator).uniform(-bound, bound, shape).astype(dtype)


def normal(shape, dtype, std: float = 1.0, generator=None) -> np.ndarray:
    if _skip:
        return _placeholder(shape, dtype)
    return (_gen(generator).standard_normal(shape) * std).astype(dtype)
