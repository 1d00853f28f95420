"""KV cache: remember every layer's keys and values so each new token costs one row, lesson 09.

Without a cache, generating token t re-runs attention over all t tokens: O(t^2) work per sequence
in total becomes O(t^3). But the keys and values of past tokens never change (a causal model's
token p only looks left), so we compute them once and keep them:

    prefill: run the prompt [B, T0] once, append its K/V (T0 rows)
    decode:  run one token [B, 1], append its K/V (1 row), attend over all rows so far

Design:
- One `KVCache` per layer holds two *preallocated* buffers [B, Hkv, T_max, Dh] (the K/V after RoPE).
  `append` writes the new rows in place and returns views of the filled part: no concatenation
  per step (concatenating would copy the whole history every token: O(t) per step).
  `np.zeros` memory is only touched when written, so a large T_max costs little until used.
- The views returned by `append` stay valid until the next `crop`, `reset` or `restore`
  (those may overwrite rows).
- Gradients: rows written by *this* `append` pass their gradient back to the k/v given
  (so a training step with a fresh cache still works); rows from earlier calls are constants.
  A cache is an inference device: for training, run the full sequence without one.
- Every check (shape, dtype, room left) runs before anything is written: on error the cache is
  unchanged (`CacheError`, naming the expected and the actual value).
- `snapshot()` copies the filled rows (cost ~ the cached length); `restore()` writes them back.
  That is what prompt (system-message) caching needs: prefill once, snapshot, restore per turn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import checks
from ..errors import CacheError
from ..tensor import Tensor


@dataclass(frozen=True)
class CacheSnapshot:
    """A saved state of one KVCache: its length and copies of the filled rows [B, Hkv, length, Dh]."""

    length: int
    k: np.ndarray
    v: np.ndarray


class KVCache:
    """Preallocated keys/values of one attention layer: buffers `k`, `v` of shape [B, Hkv, T_max, Dh].

    `len(cache)` is the number of positions filled so far (the next token's position).
    """

    # lesson 09: begin
    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, dtype=np.float32):
        # [B, Hkv, T_max, Dh], each an int >= 1 (2.0 or "2" is refused, not coerced: see checks.py)
        self.shape = tuple(checks.integer(name, n, lo=1, error=CacheError) for name, n in (
            ("batch_size", batch_size), ("n_kv_heads", n_kv_heads), ("max_len", max_len), ("head_dim", head_dim)))
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise CacheError(f"a KV cache holds float keys/values, got dtype {self.dtype}")
        self.k = np.zeros(self.shape, dtype=self.dtype)
        self.v = np.zeros(self.shape, dtype=self.dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.shape[2]

    def __len__(self) -> int:
        return self.length

    # lesson 09: begin (append) exercise
    def append(self, k, v) -> tuple[Tensor, Tensor]:
        """Write k, v [B, Hkv, T_new, Dh] at positions len..len+T_new-1; return all keys and values
        so far as Tensors [B, Hkv, len + T_new, Dh] (views of the buffers, no copy)."""
        kd = k.data if isinstance(k, Tensor) else np.asarray(k)
        vd = v.data if isinstance(v, Tensor) else np.asarray(v)
        self._check(kd, vd)
        start, end = self.length, self.length + kd.shape[2]
        # the only writes: T_new rows of each buffer
        self.k[:, :, start:end] = kd
        self.v[:, :, start:end] = vd
        self.length = end
        return self._view(self.k, end, k, start), self._view(self.v, end, v, start)
    # lesson 09: end (append) exercise

    def _view(self, buf: np.ndarray, end: int, new, start: int) -> Tensor:
        view = buf[:, :, :end]  # [B, Hkv, T_cur, Dh], shares memory with the buffer
        if not isinstance(new, Tensor):
            return Tensor(view)
        # gradient of the rows just written flows back to `new`; older rows are constants
        return Tensor._make(view, (new,), lambda g: (g[:, :, start:end],), "kv_cache")

    def _check(self, kd: np.ndarray, vd: np.ndarray) -> None:
        B, Hkv, T_max, Dh = self.shape
        for name, a in (("k", kd), ("v", vd)):
            if a.ndim != 4 or a.shape[0] != B or a.shape[1] != Hkv or a.shape[3] != Dh:
                raise CacheError(f"{name} has shape {a.shape}, expected [B, Hkv, T_new, Dh] = "
                                 f"[{B}, {Hkv}, T_new, {Dh}]")
            if a.dtype != self.dtype:
                raise CacheError(f"{name} has dtype {a.dtype}, but this cache holds {self.dtype}")
        if kd.shape != vd.shape:
            raise CacheError(f"k and v must have the same shape, got k {kd.shape} and v {vd.shape}")
        if self.length + kd.shape[2] > T_max:
            raise CacheError(f"KV cache overflow: it holds {self.length} of {T_max} positions, appending "
                             f"{kd.shape[2]} would need {self.length + kd.shape[2]}")
    # lesson 09: end

    # ---- reading ------------------------------------------------------------------------------
    @property
    def keys(self) -> Tensor:
        """The filled keys [B, Hkv, len, Dh] (a view)."""
        return Tensor(self.k[:, :, :self.length])

    @property
    def values(self) -> Tensor:
        """The filled values [B, Hkv, len, Dh] (a view)."""
        return Tensor(self.v[:, :, :self.length])

    @property
    def nbytes(self) -> int:
        """Bytes of both preallocated buffers (what T_max positions cost)."""
        return self.k.nbytes + self.v.nbytes

    @property
    def bytes_per_token(self) -> int:
        """Bytes one position costs in this layer: 2 (K and V) * B * Hkv * Dh * itemsize."""
        B, Hkv, _, Dh = self.shape
        return 2 * B * Hkv * Dh * self.dtype.itemsize

    # ---- editing ------------------------------------------------------------------------------
    def crop(self, n: int) -> None:
        """Keep only the first n positions (e.g. to drop a rejected draft or a regenerated reply)."""
        self.length = checks.integer(f"crop(n): n (the cached length is {self.length})", n, lo=0, hi=self.length,
                                     error=CacheError)

    def reset(self) -> None:
        """Forget everything (the buffers are kept and reused)."""
        self.length = 0

    def grow(self, max_len: int) -> None:
        """Reallocate the buffers with room for `max_len` positions, keeping the filled rows (an O(len) copy)."""
        max_len = checks.integer(f"grow(max_len): max_len (the cached length is {self.length})", max_len,
                                 lo=max(self.length, 1), error=CacheError)
        B, Hkv, _, Dh = self.shape
        n, old_k, old_v = self.length, self.k, self.v
        self.shape = (B, Hkv, max_len, Dh)
        self.k, self.v = np.zeros(self.shape, dtype=self.dtype), np.zeros(self.shape, dtype=self.dtype)
        self.k[:, :, :n], self.v[:, :, :n] = old_k[:, :, :n], old_v[:, :, :n]

    def snapshot(self) -> CacheSnapshot:
        """Copies of the filled rows and the length; cost ~ len(cache) rows."""
        n = self.length
        return CacheSnapshot(n, self.k[:, :, :n].copy(), self.v[:, :, :n].copy())

    def restore(self, snap: CacheSnapshot) -> None:
        """Put back a snapshot (taken from this cache or one of the same shape and dtype)."""
        problem = self._snapshot_problem(snap)
        if problem:
            raise CacheError(problem)
        self.k[:, :, :snap.length] = snap.k
        self.v[:, :, :snap.length] = snap.v
        self.length = snap.length

    def _snapshot_problem(self, snap) -> str | None:
        if not isinstance(snap, CacheSnapshot):
            return f"restore() needs a CacheSnapshot, got {type(snap).__name__}"
        B, Hkv, T_max, Dh = self.shape
        if snap.length > T_max:
            return f"snapshot holds {snap.length} positions but this cache has room for {T_max}"
        want = (B, Hkv, snap.length, Dh)
        for name, a in (("k", snap.k), ("v", snap.v)):
            if a.shape != want or a.dtype != self.dtype:
                return f"snapshot {name} is {a.shape} {a.dtype}, expected {want} {self.dtype}"
        return None

    def __repr__(self):
        B, Hkv, T_max, Dh = self.shape
        return f"KVCache(len={self.length}, max_len={T_max}, B={B}, Hkv={Hkv}, Dh={Dh}, dtype={self.dtype})"


class LayerCaches:
    """One KVCache per layer, edited together: `caches[i]` is layer i's cache.

    `len(caches)` is the number of layers (it is a list of caches); `caches.length` is the number of
    cached positions, which all layers share between forward passes. crop/reset/snapshot/restore
    act on every layer, and validate all layers before changing any.
    """

    def __init__(self, caches):
        self.layers = list(caches)
        if not self.layers:
            raise CacheError("LayerCaches needs at least one KVCache")

    def __getitem__(self, i: int) -> KVCache:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    @property
    def length(self) -> int:
        """Cached positions (that of layer 0; between forward passes every layer has the same)."""
        return self.layers[0].length

    @property
    def max_len(self) -> int:
        return self.layers[0].max_len

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.layers)

    @property
    def bytes_per_token(self) -> int:
        return sum(c.bytes_per_token for c in self.layers)

    def crop(self, n: int) -> None:
        shortest = min(c.length for c in self.layers)
        checks.integer(f"crop(n): n (the cached length is {shortest})", n, lo=0, hi=shortest, error=CacheError)
        for c in self.layers:
            c.crop(n)

    def reset(self) -> None:
        for c in self.layers:
            c.reset()

    # What the generation loop asks of any cache (generation.py): grow, and roll back a failed call.
    rewindable = True  # crop(n) works for any n <= length (a recurrent state could only be reset)

    def grow(self, max_len: int) -> None:
        for c in self.layers:
            c.grow(max_len)

    def checkpoint(self) -> int:
        """What `rollback` needs to undo a forward pass that fails midway: the length now."""
        return self.length

    def rollback(self, length: int) -> None:
        """Crop every layer back to `length` (layers the failed pass never reached are already there)."""
        for c in self.layers:
            c.crop(min(c.length, length))

    def snapshot(self) -> tuple[CacheSnapshot, ...]:
        return tuple(c.snapshot() for c in self.layers)

    def restore(self, snaps) -> None:
        snaps = tuple(snaps)
        if len(snaps) != len(self.layers):
            raise CacheError(f"snapshot has {len(snaps)} layers, these caches have {len(self.layers)}")
        for i, (c, s) in enumerate(zip(self.layers, snaps)):  # check every layer first ...
            problem = c._snapshot_problem(s)
            if problem:
                raise CacheError(f"layer {i}: {problem}")
        for c, s in zip(self.layers, snaps):  # ... then write
            c.restore(s)

    def __repr__(self):
        return f"LayerCaches(n_layers={len(self.layers)}, len={self.length}, {self.layers[0]!r})"


def make_caches(n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                dtype=np.float32) -> LayerCaches:
    """One preallocated KVCache per layer, all of shape [B, Hkv, T_max, Dh]."""
    return LayerCaches(KVCache(batch_size, n_kv_heads, max_len, head_dim, dtype) for _ in range(n_layers))
