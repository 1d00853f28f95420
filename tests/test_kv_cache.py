"""KVCache and LayerCaches: preallocated, append-in-place, errors before any write.

Claims:
- append writes in place and returns views of the buffers (no concatenation per step).
- crop / reset / snapshot / restore do what they say; snapshot survives later overwrites.
- every bad call (overflow, wrong shape, wrong dtype, bad snapshot) raises CacheError and
  leaves the cache's length *and contents* unchanged.
- gradients flow to the rows written by this append, not to older rows.
"""
import numpy as np
import pytest

import litetorch as lt
from litetorch import nn
from litetorch.errors import CacheError


def kv(B, Hkv, T, Dh, seed=0, dtype=np.float32):
    r = np.random.default_rng(seed)
    return r.standard_normal((B, Hkv, T, Dh)).astype(dtype), r.standard_normal((B, Hkv, T, Dh)).astype(dtype)


def test_append_writes_in_place_and_returns_views_of_the_buffer():
    cache = nn.KVCache(2, 3, 10, 4)
    k1, v1 = kv(2, 3, 4, 4, seed=1)
    K, V = cache.append(k1, v1)
    assert len(cache) == 4 and K.shape == (2, 3, 4, 4) and V.shape == (2, 3, 4, 4)
    assert np.shares_memory(K.data, cache.k) and np.shares_memory(V.data, cache.v)  # views, no copy
    k2, v2 = kv(2, 3, 1, 4, seed=2)
    K, V = cache.append(lt.tensor(k2), lt.tensor(v2))  # Tensors work too
    assert len(cache) == 5
    np.testing.assert_array_equal(K.data, np.concatenate([k1, k2], axis=2))
    np.testing.assert_array_equal(V.data, np.concatenate([v1, v2], axis=2))
    np.testing.assert_array_equal(cache.keys.data, K.data)
    assert not K.requires_grad


def test_buffers_are_preallocated_once():
    cache = nn.KVCache(1, 2, 64, 8)
    k_buf, v_buf = cache.k, cache.v
    for t in range(64):
        cache.append(*kv(1, 2, 1, 8, seed=t))
    assert cache.k is k_buf and cache.v is v_buf and len(cache) == 64
    assert cache.nbytes == 2 * 64 * 2 * 8 * 4 and cache.bytes_per_token == 2 * 2 * 8 * 4


def _state(cache):
    return len(cache), cache.k.copy(), cache.v.copy()


def _assert_unchanged(cache, state):
    n, k, v = state
    assert len(cache) == n
    np.testing.assert_array_equal(cache.k, k)  # the whole buffer, not just the filled part
    np.testing.assert_array_equal(cache.v, v)


@pytest.mark.parametrize("bad, match", [
    (lambda: kv(2, 3, 7, 4), "overflow: it holds 4 of 10 positions, appending 7 would need 11"),
    (lambda: kv(2, 2, 1, 4), r"k has shape \(2, 2, 1, 4\), expected \[B, Hkv, T_new, Dh\] = \[2, 3, T_new, 4\]"),
    (lambda: kv(1, 3, 1, 4), "expected"),
    (lambda: kv(2, 3, 1, 5), "expected"),
    (lambda: kv(2, 3, 1, 4, dtype=np.float64), "dtype float64, but this cache holds float32"),
    (lambda: (kv(2, 3, 2, 4)[0], kv(2, 3, 1, 4)[1]), "k and v must have the same shape"),
    (lambda: (np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.float32)), "expected"),
], ids=["overflow", "heads", "batch", "head_dim", "dtype", "k_v_mismatch", "ndim"])
def test_bad_append_raises_and_leaves_cache_unchanged(bad, match):
    cache = nn.KVCache(2, 3, 10, 4)
    cache.append(*kv(2, 3, 4, 4, seed=1))
    before = _state(cache)
    with pytest.raises(CacheError, match=match):
        cache.append(*bad())
    _assert_unchanged(cache, before)


