"""GatedDeltaNet (litetorch/nn/gated_deltanet.py) against HF's Qwen3NextGatedDeltaNet, and its DeltaNetCache.

Claims:
- HF's state_dict loads as it is (same names and shapes), and the forward equals HF's in float32
  (<= 1e-5 relative), chunked (64 or 5 tokens) or token by token, for T below and above one chunk.
- Backward in float64 equals torch autograd on a float64 twin of HF's forward (written here:
  HF casts to float32 in three places, so `.double()` on the HF module would not give float64).
  The twin itself equals HF's module in float32.
- Prefill in one call, in pieces and token by token with a cache give the same outputs; cached
  decoding also equals HF's own cached decoding (outputs and both states).
- The cache is the same size after 10 and after 1,000 tokens; snapshot/restore/reset work;
  bad input raises before the cache changes.
"""
import numpy as np
import pytest

import litetorch as lt
from litetorch import nn
from litetorch.errors import CacheError, ConfigError, DTypeError, ShapeError
from litetorch.nn.gated_deltanet import softplus
from litetorch.testing import assert_close, gradcheck

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed; live parity tests skipped")

# (hidden, Hk, Hv, Dk, Dv, kernel): grouped value heads, and Hk == Hv with another kernel size
CONFIGS = [(32, 2, 4, 8, 6, 4), (24, 3, 3, 4, 5, 3)]
IDS = ["Hk2Hv4", "Hk3Hv3K3"]


def _hf_layer(cfg, seed=0, dtype=None):
    """HF's layer from a tiny Qwen3NextConfig, with every parameter random (norm weight and dt_bias too)."""
    if torch is None:
        pytest.skip("PyTorch not installed")
    try:
        from transformers import Qwen3NextConfig
        from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet
    except ImportError:
        pytest.skip("transformers has no Qwen3-Next")
    C, Hk, Hv, Dk, Dv, K = cfg
    config = Qwen3NextConfig(hidden_size=C, linear_num_key_heads=Hk, linear_num_value_heads=Hv,
                             linear_key_head_dim=Dk, linear_value_head_dim=Dv, linear_conv_kernel_dim=K,
                             num_hidden_layers=1, rms_norm_eps=1e-6)
    torch.manual_seed(seed)
    layer = Qwen3NextGatedDeltaNet(config, layer_idx=0)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.dt_bias.uniform_(-1.0, 1.0)
    return config, (layer.double() if dtype == np.float64 else layer)


def _ours(cfg, dtype=np.float32, chunk_size=64, seed=0):
    C, Hk, Hv, Dk, Dv, K = cfg
    return nn.GatedDeltaNet(C, Hk, Hv, Dk, Dv, conv_kernel_size=K, eps=1e-6, chunk_size=chunk_size, dtype=dtype,
                            generator=lt.Generator(seed))


