"""Scaled dot-product attention and MultiHeadAttention (MHA / GQA / MQA) against PyTorch.

Claims:
- SDPA equals torch.nn.functional.scaled_dot_product_attention, forward and backward, over a
  sampled grid of shapes, head groupings, masks (bool, float, none), causal or not, Tq <= Tk
  (our causal mask is bottom-right aligned; torch gets the same mask written out explicitly).
- MultiHeadAttention equals HF LlamaAttention (float32) and a PyTorch reference (float64) with
  weights copied through state_dict, for MHA, GQA and MQA.
- Bad input raises ShapeError / DTypeError naming the expected and actual values.
"""
import math
import zlib

import numpy as np
import pytest

import litetorch as lt
import litetorch.nn.functional as F
from litetorch import nn
from litetorch.errors import DTypeError, ShapeError
from litetorch.testing import named_grads

try:
    import torch
except ImportError:  # parity then comes from tests/fixtures/blocks.npz (see test_blocks.py)
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed; live parity tests skipped")

TOL = {np.float64: 1e-10, np.float32: 1e-5}


def assert_close(ours, ref, dtype, what=""):
    """float64: max abs error <= 1e-10; float32: max abs error <= 1e-5 * max(max|ref|, 1).

    The floor of 1 is the scale of the inputs (standard normal): a gradient that is exactly 0 in
    exact arithmetic (e.g. dq when there is a single key) is rounding noise in both libraries."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    err = np.abs(ours - ref).max() if ref.size else 0.0
    bound = TOL[dtype] * (1.0 if dtype == np.float64 else max(np.abs(ref).max(), 1.0))
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"
    return err


def bottom_right(Tq, Tk):
    """The causal mask we implement, written out independently: query i is position Tk - Tq + i."""
    return np.tril(np.ones((Tq, Tk), dtype=bool), k=Tk - Tq)


# --------------------------------------------------------------------------------------------
# SDPA vs torch over a sampled grid
# --------------------------------------------------------------------------------------------
def _grid(n=40, seed=1234):
    """A fixed random sample of the grid (batch 1-3, T 1-64, H 1-12, every Hkv | H, Dh 8-64,
    causal or not, mask none/bool/float, Tq <= Tk) so the whole file stays fast."""
    r = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        H = int(r.integers(1, 13))
        divisors = [d for d in range(1, H + 1) if H % d == 0]
        Hkv = divisors[i % len(divisors)]
        Tk = int(r.choice([1, 2, 5, 16, 33, 64]))
        Tq = Tk if i % 3 else int(r.integers(1, Tk + 1))  # a third of the cases: q shorter than k
        cases.append(dict(B=int(r.integers(1, 4)), H=H, Hkv=Hkv, Tq=Tq, Tk=Tk, Dh=int(r.choice([8, 16, 24, 64])),
                          causal=bool(i % 2), mask=("none", "bool", "float")[i % 3 if i % 5 else (i // 5) % 3],
                          dtype=(np.float64, np.float32)[i % 2 if i % 7 else 1 - i % 2]))
    return cases


GRID = _grid()


def _inputs(c, seed):
    r = np.random.default_rng(seed)
    dt = c["dtype"]
    q = r.standard_normal((c["B"], c["H"], c["Tq"], c["Dh"])).astype(dt)
    k = r.standard_normal((c["B"], c["Hkv"], c["Tk"], c["Dh"])).astype(dt)
    v = r.standard_normal((c["B"], c["Hkv"], c["Tk"], c["Dh"])).astype(dt)
    g = r.standard_normal((c["B"], c["H"], c["Tq"], c["Dh"])).astype(dt)
    mask = None
    if c["mask"] == "bool":
        mask = r.random((c["B"], 1, c["Tq"], c["Tk"])) > 0.3  # per batch, shared by heads
    elif c["mask"] == "float":
        mask = (r.standard_normal((c["Tq"], c["Tk"])) * 2).astype(dt)
        mask[r.random((c["Tq"], c["Tk"])) < 0.2] = -np.inf
    return q, k, v, g, mask


def _torch_sdpa(q, k, v, g, mask, causal):
    """torch reference with our causal convention made explicit (torch forbids mask + is_causal)."""
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    Tq, Tk = q.shape[-2], k.shape[-2]
    m = None if mask is None else torch.tensor(mask)
    if causal:
        cm = torch.tensor(bottom_right(Tq, Tk))
        if m is None:
            m = cm
        elif m.dtype == torch.bool:
            m = m & cm
        else:
            m = m.masked_fill(~cm, float("-inf"))
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=m,
                                                           enable_gqa=q.shape[1] != k.shape[1])
    out.backward(torch.tensor(g))
    return out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()


@needs_torch
@pytest.mark.parametrize("c", GRID, ids=[f"B{c['B']}H{c['H']}kv{c['Hkv']}q{c['Tq']}k{c['Tk']}d{c['Dh']}"
                                        f"{'C' if c['causal'] else ''}-{c['mask']}-{np.dtype(c['dtype']).name}"
                                        for c in GRID])
def test_sdpa_matches_torch_forward_and_backward(c):
    q, k, v, g, mask = _inputs(c, seed=zlib.crc32(str(c).encode()))  # stable across runs
    ref_out, ref_gq, ref_gk, ref_gv = _torch_sdpa(q, k, v, g, mask, c["causal"])

    tq, tk, tv = (lt.tensor(a, requires_grad=True) for a in (q, k, v))
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask, is_causal=c["causal"],
                                         enable_gqa=c["H"] != c["Hkv"])
    assert out.dtype == c["dtype"]
    out.backward(g)
    dt = c["dtype"]
    assert_close(out.data, ref_out, dt, "out")
    assert_close(tq.grad, ref_gq, dt, "dq")
    assert_close(tk.grad, ref_gk, dt, "dk")
    assert_close(tv.grad, ref_gv, dt, "dv")


@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_causal_equals_torch_is_causal_when_tq_equals_tk(dtype):
    """With Tq == Tk both alignments are the same lower triangle, so torch's own is_causal agrees."""
    r = np.random.default_rng(0)
    q, k, v = (r.standard_normal((2, 4, 17, 16)).astype(dtype) for _ in range(3))
    ours = F.scaled_dot_product_attention(lt.tensor(q), lt.tensor(k), lt.tensor(v), is_causal=True)
    ref = torch.nn.functional.scaled_dot_product_attention(*(torch.tensor(a) for a in (q, k, v)), is_causal=True)
    assert_close(ours.data, ref.numpy(), dtype, "causal Tq == Tk")


