"""The fused inference projections (nn/fused.py) change speed, never numbers or memory."""
import numpy as np
import pytest

import litetorch as lt
from litetorch import nn
from litetorch.testing import assert_close


def _block(dtype=np.float64):
    lt.manual_seed(0)
    blk = nn.DecoderBlock(32, 4, 2, 48, rope=nn.RotaryEmbedding(8))
    return blk.to(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_block_equals_unfused(dtype):
    blk = _block(dtype)
    x = lt.tensor(np.random.default_rng(1).standard_normal((2, 5, 32)).astype(dtype))
    with lt.enable_grad():  # grad mode: the separate q/k/v and gate/up Linears
        ref = blk(x).numpy().copy()
    with lt.no_grad():      # inference: the stacked matmuls
        fused = blk(x).numpy()
    assert blk.self_attn._qkv.stacked is not None and blk.mlp._gate_up.stacked is not None
    assert_close(fused, ref)


def test_fused_weights_are_views_not_copies():
    blk = _block()
    with lt.no_grad():
        blk(lt.tensor(np.zeros((1, 1, 32))))
    W = blk.self_attn._qkv.stacked
    for lin in (blk.self_attn.q_proj, blk.self_attn.k_proj, blk.self_attn.v_proj):
        assert lin.weight.data.base is W and np.shares_memory(lin.weight.data, W)


def test_fused_path_sees_weights_replaced_by_load_state_dict():
    blk = _block()
    x = lt.tensor(np.random.default_rng(2).standard_normal((1, 3, 32)))
    with lt.no_grad():
        before = blk(x).numpy().copy()
    sd = blk.state_dict()
    sd["self_attn.k_proj.weight"] = sd["self_attn.k_proj.weight"] * 2.0
    sd["mlp.up_proj.weight"] = -sd["mlp.up_proj.weight"]
    blk.load_state_dict(sd)
    with lt.enable_grad():
        ref = blk(x).numpy().copy()
    with lt.no_grad():
        after = blk(x).numpy()
    assert_close(after, ref)
    assert np.abs(after - before).max() > 1e-3  # the change really reached the fused path


def test_capture_still_sees_each_projection_under_no_grad():
    from litetorch.debug import capture
    blk = _block()
    with capture(blk, names=["self_attn.q_proj", "mlp.up_proj"]) as rec, lt.no_grad():
        blk(lt.tensor(np.ones((1, 2, 32))))
    assert set(rec) == {"self_attn.q_proj", "mlp.up_proj"}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_decode_steps_with_a_cache_equal_unfused(dtype):
    """The fused path rotates q's and k's heads in one RoPE call: check it at offsets past > 0, step by step."""
    from litetorch.nn.kv_cache import KVCache
    blk = _block(dtype)
    xs = np.random.default_rng(3).standard_normal((1, 6, 32)).astype(dtype)
    outs = {}
    for mode in ("unfused", "fused"):
        cache = KVCache(1, 2, 8, 8, dtype=dtype)
        with (lt.enable_grad() if mode == "unfused" else lt.no_grad()):
            steps = [blk(lt.tensor(xs[:, :3]), cache=cache).numpy().copy()]  # prefill 3, then one at a time
            steps += [blk(lt.tensor(xs[:, t:t + 1]), cache=cache).numpy().copy() for t in range(3, 6)]
        outs[mode] = (np.concatenate(steps, axis=1), cache.k[:, :, :6].copy())
    assert_close(outs["fused"][0], outs["unfused"][0])
    assert_close(outs["fused"][1], outs["unfused"][1])  # the rotated keys written to the cache
