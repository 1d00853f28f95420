"""`HybridCache`: the decode memory of a model that mixes attention and Gated DeltaNet layers. Lesson 26.

Each layer keeps what its token mixer needs to continue a sequence:

    attention layer     KVCache         keys and values of every past token: grows with the context
    Gated DeltaNet      DeltaNetCache   conv inputs + a [Hv, Dk, Dv] state: the same size at any length

`caches[i]` is layer i's cache, of the kind its layer needs. The cache protocol of `models/base.py`
acts on all of them at once:

- `length`: tokens seen (every layer has seen the same between forward passes);
- `grow(max_len)` reallocates only the K/V buffers: a recurrent state has no length to grow;
- `rewindable` is False as soon as one layer is recurrent: a KV cache can drop its last rows, but a
  state that has absorbed a token cannot give it back. `crop(n)` therefore accepts only n = length
  (keep all) or n = 0 (forget all, `reset`); anything else raises CacheError;
- `checkpoint()` / `rollback(state)` undo a forward pass that failed midway: the checkpoint records
  the length and *copies* every recurrent state (cost: their fixed size, whatever the length), the
  rollback crops the K/V caches and puts the copies back.

`nbytes` counts everything allocated; `bytes_per_token` only what one more token of context costs
(the K/V part); `state_nbytes` the fixed recurrent part.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CacheError
from .gated_deltanet import DeltaNetCache, DeltaNetSnapshot
from .kv_cache import KVCache


@dataclass(frozen=True)
class HybridCheckpoint:
    """What `rollback` needs: the length, and a copy of every recurrent layer's state (by layer index)."""

    length: int
    states: dict  # layer index -> DeltaNetSnapshot


class HybridCache:
    """One cache per layer, a KVCache or a DeltaNetCache, edited together (see the module docstring)."""

    def __init__(self, caches, max_len: int):
        self.layers = list(caches)
        if not self.layers:
            raise CacheError("HybridCache needs at least one layer cache")
        for i, c in enumerate(self.layers):
            if not isinstance(c, (KVCache, DeltaNetCache)):
                raise CacheError(f"layer {i}: a HybridCache holds KVCache or DeltaNetCache objects, "
                                 f"got {type(c).__name__}")
        if isinstance(max_len, bool) or int(max_len) != max_len or max_len < 1:
            raise CacheError(f"max_len must be a positive integer, got {max_len!r}")
        self._max_len = int(max_len)  # the context room; the K/V buffers are allocated to it
        self._kv = [c for c in self.layers if isinstance(c, KVCache)]
        self._recurrent = [i for i, c in enumerate(self.layers) if isinstance(c, DeltaNetCache)]

    def __getitem__(self, i: int):
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    # ---- sizes ------------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Tokens seen (layer 0's count; between forward passes every layer has the same)."""
        return self.layers[0].length

    @property
    def max_len(self) -> int:
        return self._max_len

    @property
    def rewindable(self) -> bool:
        """True only without recurrent layers: a DeltaNet state cannot be cut back to an earlier length."""
        return not self._recurrent

    @property
    def nbytes(self) -> int:
        """Every byte allocated: the K/V buffers (for max_len positions) and the recurrent states."""
        return sum(c.nbytes for c in self.layers)

    @property
    def bytes_per_token(self) -> int:
        """What one more position of context costs: the K/V rows (recurrent states do not grow)."""
        return sum(c.bytes_per_token for c in self._kv)

    @property
    def state_nbytes(self) -> int:
        """The recurrent part: fixed, whatever the number of tokens seen."""
        return sum(self.layers[i].nbytes for i in self._recurrent)

    # ---- editing ----------------------------------------------------------------------------------
    # lesson 26: begin (HybridCache)
    def crop(self, n: int) -> None:
        """Keep the first n positions. With recurrent layers only n = length (no-op) or n = 0 (reset)."""
        length = self.length
        if isinstance(n, bool) or int(n) != n or not 0 <= n <= length:
            raise CacheError(f"crop({n!r}): n must be an integer in 0..{length} (the cached length)")
        if n == length:
            return
        if n == 0:
            self.reset()
            return
        if not self.rewindable:
            raise CacheError(f"crop({n}) of a cache holding {length} tokens: layers {self._recurrent} keep a recurrent "
                             f"state, which cannot be cut back to an earlier length; only crop({length}) or reset()")
        for c in self.layers:
            c.crop(n)

    def reset(self) -> None:
        """Forget everything: K/V lengths 0, recurrent states zero."""
        for c in self.layers:
            c.reset()

    def grow(self, max_len: int) -> None:
        """Room for `max_len` positions: reallocate the K/V buffers (keeping their rows); states are untouched."""
        if isinstance(max_len, bool) or int(max_len) != max_len or max_len < self.length:
            raise CacheError(f"grow({max_len!r}): the new size must be an integer >= the cached length {self.length}")
        for c in self._kv:
            c.grow(max_len)
        self._max_len = int(max_len)

    def checkpoint(self) -> HybridCheckpoint:
        """The length now and a copy of every recurrent state, so `rollback` can undo a failed forward pass."""
        return HybridCheckpoint(self.length, {i: self.layers[i].snapshot() for i in self._recurrent})

    def rollback(self, state: HybridCheckpoint) -> None:
        """Back to a checkpoint: crop the K/V caches, restore the recurrent states (every layer, reached or not)."""
        if not isinstance(state, HybridCheckpoint):
            raise CacheError(f"rollback() needs a HybridCheckpoint from checkpoint(), got {type(state).__name__}")
        for i, c in enumerate(self.layers):
            if isinstance(c, KVCache):
                c.crop(min(c.length, state.length))
            else:
                c.restore(state.states[i])
    # lesson 26: end (HybridCache)

    def snapshot(self) -> tuple:
        """Copies of every layer's cache (KV rows up to the length, both recurrent states)."""
        return tuple(c.snapshot() for c in self.layers)

    def restore(self, snaps) -> None:
        """Put back a `snapshot()`, after checking every layer's part fits."""
        snaps = tuple(snaps)
        if len(snaps) != len(self.layers):
            raise CacheError(f"snapshot has {len(snaps)} layers, this cache has {len(self.layers)}")
        for i, (c, s) in enumerate(zip(self.layers, snaps)):  # check every layer first ...
            problem = _state_problem(c, s) if isinstance(c, DeltaNetCache) else c._snapshot_problem(s)
            if problem:
                raise CacheError(f"layer {i}: {problem}")
        for c, s in zip(self.layers, snaps):  # ... then write
            c.restore(s)

    def __repr__(self):
        kinds = "".join("A" if isinstance(c, KVCache) else "D" for c in self.layers)
        return (f"HybridCache(layers={kinds!r} (A = attention K/V, D = DeltaNet state), len={self.length}, "
                f"max_len={self.max_len}, nbytes={self.nbytes})")


def _state_problem(cache: DeltaNetCache, snap) -> str | None:
    if not isinstance(snap, DeltaNetSnapshot):
        return f"expected a DeltaNetSnapshot, got {type(snap).__name__}"
    for name, a, want in (("conv_state", snap.conv_state, cache.conv_shape),
                          ("recurrent_state", snap.recurrent_state, cache.state_shape)):
        if a.shape != want or a.dtype != cache.dtype:
            return f"snapshot {name} is {a.shape} {a.dtype}, expected {want} {cache.dtype}"
    return None