@pytest.mark.parametrize("Tq,Tk", [(1, 1), (4, 4), (1, 10), (3, 5), (5, 3), (7, 64)])
def test_causal_mask_is_the_lower_triangle_aligned_bottom_right(Tq, Tk):
    """Query i is position Tk - Tq + i and sees keys up to there: np.tril shifted by Tk - Tq (written out
    by hand in `bottom_right`). A decode step (Tq = 1) sees every key; Tq > Tk hides all keys from the
    first Tq - Tk queries."""
    mask = nn.causal_mask(Tq, Tk)
    assert mask.dtype == np.bool_ and mask.shape == (Tq, Tk)
    np.testing.assert_array_equal(mask, bottom_right(Tq, Tk))
    if Tq == 1:
        assert mask.all()
    if Tq > Tk:
        assert not mask[:Tq - Tk].any()


def test_decode_step_sees_every_cached_key():
    """One query after 9 cached keys (Tq=1, Tk=10): bottom-right causal masks nothing, so the
    result equals no mask at all. (torch's top-left is_causal would let it see key 0 only.)"""
    r = np.random.default_rng(1)
    q, k, v = r.standard_normal((1, 2, 1, 8)), r.standard_normal((1, 2, 10, 8)), r.standard_normal((1, 2, 10, 8))
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    free = F.scaled_dot_product_attention(q, k, v)
    np.testing.assert_array_equal(causal.data, free.data)
    assert nn.causal_mask(1, 10).all()
    np.testing.assert_array_equal(nn.causal_mask(3, 5), bottom_right(3, 5))