def _x(B, T, C, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((B, T, C)).astype(dtype)


@needs_torch
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_hf_state_dict_loads_with_the_same_names_and_shapes(cfg):
    _, hf = _hf_layer(cfg)
    ours = _ours(cfg)
    ours.load_state_dict(hf.state_dict())  # strict: every name present on both sides, shapes equal
    assert set(ours.state_dict()) == set(hf.state_dict())
    for name, value in hf.state_dict().items():
        assert_close(ours.state_dict()[name], value, rtol=0.0, atol=0.0, msg=name)


@needs_torch
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("T", [1, 9, 70])
@pytest.mark.parametrize("chunk_size", [64, 5, None], ids=["chunk64", "chunk5", "recurrent"])
def test_gated_deltanet_matches_hf_float32_forward(cfg, T, chunk_size):
    _, hf = _hf_layer(cfg)
    ours = _ours(cfg, chunk_size=chunk_size)
    ours.load_state_dict(hf.state_dict())
    x = _x(2, T, cfg[0], np.float32, seed=T)
    ref = hf(torch.from_numpy(x))
    y = ours(lt.tensor(x))
    assert y.dtype == np.float32
    assert_close(y, ref)


# --------------------------------------------------------------------------------------------
# float64 backward against a torch twin of HF's forward
# --------------------------------------------------------------------------------------------
def torch_gated_deltanet_f64(hf, x):
    """HF's `Qwen3NextGatedDeltaNet.forward` (no cache), written out so that float64 stays float64.

    HF computes in float32 in three places whatever the module's dtype: the decay (`a.float()`),
    the delta rule (`.to(torch.float32)`) and `Qwen3NextRMSNormGated` (`.to(torch.float32)`);
    here those run in the input's dtype. Everything else calls HF's own module pieces."""
    from test_delta_rule import torch_gated_delta_rule_f64

    B, T, _ = x.shape
    q, k, v, z, b, a = hf.fix_query_key_value_ordering(hf.in_proj_qkvz(x), hf.in_proj_ba(x))
    qkv = torch.cat([t.reshape(B, T, -1) for t in (q, k, v)], dim=-1).transpose(1, 2)  # [B, conv_dim, T]
    K = hf.conv_kernel_size
    qkv = torch.nn.functional.conv1d(qkv, hf.conv1d.weight, padding=K - 1, groups=hf.conv_dim)[..., :T]
    qkv = torch.nn.functional.silu(qkv).transpose(1, 2)
    q, k, v = torch.split(qkv, [hf.key_dim, hf.key_dim, hf.value_dim], dim=-1)
    q, k = q.reshape(B, T, -1, hf.head_k_dim), k.reshape(B, T, -1, hf.head_k_dim)
    v = v.reshape(B, T, -1, hf.head_v_dim)
    beta = b.sigmoid()
    g = -hf.A_log.exp() * torch.nn.functional.softplus(a + hf.dt_bias)
    S0 = torch.zeros(B, hf.num_v_heads, hf.head_k_dim, hf.head_v_dim, dtype=x.dtype)
    o, _ = torch_gated_delta_rule_f64(q, k, v, g, beta, S0, l2=True)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + hf.norm.variance_epsilon) * hf.norm.weight
    o = o * torch.nn.functional.silu(z)
    return hf.out_proj(o.reshape(B, T, -1))


@needs_torch
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_the_float64_twin_is_hfs_forward(cfg):
    """The twin below is HF's function: in float32 it equals HF's module."""
    _, hf = _hf_layer(cfg)
    x = torch.from_numpy(_x(2, 11, cfg[0], np.float32, seed=4))
    assert_close(torch_gated_deltanet_f64(hf, x), hf(x))


@needs_torch
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("chunk_size", [4, None], ids=["chunk4", "recurrent"])
def test_gated_deltanet_backward_float64_matches_torch_autograd(cfg, chunk_size):
    _, hf = _hf_layer(cfg, dtype=np.float64)
    ours = _ours(cfg, dtype=np.float64, chunk_size=chunk_size)
    ours.load_state_dict(hf.state_dict())
    x = _x(2, 10, cfg[0], np.float64, seed=5)
    w = np.random.default_rng(6).standard_normal((2, 10, cfg[0]))

    tx = torch.tensor(x, requires_grad=True)
    ref = torch_gated_deltanet_f64(hf, tx)
    (ref * torch.from_numpy(w)).sum().backward()

    lx = lt.tensor(x, requires_grad=True)
    y = ours(lx)
    (y * lt.tensor(w)).sum().backward()
    assert_close(y, ref, msg="output")
    assert_close(lx.grad, tx.grad, msg="d loss / d x")
    grads = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, grads[name].grad, msg=f"d loss / d {name}")


