"""Ways to make tensors: tensor, zeros, ones, randn, rand, arange, ... (torch names and defaults)."""
import numpy as np

from .random import _gen
from .tensor import Tensor, get_default_dtype
from .errors import ConfigError


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """Copy `data` into a new Tensor. ndarrays keep their dtype; Python floats become float32."""
    if isinstance(data, Tensor):
        data = data.data
    return Tensor(np.array(data, dtype=dtype, copy=True) if dtype is not None or isinstance(data, np.ndarray)
                  else data, requires_grad=requires_grad)


def from_numpy(a: np.ndarray) -> Tensor:
    """Share memory with `a` (no copy), like torch.from_numpy."""
    return Tensor(a)


def _dt(dtype):
    return np.dtype(dtype) if dtype is not None else get_default_dtype()


def _shape(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


def zeros(*shape, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(np.zeros(_shape(shape), dtype=_dt(dtype)), requires_grad=requires_grad)


def ones(*shape, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(np.ones(_shape(shape), dtype=_dt(dtype)), requires_grad=requires_grad)


def full(shape, fill_value, dtype=None, requires_grad=False) -> Tensor:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return Tensor(np.full(shape, fill_value, dtype=_dt(dtype)), requires_grad=requires_grad)


def zeros_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(np.zeros_like(t.data, dtype=dtype), requires_grad=requires_grad)


def ones_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(np.ones_like(t.data, dtype=dtype), requires_grad=requires_grad)


def randn(*shape, generator=None, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(_gen(generator).standard_normal(_shape(shape)).astype(_dt(dtype)), requires_grad=requires_grad)


def rand(*shape, generator=None, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(_gen(generator).random(_shape(shape)).astype(_dt(dtype)), requires_grad=requires_grad)


def randint(low, high=None, size=None, generator=None) -> Tensor:
    """Ids in [low, high). Like torch, `randint(high, size)` means low = 0."""
    if size is None:
        if not isinstance(high, (tuple, list)):
            raise ConfigError("randint() needs a size tuple: randint(high, size) or randint(low, high, size)")
        low, high, size = 0, low, high
    size = (size,) if isinstance(size, int) else tuple(size)
    return Tensor(_gen(generator).integers(low, high, size=size, dtype=np.int64))


def arange(start, end=None, step=1, dtype=None) -> Tensor:
    if end is None:
        start, end = 0, start
    if dtype is None and all(isinstance(v, int) for v in (start, end, step)):
        dtype = np.int64
    return Tensor(np.arange(start, end, step, dtype=_dt(dtype)))