def test_sdpa_from_scratch_formula():
    """Independent reference without torch: softmax(q k^T / sqrt(Dh) + causal) v in float64 NumPy."""
    r = np.random.default_rng(2)
    q, k, v = r.standard_normal((2, 3, 6, 8)), r.standard_normal((2, 3, 6, 8)), r.standard_normal((2, 3, 6, 8))
    s = q @ k.swapaxes(-1, -2) / math.sqrt(8)
    s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert np.abs(out.data - p @ v).max() < 1e-12


@needs_torch
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_row_gives_zeros_like_torch(kind):
    """A query that may see no key at all gets output 0 and gradient 0 (torch 2.13 does the same;
    older torch gave NaN for -inf float masks)."""
    r = np.random.default_rng(3)
    q, k, v = (r.standard_normal((1, 2, 4, 8)) for _ in range(3))
    keep = np.ones((4, 4), bool)
    keep[2] = False  # row 2 sees nothing
    mask = keep if kind == "bool" else np.where(keep, 0.0, -np.inf)
    tq = lt.tensor(q, requires_grad=True)
    out = F.scaled_dot_product_attention(tq, k, v, attn_mask=mask)
    out.sum().backward()
    assert np.all(out.data[:, :, 2] == 0) and np.all(tq.grad[:, :, 2] == 0)
    assert np.all(np.isfinite(out.data)) and np.all(np.isfinite(tq.grad))
    q_t = torch.tensor(q, requires_grad=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q_t, torch.tensor(k), torch.tensor(v),
                                                           attn_mask=torch.tensor(mask))
    ref.sum().backward()
    assert_close(out.data, ref.detach().numpy(), np.float64, "out")
    assert_close(tq.grad, q_t.grad.numpy(), np.float64, "dq")


def test_causal_with_more_queries_than_keys_masks_leading_rows():
    """Tq > Tk: bottom-right alignment puts the first Tq - Tk queries before every key: zero rows."""
    r = np.random.default_rng(4)
    out = F.scaled_dot_product_attention(r.standard_normal((1, 1, 5, 4)), r.standard_normal((1, 1, 3, 4)),
                                         r.standard_normal((1, 1, 3, 4)), is_causal=True)
    assert np.all(out.data[0, 0, :2] == 0) and np.all(out.data[0, 0, 2:] != 0)


def test_extreme_scores_stay_finite():
    """Scores of +-1e4 (stable softmax: the row max is subtracted before exp)."""
    q = np.full((1, 1, 2, 4), 100.0, dtype=np.float32)
    k = np.array([[[[100.0] * 4, [-100.0] * 4]]], dtype=np.float32)
    v = np.array([[[[1.0] * 4, [2.0] * 4]]], dtype=np.float32)
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # scores +-4e4
    assert np.all(np.isfinite(out.data)) and np.allclose(out.data, 1.0)


def test_float32_stays_float32_and_scale_is_a_python_float():
    """NumPy-2 trap: a float64 scalar scale would upcast every score. Also an explicit np.float64 scale."""
    r = np.random.default_rng(5)
    q, k, v = (r.standard_normal((1, 2, 3, 64)).astype(np.float32) for _ in range(3))
    assert F.scaled_dot_product_attention(q, k, v).dtype == np.float32
    assert F.scaled_dot_product_attention(q, k, v, scale=np.float64(0.125)).dtype == np.float32


def test_dropout_on_attention_weights():
    r = np.random.default_rng(6)
    q, k, v = (r.standard_normal((1, 1, 4, 8)) for _ in range(3))
    assert np.all(F.scaled_dot_product_attention(q, k, v, dropout_p=1.0).data == 0)
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=lt.Generator(7))
    b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=lt.Generator(7))
    np.testing.assert_array_equal(a.data, b.data)  # seeded: reproducible
    assert not np.allclose(a.data, F.scaled_dot_product_attention(q, k, v).data)