def test_gated_deltanet_backward_matches_finite_differences():
    """Without torch: a tiny layer, every parameter and the input, central differences."""
    layer = nn.GatedDeltaNet(6, 1, 2, 3, 2, conv_kernel_size=3, chunk_size=2, dtype=np.float64,
                             generator=lt.Generator(1))
    params = list(layer.named_parameters())
    x = lt.tensor(_x(1, 5, 6, np.float64, seed=1), requires_grad=True)

    # d/dx by gradcheck; d/dparam: a few entries of every parameter against central differences
    assert gradcheck(lambda x: layer(x), x)
    y = layer(x)
    wgt = np.random.default_rng(2).standard_normal(y.shape)
    layer.zero_grad()
    (y * lt.tensor(wgt)).sum().backward()
    for name, p in params:
        flat = p.data.reshape(-1)
        for j in range(0, flat.size, max(1, flat.size // 6)):  # a few entries of each parameter
            orig = flat[j]
            flat[j] = orig + 1e-6
            with lt.no_grad():
                up = (layer(x).data * wgt).sum()
            flat[j] = orig - 1e-6
            with lt.no_grad():
                down = (layer(x).data * wgt).sum()
            flat[j] = orig
            numeric = (up - down) / 2e-6
            assert abs(p.grad.reshape(-1)[j] - numeric) <= 1e-6 + 1e-4 * abs(numeric), (name, j)


# --------------------------------------------------------------------------------------------
# The cache: prefill / pieces / decode, HF's cached decode, fixed size, snapshot, errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [64, 3, None], ids=["chunk64", "chunk3", "recurrent"])
def test_prefill_at_once_in_pieces_and_token_by_token_give_the_same_outputs(chunk_size):
    cfg = CONFIGS[0]
    layer = _ours(cfg, dtype=np.float64, chunk_size=chunk_size, seed=3)
    x = _x(2, 20, cfg[0], np.float64, seed=8)
    with lt.no_grad():
        whole = layer(lt.tensor(x)).data
        cache = layer.make_cache(2)
        pieces = [layer(lt.tensor(x[:, a:b]), cache).data for a, b in ((0, 4), (4, 5), (5, 11), (11, 20))]
        assert cache.length == 20
        cache.reset()
        steps = []
        for t in range(20):
            steps.append(layer(lt.tensor(x[:, t:t + 1]), cache).data)
            assert cache.length == t + 1
    assert_close(np.concatenate(pieces, axis=1), whole, msg="in pieces")
    assert_close(np.concatenate(steps, axis=1), whole, msg="token by token")


@needs_torch
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_cached_decode_equals_hfs_cached_decode_outputs_and_states(cfg):
    from transformers import DynamicCache

    config, hf = _hf_layer(cfg)
    ours = _ours(cfg)
    ours.load_state_dict(hf.state_dict())
    x = _x(1, 16, cfg[0], np.float32, seed=9)
    hf_cache, cache = DynamicCache(config=config), ours.make_cache(1)
    for a, b in [(0, 6)] + [(t, t + 1) for t in range(6, 16)]:  # a 6-token prompt, then 10 decode steps
        ref = hf(torch.from_numpy(x[:, a:b]), cache=hf_cache)
        assert_close(ours(lt.tensor(x[:, a:b]), cache), ref, msg=f"tokens {a}:{b}")
    K = cfg[5]
    assert_close(cache.recurrent_state, hf_cache.layers[0].recurrent_states[0], msg="recurrent state")
    # HF keeps the last K conv inputs; the convolution of the next token needs only the last K - 1
    assert_close(cache.conv_state, hf_cache.layers[0].conv_states[0][..., 1:], msg="conv state")
    assert cache.conv_state.shape[-1] == K - 1


def test_cache_is_the_same_size_after_10_and_after_1000_tokens():
    cfg = CONFIGS[0]
    layer = _ours(cfg)
    x = _x(1, 1000, cfg[0], np.float32, seed=10)
    with lt.no_grad():
        short, long = layer.make_cache(1), layer.make_cache(1)
        layer(lt.tensor(x[:, :10]), short)
        layer(lt.tensor(x), long)
    assert (short.length, long.length) == (10, 1000)
    assert short.nbytes == long.nbytes == (56 * 3 + 4 * 8 * 6) * 4  # conv [1, 56, 3] + state [1, 4, 8, 6], float32
    assert short.conv_state.shape == long.conv_state.shape == (1, 56, 3)
    assert short.recurrent_state.shape == long.recurrent_state.shape == (1, 4, 8, 6)
    assert np.isfinite(long.recurrent_state).all() and long.recurrent_state.dtype == np.float32


def test_snapshot_restore_and_reset():
    cfg = CONFIGS[1]
    layer = _ours(cfg, dtype=np.float64, seed=4)
    x = _x(1, 12, cfg[0], np.float64, seed=11)
    with lt.no_grad():
        cache = layer.make_cache(1)
        layer(lt.tensor(x[:, :8]), cache)  # a "system prompt"
        snap = cache.snapshot()
        first = layer(lt.tensor(x[:, 8:]), cache).data
        assert cache.length == 12
        cache.restore(snap)
        assert cache.length == 8
        again = layer(lt.tensor(x[:, 8:]), cache).data
        cache.reset()
        fresh = layer(lt.tensor(x[:, 8:]), cache).data
        alone = layer(lt.tensor(x[:, 8:])).data
    assert np.array_equal(first, again)  # the same state gives the same numbers, bit for bit
    assert np.array_equal(fresh, alone) and not np.allclose(fresh, first)  # reset = a new sequence


def test_backward_after_the_cache_moved_on_uses_the_states_the_forward_read():
    """The cache swaps in new arrays instead of writing into the old ones, so a graph built on the
    old state still differentiates the numbers it computed: backward gives the same gradients
    whether or not the cache has processed more tokens in between."""
    cfg = CONFIGS[0]
    layer = _ours(cfg, dtype=np.float64, chunk_size=None, seed=5)
    x = _x(1, 9, cfg[0], np.float64, seed=12)
    grads = []
    for move_on in (False, True):
        cache = layer.make_cache(1)
        with lt.no_grad():
            layer(lt.tensor(x[:, :4]), cache)
        y = layer(lt.tensor(x[:, 4:7]), cache)  # reads the state after 4 tokens
        if move_on:
            with lt.no_grad():
                layer(lt.tensor(x[:, 7:]), cache)  # the cache moves on before backward
        layer.zero_grad()
        y.sum().backward()
        grads.append({n: p.grad.copy() for n, p in layer.named_parameters()})
    for n in grads[0]:
        assert np.array_equal(grads[0][n], grads[1][n]), n


def test_bad_input_raises_before_the_cache_changes():
    cfg = CONFIGS[0]
    layer = _ours(cfg)
    cache = layer.make_cache(2)
    with lt.no_grad():
        layer(lt.tensor(_x(2, 3, cfg[0], np.float32)), cache)
    before = (cache.length, cache.conv_state.copy(), cache.recurrent_state.copy())
    with pytest.raises(CacheError, match="batch size 1, but this cache holds 2"):
        layer(lt.tensor(_x(1, 2, cfg[0], np.float32)), cache)
    with pytest.raises(CacheError, match="dtype float64, but this cache holds float32"):
        layer.double()(lt.tensor(_x(2, 2, cfg[0], np.float64)), cache)
    layer.float()
    with pytest.raises(ShapeError, match=r"\[B, T, C\] with C = d_model = 32, got \(2, 2, 31\)"):
        layer(lt.tensor(_x(2, 2, 31, np.float32)), cache)
    with pytest.raises(DTypeError, match="input has dtype float64"):
        layer(lt.tensor(_x(2, 2, cfg[0], np.float64)), cache)
    with pytest.raises(CacheError, match="DeltaNetSnapshot"):
        cache.restore("not a snapshot")
    with pytest.raises(CacheError, match=r"snapshot recurrent_state is \(1, 4, 8, 6\)"):
        cache.restore(layer.make_cache(1).snapshot().__class__(0, cache.conv_state, np.zeros((1, 4, 8, 6), np.float32)))
    assert cache.length == before[0]
    assert np.array_equal(cache.conv_state, before[1]) and np.array_equal(cache.recurrent_state, before[2])


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ConfigError, match="n_v_heads=6 must be a multiple of n_k_heads=4"):
        nn.GatedDeltaNet(32, 4, 6, 8, 8)
    with pytest.raises(ConfigError, match="chunk_size"):
        nn.GatedDeltaNet(32, 2, 4, 8, 8, chunk_size=0)
    with pytest.raises(ConfigError, match="head_k_dim must be an integer >= 1, got 8.0"):
        nn.GatedDeltaNet(32, 2, 4, 8.0, 8)
    with pytest.raises(CacheError, match="batch_size must be an integer >= 1, got 0"):
        nn.DeltaNetCache(0, 56, 4, 4, 8, 6)


def test_float32_stays_float32_and_cache_holds_float32():
    cfg = CONFIGS[0]
    layer = _ours(cfg, chunk_size=4)
    cache = layer.make_cache(1)
    y = layer(lt.tensor(_x(1, 6, cfg[0], np.float32)), cache)
    assert y.dtype == np.float32
    assert cache.conv_state.dtype == cache.recurrent_state.dtype == np.float32
    y.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == np.float32 for p in layer.parameters())


