"""Weights kept as the file stores them, expanded when a layer reads them (lesson 11).

`load_model(path, weights="quantized")` builds the same `Llama` as the default
`weights="float32"`, but its parameters hold no float arrays. The design:

- **The file stays where it is.** A GGUF's tensor data is memory-mapped (`GGUFFile`): the OS pages
  the blocks in when they are read and may drop them again, and they cost no copy. TinyLlama-1.1B
  in Q4_K_M is 0.67 GB of blocks and 4.4 GB as float32.
- **A parameter whose `.data` is computed on access.** Every parameter of the model is a
  `QuantizedParameter`: a `Parameter` that knows its name, shape and dtype, and on `.data` asks the
  model's `QuantizedWeights` for its values. The layers do not know: `F.linear` reads
  `weight.data` as it always does, so there is ONE forward, the same lines for both modes. A fused
  `qkv_proj` expands from its three GGUF tensors (Q/K rows un-permuted), `gate_up_proj` from two.
- **One owner.** `QuantizedWeights` owns the file, the recipe of every parameter (a function the
  loader gives it: the same one the float32 loader runs, so both modes compute with the same
  numbers, bit for bit) and the cache. A parameter keeps a reference to that owner and its own
  name, never to another module's parameters.
- **A bounded cache.** An expanded array is used by one matmul and then dropped, unless it fits in
  the cache's budget (`max_cached_bytes`). The cache keeps the *first* arrays that fit and never
  evicts: a forward pass reads every weight once, in the same order, every token, and with that
  cyclic pattern a least-recently-used cache evicts exactly the weight needed next (hit rate 0
  whatever its size), while keeping a fixed set is optimal (hit rate = budget / total). The first
  arrays are the embedding table (so a tied `lm_head` hits it) and the first layers.
- **One scratch buffer.** An array that is not cached is expanded into one reusable buffer the size
  of the largest parameter, because a fresh 100 MB array is fresh memory from the OS, faulted in a
  page at a time (about 3 s per token for TinyLlama). It is reused only when nothing refers to it.
- **Read-only.** Expanded arrays are read-only views of the model's numbers. Assigning `.data`,
  `Module.to()`, `load_state_dict()` and `requires_grad_(True)` raise `ConfigError` naming the
  parameter and what to do instead (load with `weights="float32"`, or `dtype=np.float64`), before
  anything changes: the model cannot be trained or cast in place. `state_dict()` works (it copies
  expanded arrays), and so does everything that only reads.

The price is time: every forward dequantizes every weight it uses (lesson 11 measures it).
"""
from __future__ import annotations

import math
import sys
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..tensor import Parameter

# The default cache budget. It holds a 32,000 x 2,048 float32 embedding table (250 MiB), or SmolLM2's
# (108 MiB) and a third of its layers. TinyLlama's on-demand peak is then about 1.2-1.3 GiB: the file's
# pages 0.64, this cache 0.25, the scratch buffer 0.25 (the output matrix), Python and NumPy 0.1.
DEFAULT_CACHE_BYTES = 256 * 2**20