def _sdpa_from_ops(q, k, v, mask=None, is_causal=False, dropout_p=0.0, generator=None):
    """SDPA composed from litetorch Tensor ops (autograd derives the backward): the reference for
    the hand-written backward of the one-op version. GQA by repeat_kv."""
    G = q.shape[-3] // k.shape[-3]
    k, v = nn.attention.repeat_kv(k, G), nn.attention.repeat_kv(v, G)
    s = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
    if is_causal:
        s = s.masked_fill(~nn.causal_mask(q.shape[-2], k.shape[-2]), float("-inf"))
    if mask is not None:
        s = s + mask
    w = s.softmax(-1)
    if dropout_p:
        w = F.dropout(w, dropout_p, training=True, generator=generator)
    return w @ v


@pytest.mark.parametrize("dropout_p", [0.0, 0.4])
def test_sdpa_hand_backward_equals_autograd_of_the_composed_ops(dropout_p):
    """GQA, causal with past keys, a float mask that itself needs a gradient, and dropout: the
    one-op SDPA (hand-written backward) gives the same output and gradients as autograd through
    the composed ops, and passes a finite-difference gradcheck."""
    r = np.random.default_rng(11)
    shapes = {"q": (2, 6, 3, 8), "k": (2, 2, 5, 8), "v": (2, 2, 5, 4), "mask": (1, 6, 3, 5)}
    vals = {n: r.standard_normal(s) for n, s in shapes.items()}
    g = r.standard_normal((2, 6, 3, 4))
    grads = []
    for fn in (lambda *a: F.scaled_dot_product_attention(*a[:3], attn_mask=a[3], is_causal=True, enable_gqa=True,
                                                          dropout_p=dropout_p, generator=lt.Generator(3)),
               lambda *a: _sdpa_from_ops(*a, is_causal=True, dropout_p=dropout_p, generator=lt.Generator(3))):
        ts = [lt.tensor(vals[n], requires_grad=True) for n in shapes]
        out = fn(*ts)
        out.backward(g)
        grads.append([out.data] + [t.grad for t in ts])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
    ts = [lt.tensor(vals[n], requires_grad=True) for n in shapes]
    assert lt.testing.gradcheck(lambda *a: F.scaled_dot_product_attention(
        *a[:3], attn_mask=a[3], is_causal=True, enable_gqa=True, dropout_p=dropout_p,
        generator=lt.Generator(3)), *ts)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_sdpa_errors_name_expected_and_actual():
    r = np.random.default_rng(7)
    q = r.standard_normal((1, 9, 4, 8)).astype(np.float32)
    k = r.standard_normal((1, 2, 4, 8)).astype(np.float32)
    with pytest.raises(ShapeError, match="q has 9 heads but k has 2"):
        F.scaled_dot_product_attention(q, k, k, enable_gqa=True)
    with pytest.raises(ShapeError, match="enable_gqa=True"):
        F.scaled_dot_product_attention(q, r.standard_normal((1, 3, 4, 8)).astype(np.float32),
                                       r.standard_normal((1, 3, 4, 8)).astype(np.float32))
    with pytest.raises(ShapeError, match="head dim Dh: q has 8.*k has 16"):
        F.scaled_dot_product_attention(q, q[..., :2].repeat(8, -1), q)
    with pytest.raises(ShapeError, match=r"does not broadcast to the attention scores .* \(1, 9, 4, 4\)"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((4, 5), bool))
    with pytest.raises(ShapeError, match="does not broadcast"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((2, 9, 4, 4), bool))  # would enlarge B
    with pytest.raises(DTypeError, match="float32, k float64"):
        F.scaled_dot_product_attention(q, q.astype(np.float64), q)
    with pytest.raises(DTypeError, match="float attn_mask has dtype float64 but q/k/v are float32"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=np.zeros((4, 4)))
    with pytest.raises(ShapeError, match="k and v must agree"):
        F.scaled_dot_product_attention(q, q, q[:, :, :3])


# --------------------------------------------------------------------------------------------
# repeat_kv
# --------------------------------------------------------------------------------------------
def test_repeat_kv_is_repeat_interleave():
    r = np.random.default_rng(8)
    k = r.standard_normal((2, 3, 5, 4))
    rep = nn.repeat_kv(lt.tensor(k), 4).data
    np.testing.assert_array_equal(rep, np.repeat(k, 4, axis=1))  # head j*4 + i is kv head j
    np.testing.assert_array_equal(nn.repeat_kv(lt.tensor(k), 1).data, k)