def test_crop_reset_and_their_errors():
    cache = nn.KVCache(1, 1, 8, 2)
    k, v = kv(1, 1, 6, 2)
    cache.append(k, v)
    cache.crop(3)
    assert len(cache) == 3
    np.testing.assert_array_equal(cache.keys.data, k[:, :, :3])
    before = _state(cache)
    for n in (4, -1, 1.5):
        with pytest.raises(CacheError, match="0..3"):
            cache.crop(n)
        _assert_unchanged(cache, before)
    cache.append(*kv(1, 1, 5, 2, seed=3))  # room again after crop
    assert len(cache) == 8
    cache.reset()
    assert len(cache) == 0 and cache.keys.shape == (1, 1, 0, 2)


def test_snapshot_restore_survives_overwrites():
    """Prompt caching: prefill a system prompt, snapshot, then each turn restores it."""
    cache = nn.KVCache(1, 2, 16, 4)
    k, v = kv(1, 2, 5, 4, seed=4)
    cache.append(k, v)
    snap = cache.snapshot()
    assert snap.length == 5 and not np.shares_memory(snap.k, cache.k)
    cache.crop(2)
    cache.append(*kv(1, 2, 9, 4, seed=5))  # overwrites rows 2..10
    cache.restore(snap)
    assert len(cache) == 5
    np.testing.assert_array_equal(cache.keys.data, k)
    np.testing.assert_array_equal(cache.values.data, v)


def test_bad_restore_raises_and_leaves_cache_unchanged():
    cache = nn.KVCache(1, 2, 16, 4)
    cache.append(*kv(1, 2, 3, 4))
    other = nn.KVCache(1, 3, 16, 4)
    other.append(*kv(1, 3, 2, 4))
    small = nn.KVCache(1, 2, 2, 4)
    before = _state(cache)
    with pytest.raises(CacheError, match="expected"):
        cache.restore(other.snapshot())
    with pytest.raises(CacheError, match="needs a CacheSnapshot"):
        cache.restore((3, None, None))
    _assert_unchanged(cache, before)
    with pytest.raises(CacheError, match="room for 2"):
        small.restore(cache.snapshot())
    assert len(small) == 0


def test_cache_constructor_errors():
    with pytest.raises(CacheError, match="max_len must be an integer >= 1, got 0"):
        nn.KVCache(1, 1, 0, 4)
    with pytest.raises(CacheError, match="float"):
        nn.KVCache(1, 1, 4, 4, dtype=np.int32)


def test_gradient_flows_to_the_new_rows_only():
    cache = nn.KVCache(1, 1, 4, 2, dtype=np.float64)
    cache.append(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))
    k = lt.tensor(np.full((1, 1, 1, 2), 2.0), requires_grad=True)
    v = lt.tensor(np.full((1, 1, 1, 2), 3.0), requires_grad=True)
    K, V = cache.append(k, v)
    ((K * np.arange(6.0).reshape(1, 1, 3, 2)).sum() + V.sum()).backward()
    np.testing.assert_array_equal(k.grad, [[[[4.0, 5.0]]]])  # the weights of row 2 only
    np.testing.assert_array_equal(v.grad, [[[[1.0, 1.0]]]])


def test_layer_caches_act_on_every_layer():
    caches = nn.make_caches(3, 1, 2, 8, 4)
    assert len(caches) == 3 and all(isinstance(c, nn.KVCache) for c in caches)
    for c in caches:
        c.append(*kv(1, 2, 5, 4))
    assert caches.length == 5 and caches.bytes_per_token == 3 * 2 * 2 * 4 * 4
    snap = caches.snapshot()
    caches.crop(2)
    assert [len(c) for c in caches] == [2, 2, 2]
    caches.restore(snap)
    assert [len(c) for c in caches] == [5, 5, 5]
    with pytest.raises(CacheError, match="0..5"):
        caches.crop(6)
    bad = list(snap)
    bad[2] = nn.make_caches(1, 1, 3, 8, 4)[0].snapshot()
    caches.crop(1)
    with pytest.raises(CacheError, match="layer 2"):
        caches.restore(bad)
    assert [len(c) for c in caches] == [1, 1, 1]  # checked all layers before writing any
    caches.reset()
    assert caches.length == 0