# --------------------------------------------------------------------------------------------
# The small pieces: softplus, RMSNormGated, the causal conv
# --------------------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softplus_matches_torch_forward_and_backward_across_its_threshold(dtype):
    x = np.array([-80.0, -30.0, -20.5, -1.0, 0.0, 0.3, 19.9, 20.0, 20.1, 45.0, 200.0], dtype=dtype)
    lx, tx = lt.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y, ty = softplus(lx), torch.nn.functional.softplus(tx)
    y.sum().backward()
    ty.sum().backward()
    assert y.dtype == dtype
    assert_close(y, ty)
    assert_close(lx.grad, tx.grad)


@needs_torch
def test_rmsnorm_gated_matches_hf_float32_and_its_backward_torch_float64():
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRMSNormGated

    r = np.random.default_rng(0)
    x, z, w = r.standard_normal((3, 5, 6)) * 3, r.standard_normal((3, 5, 6)), r.uniform(0.5, 1.5, 6)
    hf = Qwen3NextRMSNormGated(6, eps=1e-6)
    with torch.no_grad():
        hf.weight.copy_(torch.from_numpy(w))
    ours = nn.RMSNormGated(6, eps=1e-6)
    ours.load_state_dict(hf.state_dict())
    ref = hf(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(z.astype(np.float32)))
    assert_close(ours(lt.tensor(x.astype(np.float32)), lt.tensor(z.astype(np.float32))), ref)

    tx, tz, tw = (torch.tensor(a, requires_grad=True) for a in (x, z, w))
    ty = x_norm = tx * torch.rsqrt(tx.pow(2).mean(-1, keepdim=True) + 1e-6) * tw * torch.nn.functional.silu(tz)
    ours = nn.RMSNormGated(6, eps=1e-6, dtype=np.float64)
    ours.load_state_dict({"weight": w})
    lx, lz = lt.tensor(x, requires_grad=True), lt.tensor(z, requires_grad=True)
    y = ours(lx, lz)
    g = r.standard_normal(y.shape)
    y.backward(g)
    x_norm.backward(torch.from_numpy(g))
    assert_close(y, ty)
    for a, b, name in ((lx.grad, tx.grad, "x"), (lz.grad, tz.grad, "gate"), (ours.weight.grad, tw.grad, "weight")):
        assert_close(a, b, msg=name)