def test_gqa_equals_attention_over_repeated_kv_heads():
    """enable_gqa broadcasts each kv head over its group of H / Hkv query heads; writing the copies out
    with np.repeat (head j*4 + i is kv head j) and running plain multi-head attention gives the same."""
    r = np.random.default_rng(8)
    q, k, v = r.standard_normal((2, 12, 5, 4)), r.standard_normal((2, 3, 5, 4)), r.standard_normal((2, 3, 5, 4))
    grouped = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).data
    repeated = F.scaled_dot_product_attention(q, np.repeat(k, 4, axis=1), np.repeat(v, 4, axis=1), is_causal=True).data
    assert np.abs(grouped - repeated).max() < 1e-12


# --------------------------------------------------------------------------------------------
# MultiHeadAttention vs HF LlamaAttention (float32) and a torch reference (float64)
# --------------------------------------------------------------------------------------------
def torch_attention_reference(sd, x, n_heads, n_kv_heads, cos=None, sin=None, mask=None, causal=True):
    """Llama attention written directly in torch (float64-exact, unlike HF's float32 softmax)."""
    B, T, C = x.shape
    lin = lambda name, h: torch.nn.functional.linear(h, sd[f"{name}.weight"], sd.get(f"{name}.bias"))
    Dh = sd["q_proj.weight"].shape[0] // n_heads
    q = lin("q_proj", x).view(B, T, n_heads, Dh).transpose(1, 2)
    k = lin("k_proj", x).view(B, T, n_kv_heads, Dh).transpose(1, 2)
    v = lin("v_proj", x).view(B, T, n_kv_heads, Dh).transpose(1, 2)
    if cos is not None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
    v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
    return lin("o_proj", y.transpose(1, 2).reshape(B, T, n_heads * Dh))


def _hf_attention(C, H, Hkv, base, bias):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
    cfg = LlamaConfig(hidden_size=C, num_attention_heads=H, num_key_value_heads=Hkv, intermediate_size=4 * C,
                      rope_theta=base, attention_bias=bias, max_position_embeddings=256)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return LlamaAttention(cfg, layer_idx=0).eval(), LlamaRotaryEmbedding(cfg)


@needs_torch
@pytest.mark.parametrize("H,Hkv,bias", [(4, 4, False), (6, 2, True), (8, 1, False), (9, 3, False)],
                         ids=["MHA", "GQA-bias", "MQA", "GQA-smollm2-shape"])
