"""Norms, feed-forward networks and decoder blocks against PyTorch; cached decoding.

Claims:
- RMSNorm equals torch.nn.RMSNorm; SwiGLU equals HF LlamaMLP; MLP equals Linear-GELU/ReLU-Linear.
- The pre-norm (Llama) block equals HF LlamaDecoderLayer (float32) and a torch reference (float64).
- The post-norm block equals torch.nn.TransformerEncoderLayer(norm_first=False) with a causal mask.
- A stack of blocks run on T tokens at once equals a prefill of k tokens followed by T - k
  one-token steps through the KV cache (MHA, GQA, MQA), and the cache is really used.
- A float32 stack stays float32 in every intermediate.
- Without torch, the same claims are checked against tests/fixtures/blocks.npz (made by torch).
"""
from pathlib import Path

import numpy as np
import pytest

import litetorch as lt
from litetorch import nn
from litetorch.debug import capture
from litetorch.errors import CacheError, DTypeError, ShapeError
from litetorch.testing import named_grads

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed; checked against blocks.npz instead")

FIXTURE = Path(__file__).parent / "fixtures" / "blocks.npz"
TOL = {np.float64: 1e-10, np.float32: 1e-5}


def assert_close(ours, ref, dtype, what=""):
    """float64: max abs error <= 1e-10; float32: max abs error <= 1e-5 * max(max|ref|, 1)."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    err = np.abs(ours - ref).max()
    bound = TOL[dtype] * (1.0 if dtype == np.float64 else max(np.abs(ref).max(), 1.0))
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"
    return err


def _to_torch(sd, dtype):
    return {k: torch.tensor(v.astype(dtype), requires_grad=True) for k, v in sd.items()}


def _randomize(module, seed, dtype=None):
    """Give every parameter (norm weights included, which start at 1) distinct random values."""
    r = np.random.default_rng(seed)
    sd = {k: (r.standard_normal(v.shape) * 0.3 + (1.0 if "norm" in k and k.endswith("weight") else 0.0))
          for k, v in module.state_dict().items()}
    module.load_state_dict(sd)
    return module.to(dtype) if dtype is not None else module


def _run(module, x, g, **kw):
    xl = lt.tensor(x, requires_grad=True)
    out = module(xl, **kw)
    out.backward(g)
    return out, xl.grad


# --------------------------------------------------------------------------------------------
# RMSNorm, SwiGLU, MLP
# --------------------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale", [1.0, 1e4, 1e-4])
def test_rmsnorm_matches_torch(dtype, scale):
    r = np.random.default_rng(0)
    x = (r.standard_normal((2, 5, 48)) * scale).astype(dtype)
    g = r.standard_normal((2, 5, 48)).astype(dtype)
    w = (1 + 0.1 * r.standard_normal(48)).astype(dtype)
    ref = torch.nn.RMSNorm(48, eps=1e-5, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    ref.weight.data = torch.tensor(w)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(g))
    ours = nn.RMSNorm(48, eps=1e-5, dtype=dtype)
    ours.load_state_dict({"weight": w})
    out, dx = _run(ours, x, g)
    assert out.dtype == dtype
    assert_close(out.data, yt.detach().numpy(), dtype, "out")
    assert_close(dx * scale, xt.grad.numpy() * scale, dtype, "dx * scale")  # dx ~ 1/scale
    assert_close(ours.weight.grad, ref.weight.grad.numpy(), dtype, "dweight")


@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_swiglu_matches_hf_llama_mlp(dtype):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP
    torch.manual_seed(0)
    hf = LlamaMLP(LlamaConfig(hidden_size=40, intermediate_size=96, num_attention_heads=4)).to(
        torch.float64 if dtype == np.float64 else torch.float32)
    ours = nn.SwiGLU(40, 96).to(dtype)
    ours.load_state_dict({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    r = np.random.default_rng(1)
    x, g = r.standard_normal((3, 7, 40)).astype(dtype), r.standard_normal((3, 7, 40)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = hf(xt)
    yt.backward(torch.tensor(g))
    out, dx = _run(ours, x, g)
    assert_close(out.data, yt.detach().numpy(), dtype, "out")
    assert_close(dx, xt.grad.numpy(), dtype, "dx")
    grads = named_grads(ours)  # gate_up_proj's gradient split into HF's gate_proj / up_proj
    for name, p in hf.named_parameters():
        assert_close(grads[name], p.grad.numpy(), dtype, f"d{name}")


@needs_torch
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mlp_matches_torch(activation, dtype):
    act = {"gelu": torch.nn.GELU(), "gelu_tanh": torch.nn.GELU(approximate="tanh"), "relu": torch.nn.ReLU()}
    ours = _randomize(nn.MLP(24, 64, activation=activation), 2, dtype)
    sd = _to_torch(ours.state_dict(), dtype)
    r = np.random.default_rng(3)
    x, g = r.standard_normal((2, 5, 24)).astype(dtype), r.standard_normal((2, 5, 24)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    h = act[activation](torch.nn.functional.linear(xt, sd["fc1.weight"], sd["fc1.bias"]))
    yt = torch.nn.functional.linear(h, sd["fc2.weight"], sd["fc2.bias"])
    yt.backward(torch.tensor(g))
    out, dx = _run(ours, x, g)
    assert_close(out.data, yt.detach().numpy(), dtype, "out")
    assert_close(dx, xt.grad.numpy(), dtype, "dx")
    for name, p in ours.named_parameters():
        assert_close(p.grad, sd[name].grad.numpy(), dtype, f"d{name}")


# --------------------------------------------------------------------------------------------
# The Llama (pre-norm) block
# --------------------------------------------------------------------------------------------
def llama_block(d_model=64, n_heads=4, n_kv_heads=2, hidden=96, base=10000.0, seed=4, dtype=None):
    blk = nn.DecoderBlock(d_model, n_heads, n_kv_heads, hidden, rope=nn.RotaryEmbedding(d_model // n_heads, base))
    return _randomize(blk, seed, dtype)


@needs_torch
@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (6, 1)], ids=["MHA", "GQA", "MQA"])
def test_llama_block_matches_hf_decoder_layer_float32(H, Hkv):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    C, T, B = 16 * H, 9, 2
    cfg = LlamaConfig(hidden_size=C, num_attention_heads=H, num_key_value_heads=Hkv, intermediate_size=80,
                      rms_norm_eps=1e-5, rope_theta=10000.0)
    cfg._attn_implementation = "eager"
    hf = LlamaDecoderLayer(cfg, 0)
    ours = llama_block(C, H, Hkv, 80, seed=5)
    hf.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict(split_fused=True).items()})
    r = np.random.default_rng(6)
    x, g = r.standard_normal((B, T, C)).astype(np.float32), r.standard_normal((B, T, C)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    cos, sin = LlamaRotaryEmbedding(cfg)(xt, torch.arange(T)[None])
    yt = hf(xt, attention_mask=torch.full((T, T), float("-inf")).triu(1)[None, None], position_embeddings=(cos, sin))
    yt.backward(torch.tensor(g))
    out, dx = _run(ours, x, g)
    assert out.dtype == np.float32
    assert_close(out.data, yt.detach().numpy(), np.float32, "out")
    assert_close(dx, xt.grad.numpy(), np.float32, "dx")
    grads = named_grads(ours)
    for name, p in hf.named_parameters():
        assert_close(grads[name], p.grad.numpy(), np.float32, f"d{name}")


def torch_llama_block(sd, x, H, Hkv, base, eps=1e-5):
    """The Llama block in plain torch, float64-exact (HF's own runs its RMSNorm/softmax in float32)."""
    F = torch.nn.functional
    B, T, C = x.shape
    Dh = C // H
    inv = 1.0 / base ** (torch.arange(0, Dh, 2, dtype=x.dtype) / Dh)
    ang = torch.arange(T, dtype=x.dtype)[:, None] * inv
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(t):
        t1, t2 = t[..., : Dh // 2], t[..., Dh // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    h = F.rms_norm(x, (C,), sd["input_layernorm.weight"], eps)
    q = rope(F.linear(h, sd["self_attn.q_proj.weight"]).view(B, T, H, Dh).transpose(1, 2))
    k = rope(F.linear(h, sd["self_attn.k_proj.weight"]).view(B, T, Hkv, Dh).transpose(1, 2))
    v = F.linear(h, sd["self_attn.v_proj.weight"]).view(B, T, Hkv, Dh).transpose(1, 2)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv)
    x = x + F.linear(a.transpose(1, 2).reshape(B, T, C), sd["self_attn.o_proj.weight"])
    h = F.rms_norm(x, (C,), sd["post_attention_layernorm.weight"], eps)
    return x + F.linear(F.silu(F.linear(h, sd["mlp.gate_proj.weight"])) * F.linear(h, sd["mlp.up_proj.weight"]),
                        sd["mlp.down_proj.weight"])


@needs_torch
@pytest.mark.parametrize("H,Hkv", [(4, 4), (8, 2), (4, 1)], ids=["MHA", "GQA", "MQA"])
def test_llama_block_matches_torch_reference_float64(H, Hkv):
    C, T, B = 8 * H, 13, 3
    ours = llama_block(C, H, Hkv, 72, base=100000.0, seed=7, dtype=np.float64)
    sd = _to_torch(ours.state_dict(split_fused=True), np.float64)
    r = np.random.default_rng(8)
    x, g = r.standard_normal((B, T, C)), r.standard_normal((B, T, C))
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_llama_block(sd, xt, H, Hkv, 100000.0)
    yt.backward(torch.tensor(g))
    out, dx = _run(ours, x, g)
    assert_close(out.data, yt.detach().numpy(), np.float64, "out")
    assert_close(dx, xt.grad.numpy(), np.float64, "dx")
    for name, grad in named_grads(ours).items():
        assert_close(grad, sd[name].grad.numpy(), np.float64, f"d{name}")


# --------------------------------------------------------------------------------------------
# The post-norm block vs torch.nn.TransformerEncoderLayer
# --------------------------------------------------------------------------------------------
def encoder_layer_state_dict(sd: dict) -> dict:
    """litetorch post-norm block names -> TransformerEncoderLayer names (q, k, v packed in in_proj)."""
    a = "self_attn."
    return {
        "self_attn.in_proj_weight": sd[a + "qkv_proj.weight"],  # torch fuses q, k, v the same way
        "self_attn.in_proj_bias": sd[a + "qkv_proj.bias"],
        "self_attn.out_proj.weight": sd[a + "o_proj.weight"], "self_attn.out_proj.bias": sd[a + "o_proj.bias"],
        "linear1.weight": sd["mlp.fc1.weight"], "linear1.bias": sd["mlp.fc1.bias"],
        "linear2.weight": sd["mlp.fc2.weight"], "linear2.bias": sd["mlp.fc2.bias"],
        "norm1.weight": sd["norm1.weight"], "norm1.bias": sd["norm1.bias"],
        "norm2.weight": sd["norm2.weight"], "norm2.bias": sd["norm2.bias"],
    }


def post_norm_block(d_model=32, n_heads=4, hidden=64, activation="relu", seed=9, dtype=None):
    blk = nn.DecoderBlock(d_model, n_heads, hidden=hidden, norm="layer", prenorm=False, mlp=activation, bias=True)
    return _randomize(blk, seed, dtype)


@needs_torch
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_post_norm_block_matches_transformer_encoder_layer(activation, dtype):
    C, H, T, B = 32, 4, 10, 2
    ours = post_norm_block(C, H, 64, activation, dtype=dtype)
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    ref = torch.nn.TransformerEncoderLayer(C, H, dim_feedforward=64, dropout=0.0, activation=activation,
                                           batch_first=True, norm_first=False, dtype=tdt)
    ref.load_state_dict({k: torch.tensor(v) for k, v in encoder_layer_state_dict(ours.state_dict()).items()})
    r = np.random.default_rng(10)
    x, g = r.standard_normal((B, T, C)).astype(dtype), r.standard_normal((B, T, C)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt, src_mask=torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=tdt), is_causal=True)
    yt.backward(torch.tensor(g))
    out, dx = _run(ours, x, g)
    assert out.dtype == dtype
    assert_close(out.data, yt.detach().numpy(), dtype, "out")
    assert_close(dx, xt.grad.numpy(), dtype, "dx")
    grads = {n: p.grad.numpy() for n, p in ref.named_parameters()}
    mine = encoder_layer_state_dict({n: p.grad for n, p in ours.named_parameters()})
    for name, gr in grads.items():
        assert_close(mine[name], gr, dtype, f"d{name}")