@needs_torch
def test_causal_conv1d_equals_torch_depthwise_conv1d_forward_and_backward():
    r = np.random.default_rng(1)
    B, T, D, K = 2, 7, 5, 4
    conv = nn.CausalConv1d(D, K, dtype=np.float64)
    x = r.standard_normal((B, T, D))
    tconv = torch.nn.Conv1d(D, D, K, groups=D, bias=False, padding=K - 1).double()
    conv.load_state_dict(tconv.state_dict())
    lx, tx = lt.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y, state = conv(lx, lt.tensor(np.zeros((B, D, K - 1))))
    ty = tconv(tx.transpose(1, 2))[..., :T].transpose(1, 2)  # HF's causal_conv1d_fn: pad K-1, keep T
    g = r.standard_normal((B, T, D))
    y.backward(g)
    ty.backward(torch.from_numpy(g))
    assert_close(y, ty)
    assert_close(lx.grad, tx.grad)
    assert_close(conv.weight.grad, tconv.weight.grad)
    assert np.array_equal(state, x[:, -(K - 1):].transpose(0, 2, 1))  # the last K-1 inputs, [B, D, K-1]


@pytest.mark.parametrize("chunk_size", [4, None], ids=["chunk4", "recurrent"])
def test_every_intermediate_of_a_float32_forward_stays_float32(monkeypatch, chunk_size):
    """The NumPy-2 trap (a float64 scalar upcasting float32 arrays) would show up as one float64 op output."""
    cfg = CONFIGS[0]
    layer = _ours(cfg, chunk_size=chunk_size)
    seen, make = [], lt.Tensor._make

    def spy(data, parents, backward, op):
        seen.append((op, data.dtype))
        return make(data, parents, backward, op)

    monkeypatch.setattr(lt.Tensor, "_make", staticmethod(spy))
    cache = layer.make_cache(1)
    layer(lt.tensor(_x(1, 6, cfg[0], np.float32)), cache)
    layer(lt.tensor(_x(1, 1, cfg[0], np.float32)), cache)
    upcast = sorted({op for op, dt in seen if dt.kind == "f" and dt != np.float32})
    assert len(seen) > 50 and not upcast, f"ops that left float32: {upcast}"