def test_attention_matches_hf_llama_attention_float32(H, Hkv, bias):
    C, B, T, base = 16 * H, 2, 11, 10000.0
    hf, hf_rope = _hf_attention(C, H, Hkv, base, bias)
    ours = nn.MultiHeadAttention(C, H, Hkv, bias=bias, rope=nn.RotaryEmbedding(C // H, base=base))
    ours.load_state_dict({k: v.detach().numpy() for k, v in hf.state_dict().items()})

    x = np.random.default_rng(9).standard_normal((B, T, C)).astype(np.float32)
    g = np.random.default_rng(10).standard_normal((B, T, C)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    cos, sin = hf_rope(xt, torch.arange(T)[None].expand(B, T))
    causal = torch.full((T, T), float("-inf")).triu(1)[None, None]
    ref, _ = hf(xt, position_embeddings=(cos, sin), attention_mask=causal)
    ref.backward(torch.tensor(g))

    xl = lt.tensor(x, requires_grad=True)
    out = ours(xl)
    out.backward(g)
    assert out.dtype == np.float32
    assert_close(out.data, ref.detach().numpy(), np.float32, "out")
    assert_close(xl.grad, xt.grad.numpy(), np.float32, "dx")
    grads = named_grads(ours)  # qkv_proj's gradient split into HF's q_proj / k_proj / v_proj
    for name, p in hf.named_parameters():
        assert_close(grads[name], p.grad.numpy(), np.float32, f"d{name}")


@needs_torch
@pytest.mark.parametrize("H,Hkv", [(4, 4), (12, 4), (6, 1)], ids=["MHA", "GQA", "MQA"])
def test_attention_matches_torch_reference_float64(H, Hkv):
    C, B, T, base = 8 * H, 3, 7, 500000.0
    ours = nn.MultiHeadAttention(C, H, Hkv, bias=True, rope=nn.RotaryEmbedding(8, base=base)).double()
    sd = {k: torch.tensor(v, requires_grad=True) for k, v in ours.state_dict(split_fused=True).items()}
    x = np.random.default_rng(11).standard_normal((B, T, C))
    xt = torch.tensor(x, requires_grad=True)
    inv = 1.0 / base ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv
    emb = torch.cat([ang, ang], -1)
    ref = torch_attention_reference(sd, xt, H, Hkv, emb.cos()[None], emb.sin()[None])
    ref.sum().backward()

    xl = lt.tensor(x, requires_grad=True)
    out = ours(xl)
    out.sum().backward()
    assert_close(out.data, ref.detach().numpy(), np.float64, "out")
    assert_close(xl.grad, xt.grad.numpy(), np.float64, "dx")
    for name, grad in named_grads(ours).items():
        assert_close(grad, sd[name].grad.numpy(), np.float64, f"d{name}")


@needs_torch
def test_attention_padding_mask_combined_with_causal():
    """attn_mask (a padding mask, True = real token) and is_causal=True both apply."""
    H, Hkv, C, B, T = 4, 2, 32, 2, 6
    ours = nn.MultiHeadAttention(C, H, Hkv).double()
    sd = {k: torch.tensor(v) for k, v in ours.state_dict(split_fused=True).items()}
    x = np.random.default_rng(12).standard_normal((B, T, C))
    pad = np.ones((B, 1, 1, T), bool)
    pad[1, ..., :2] = False  # sequence 1 is left-padded by 2
    both = torch.tensor(pad & bottom_right(T, T))
    ref = torch_attention_reference(sd, torch.tensor(x), H, Hkv, mask=both)
    out = ours(lt.tensor(x), attn_mask=pad, is_causal=True)
    assert_close(out.data, ref.numpy(), np.float64, "out")


def test_gqa_with_one_kv_head_is_mqa_and_kv_projection_sizes():
    mqa = nn.MultiHeadAttention(64, 8, 1)
    gqa = nn.MultiHeadAttention(64, 8, 2)
    mha = nn.MultiHeadAttention(64, 8)
    # qkv_proj's rows: H*Dh for q, then Hkv*Dh for k and for v
    assert mqa.qkv_proj.weight.shape == (64 + 2 * 8, 64) and gqa.qkv_proj.weight.shape == (64 + 2 * 16, 64)
    assert mha.qkv_proj.weight.shape == (3 * 64, 64) and "MQA" in repr(mqa) and "GQA" in repr(gqa)
    # GQA whose kv heads are copies of each other's groups equals MQA
    hf = mqa.state_dict(split_fused=True)
    gqa.load_state_dict({**hf, "k_proj.weight": np.tile(hf["k_proj.weight"], (2, 1)),
                         "v_proj.weight": np.tile(hf["v_proj.weight"], (2, 1))})
    x = lt.randn(2, 5, 64)
    assert np.abs(gqa(x).data - mqa(x).data).max() < 1e-6


def test_attention_constructor_errors():
    with pytest.raises(ShapeError, match="n_heads=9 must be a positive multiple of n_kv_heads=2"):
        nn.MultiHeadAttention(72, 9, 2)
    with pytest.raises(ShapeError, match="d_model=70 is not divisible by n_heads=8"):
        nn.MultiHeadAttention(70, 8)
    with pytest.raises(ShapeError, match="rope.head_dim=16 does not match the attention head_dim=8"):
        nn.MultiHeadAttention(64, 8, rope=nn.RotaryEmbedding(16))
    nn.MultiHeadAttention(70, 7, head_dim=16)  # explicit head_dim: H * Dh need not equal d_model
    with pytest.raises(ShapeError, match=r"\[B, T, C\] with C = d_model = 32"):
        nn.MultiHeadAttention(32, 4)(lt.randn(1, 3, 16))