# --------------------------------------------------------------------------------------------
# Cached decoding equals the full forward
# --------------------------------------------------------------------------------------------
def stack(n_layers, C, H, Hkv, seed=11, prenorm=True):
    if prenorm:
        return [llama_block(C, H, Hkv, 2 * C, seed=seed + i) for i in range(n_layers)]
    return [post_norm_block(C, H, 2 * C, "gelu", seed=seed + i) for i in range(n_layers)]


def run_stack(blocks, x, caches=None):
    for i, blk in enumerate(blocks):
        x = blk(x, cache=None if caches is None else caches[i])
    return x


@pytest.mark.parametrize("H,Hkv,prenorm", [(4, 4, True), (6, 2, True), (4, 1, True), (4, 4, False)],
                         ids=["MHA", "GQA", "MQA", "post-norm-MHA"])
def test_cached_decode_equals_full_forward(H, Hkv, prenorm):
    C, T, k, B, L = 8 * H, 12, 5, 2, 3
    blocks = stack(L, C, H, Hkv, prenorm=prenorm)
    x = np.random.default_rng(12).standard_normal((B, T, C)).astype(np.float32)
    with lt.no_grad():
        full = run_stack(blocks, lt.tensor(x)).data  # all T tokens at once, causal mask
        caches = nn.make_caches(L, B, Hkv, 32, C // H)
        steps = [run_stack(blocks, lt.tensor(x[:, :k]), caches).data]  # prefill k tokens
        assert caches.length == k
        for t in range(k, T):  # then one token at a time
            step = run_stack(blocks, lt.tensor(x[:, t:t + 1]), caches)
            assert step.shape == (B, 1, C) and caches.length == t + 1  # forwarded one token; cache grew
            steps.append(step.data)
    cached = np.concatenate(steps, axis=1)
    assert cached.dtype == np.float32
    assert_close(cached, full, np.float32, "cached vs full")


def test_decode_without_the_cache_would_differ():
    """The cache is really read: one token alone (no past keys) gives a different answer."""
    blocks = stack(2, 32, 4, 2)
    x = np.random.default_rng(13).standard_normal((1, 6, 32)).astype(np.float32)
    with lt.no_grad():
        caches = nn.make_caches(2, 1, 2, 8, 8)
        run_stack(blocks, lt.tensor(x[:, :5]), caches)
        with_cache = run_stack(blocks, lt.tensor(x[:, 5:]), caches).data
        alone = run_stack(blocks, lt.tensor(x[:, 5:])).data
        full = run_stack(blocks, lt.tensor(x)).data[:, 5:]
    assert np.abs(with_cache - full).max() < 1e-5
    assert np.abs(alone - full).max() > 1e-2


def test_attention_errors_leave_the_cache_unchanged():
    attn = nn.MultiHeadAttention(32, 4, 2, rope=nn.RotaryEmbedding(8))
    cache = nn.KVCache(1, 2, 6, 8)
    with lt.no_grad():
        attn(lt.randn(1, 4, 32), cache=cache)
    state = (len(cache), cache.k.copy(), cache.v.copy())

    def unchanged():
        assert len(cache) == state[0]
        np.testing.assert_array_equal(cache.k, state[1])
        np.testing.assert_array_equal(cache.v, state[2])

    with pytest.raises(ShapeError, match=r"\(1, 4, 1, 5\)"):  # mask for Tk = 4, but Tk = 4 + 1
        attn(lt.randn(1, 1, 32), attn_mask=np.ones((1, 4), bool), cache=cache)
    unchanged()
    with pytest.raises(CacheError, match="overflow"):
        attn(lt.randn(1, 3, 32), cache=cache)
    unchanged()
    with pytest.raises(DTypeError):  # float64 input into float32 weights: fails at the first matmul
        attn(lt.randn(1, 1, 32, dtype=np.float64), cache=cache)
    unchanged()
    with pytest.raises(CacheError, match=r"\[1, 3, T_new, 8\]"):  # a cache built for 3 kv heads
        attn(lt.randn(1, 1, 32), cache=nn.KVCache(1, 3, 6, 8))
    with pytest.raises(CacheError, match="holds float64"):
        attn(lt.randn(1, 1, 32), cache=nn.KVCache(1, 2, 6, 8, dtype=np.float64))
    with pytest.raises(CacheError, match=r"\[2, 2, T_new, 8\]"):  # batch 1 into a batch-2 cache
        attn(lt.randn(1, 1, 32), cache=nn.KVCache(2, 2, 6, 8))


def test_float32_stack_stays_float32_everywhere():
    """The NumPy-2 promotion trap: one float64 scalar would silently upcast everything after it."""
    blocks = stack(2, 32, 4, 2)
    model = nn.ModuleList(blocks)
    x = lt.randn(1, 5, 32)
    with capture(model) as seen, lt.no_grad():
        caches = nn.make_caches(2, 1, 2, 8, 8)
        run_stack(blocks, x, caches)
        run_stack(blocks, lt.randn(1, 1, 32), caches)
    assert len(seen) > 10
    bad = {k: v.dtype for k, v in seen.items() if v.dtype != np.float32}
    assert not bad, f"upcast in {bad}"


def test_block_names_match_hf_llama_and_torch_encoder_layer():
    llama = nn.DecoderBlock(64, 4, 2, 96, rope=nn.RotaryEmbedding(16))
    assert set(llama.state_dict()) == {
        "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.qkv_proj.weight",
        "self_attn.o_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight"}
    assert list(llama.state_dict(split_fused=True)) == [  # HF LlamaDecoderLayer's names, in its order
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
        "input_layernorm.weight", "post_attention_layernorm.weight"]
    post = nn.DecoderBlock(32, 4, norm="layer", prenorm=False, mlp="relu", bias=True)
    assert {"norm1.weight", "norm2.bias", "mlp.fc1.weight", "self_attn.qkv_proj.bias"} <= set(post.state_dict())


# --------------------------------------------------------------------------------------------
# Against the committed fixture (runs without torch)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fx():
    if not FIXTURE.exists():
        pytest.skip(f"{FIXTURE} missing: run python tests/fixtures/make_fixtures_blocks.py")
    with np.load(FIXTURE) as f:  # never allow_pickle
        return {k: f[k] for k in f.files}


def _weights(fx, prefix):
    return {k[len(prefix):]: v for k, v in fx.items() if k.startswith(prefix)}


def test_fixture_metadata(fx):
    assert "torch" in str(fx["meta.versions"]) and str(fx["meta.script"]).endswith("make_fixtures_blocks.py")


def test_fixture_sdpa(fx):
    for name in ("sdpa_gqa_causal_f64", "sdpa_mask_f32"):
        p = name + "."
        dt = fx[p + "q"].dtype
        q, k, v = (lt.tensor(fx[p + n], requires_grad=True) for n in "qkv")
        mask = fx[p + "mask"] if p + "mask" in fx else None
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=bool(fx[p + "causal"]),
                                                         enable_gqa=True)
        out.backward(fx[p + "grad_out"])
        assert_close(out.data, fx[p + "out"], dt.type, name)
        for n, t in zip("qkv", (q, k, v)):
            assert_close(t.grad, fx[p + "grad_" + n], dt.type, f"{name} d{n}")