class QuantizedWeights:
    """The values of a model's parameters, expanded from a file on demand, with a bounded cache.

    expand: (name, out) -> None, writes the parameter's values into `out` ([*shapes[name]] of dtype)
    shapes: parameter name -> shape
    dtype:  float32 or float64, the dtype every parameter expands to
    max_cached_bytes: the cache's budget (0: expand on every use, keep nothing)
    """

    def __init__(self, expand: Callable[[str, np.ndarray], None], shapes: dict, dtype,
                 max_cached_bytes: int = DEFAULT_CACHE_BYTES, source: str = "<file>"):
        self._expand, self.shapes, self.dtype = expand, dict(shapes), np.dtype(dtype)
        self.max_cached_bytes, self.source = max_cached_bytes, source
        self._cache: dict[str, np.ndarray] = {}
        self._scratch: np.ndarray | None = None   # [bytes of the largest parameter] uint8, made on first use
        self.cached_bytes = 0
        self.hits = self.misses = 0        # cache lookups since the last `clear()`

    # lesson 11: begin (get)
    def get(self, name: str) -> np.ndarray:
        """The parameter's values: [*shapes[name]] of `dtype`, read-only."""
        arr = self._cache.get(name)
        if arr is not None:
            self.hits += 1
            return arr
        self.misses += 1
        shape = self.shapes[name]
        nbytes = math.prod(shape) * self.dtype.itemsize
        if self.cached_bytes + nbytes <= self.max_cached_bytes:
            arr = self._cache[name] = np.empty(shape, self.dtype)  # kept for good: the first arrays that fit
            self.cached_bytes += nbytes
        else:
            arr = self._scratch_array(shape, nbytes)
        self._expand(name, arr)
        arr.flags.writeable = False        # shared by whoever reads it next: nobody may write into it
        return arr
    # lesson 11: end (get)

    def _scratch_array(self, shape: tuple, nbytes: int) -> np.ndarray:
        """An array of `shape` in the one scratch buffer, or a fresh one if that buffer is still in use.

        A fresh array of 100 MB is fresh memory from the OS, and the OS hands it out a page at a time:
        writing TinyLlama's 4.4 GB of expanded weights into new arrays took 1.1 million page faults
        and seconds per token. Reusing one buffer avoids them. It is reused only when nothing refers
        to it any more (a layer drops its weight after the matmul; a caller who kept `w = p.data`
        keeps it, and the next expansion gets a fresh array), so no array ever changes under anyone.
        """
        if self._scratch is None:
            self._scratch = np.empty(max(math.prod(s) for s in self.shapes.values()) * self.dtype.itemsize, np.uint8)
        if sys.getrefcount(self._scratch) > 2:  # this attribute + getrefcount's argument; more: a view in use
            return np.empty(shape, self.dtype)
        return self._scratch[:nbytes].view(self.dtype).reshape(shape)

    def clear(self) -> None:
        """Drop every cached array and the scratch buffer (and reset the counters)."""
        self._cache.clear()
        self._scratch = None
        self.cached_bytes = self.hits = self.misses = 0

    def parameter(self, name: str) -> "QuantizedParameter":
        return QuantizedParameter(self, name)

    def __repr__(self) -> str:
        return (f"QuantizedWeights({self.source}, {len(self.shapes)} parameters, {self.dtype}, cache "
                f"{self.cached_bytes / 2**20:.0f}/{self.max_cached_bytes / 2**20:.0f} MiB)")


class QuantizedParameter(Parameter):
    """A Parameter whose values are expanded from quantized blocks each time `.data` is read.

    shape, dtype, ndim and numel() answer without expanding anything. It never requires grad.
    """

    __slots__ = ("_weights", "_key")

    def __init__(self, weights: QuantizedWeights, name: str):  # no float array to hand to Tensor.__init__
        self._weights, self._key = weights, name
        self.grad, self._prev, self._backward, self._op, self._retain, self.name = None, (), None, "", False, name

    # lesson 11: begin (data on access)
    @property
    def data(self) -> np.ndarray:  # what F.linear, F.embedding and RMSNorm read: expanded now
        return self._weights.get(self._key)

    @data.setter
    def data(self, value) -> None:
        raise ConfigError(self._read_only("cannot be assigned (load_state_dict and Module.to() assign it)"))
    # lesson 11: end (data on access)

    @property
    def requires_grad(self) -> bool:
        return False

    @requires_grad.setter
    def requires_grad(self, flag) -> None:
        if flag:
            raise ConfigError(self._read_only("cannot require grad: a model loaded this way cannot be trained"))

    def requires_grad_(self, flag: bool = True) -> "QuantizedParameter":
        self.requires_grad = flag
        return self

    def _read_only(self, what: str) -> str:
        return (f"parameter {self._key} is expanded from the quantized blocks of {self._weights.source} on every "
                f"use (weights='quantized') and {what}; load the model with weights='float32' to change, cast "
                f"or train its weights, or with dtype=np.float64 to compute in float64")

    @property
    def shape(self) -> tuple:
        return tuple(self._weights.shapes[self._key])

    @property
    def dtype(self) -> np.dtype:
        return self._weights.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"QuantizedParameter({self._key}, shape={self.shape}, dtype={self.dtype}, from {self._weights.source})"