def test_fixture_rope(fx):
    for pairing in ("half", "interleaved"):
        p = f"rope_{pairing}."
        x = lt.tensor(fx[p + "x"], requires_grad=True)
        rope = nn.RotaryEmbedding(x.shape[-1], base=float(fx[p + "base"]), pairing=pairing)
        out = rope(x, offset=int(fx[p + "offset"]))
        out.backward(fx[p + "grad_out"])
        assert_close(out.data, fx[p + "out"], x.dtype.type, pairing)
        assert_close(x.grad, fx[p + "grad_x"], x.dtype.type, pairing + " dx")


@pytest.mark.parametrize("name", ["llama_block_f32", "llama_block_f64", "postnorm_block_f64"])
def test_fixture_blocks(fx, name):
    p = name + "."
    cfg = {k[len(p + "cfg."):]: int(v) for k, v in fx.items() if k.startswith(p + "cfg.")}
    dt = fx[p + "x"].dtype
    if name.startswith("llama"):
        blk = nn.DecoderBlock(cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["hidden"],
                              rope=nn.RotaryEmbedding(cfg["d_model"] // cfg["n_heads"], float(fx[p + "base"])))
        blk.to(dt).load_state_dict(_weights(fx, p + "w."))
    else:
        blk = nn.DecoderBlock(cfg["d_model"], cfg["n_heads"], hidden=cfg["hidden"], norm="layer", prenorm=False,
                              mlp="relu", bias=True)
        w = _weights(fx, p + "w.")
        inv = {"self_attn." + n + "_proj." + kind: np.split(w["self_attn.in_proj_" + kind], 3)[i]
               for i, n in enumerate("qkv") for kind in ("weight", "bias")}
        inv.update({"self_attn.o_proj.weight": w["self_attn.out_proj.weight"],
                    "self_attn.o_proj.bias": w["self_attn.out_proj.bias"],
                    **{f"mlp.fc{i}.{kind}": w[f"linear{i}.{kind}"] for i in (1, 2) for kind in ("weight", "bias")},
                    **{k: v for k, v in w.items() if k.startswith("norm")}})
        blk.to(dt).load_state_dict(inv)
    out, dx = _run(blk, fx[p + "x"], fx[p + "grad_out"])
    assert out.dtype == dt
    assert_close(out.data, fx[p + "out"], dt.type, name)
    assert_close(dx, fx[p + "grad_x"], dt.type, name + " dx")
