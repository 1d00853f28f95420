"""RoPE (both pairings), the GGUF <-> HF permutation, and the sinusoidal table.

Claims:
- apply_rope("half") equals HF's apply_rotary_pos_emb, forward and backward, float64 and float32.
- RotaryEmbedding's frequencies are within one ulp of HF LlamaRotaryEmbedding's (whose last bit depends on
  the CPU), and given the same frequencies the two agree in float32 up to position 8191.
- Both pairings equal the complex-number form x * e^{i p theta} (computed by torch in complex128).
- rope_interleaved(x @ W.T) is rope_half(x @ unpermute(W).T) with coordinates renamed, and every
  attention score q.k is the same.
- Partial rotary (`rotary_dim`, Qwen3-Next's partial_rotary_factor): the frequencies are HF's over rotary_dim
  (to one ulp), the first rotary_dim coordinates rotate and the rest pass through, forward and backward
  equal to HF's Qwen3-Next apply_rotary_pos_emb in float64 and float32.
"""
import numpy as np
import pytest

import litetorch as lt
from litetorch import nn
from litetorch.errors import ConfigError, DTypeError, ShapeError
from litetorch.nn.rope import rope_cos_sin, rope_frequencies, rotate_pairs

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed; live parity tests skipped")

TOL = {np.float64: 1e-10, np.float32: 1e-5}


def assert_close(ours, ref, dtype, what=""):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    err = np.abs(ours - ref).max()
    bound = TOL[dtype] * (1.0 if dtype == np.float64 else max(np.abs(ref).max(), 1.0))
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"
    return err


def hf_apply():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    return apply_rotary_pos_emb


# --------------------------------------------------------------------------------------------
# vs HF
# --------------------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B,H,T,Dh", [(1, 1, 1, 8), (2, 4, 17, 16), (3, 12, 64, 64)])
def test_apply_rope_half_matches_hf_forward_and_backward(dtype, B, H, T, Dh):
    r = np.random.default_rng(B * 100 + T)
    x = r.standard_normal((B, H, T, Dh)).astype(dtype)
    g = r.standard_normal((B, H, T, Dh)).astype(dtype)
    cos, sin = rope_cos_sin(np.arange(3, 3 + T), rope_frequencies(Dh, 10000.0, dtype), "half")
    xt = torch.tensor(x, requires_grad=True)
    ref, _ = hf_apply()(xt, xt.detach(), torch.tensor(cos)[None], torch.tensor(sin)[None])
    ref.backward(torch.tensor(g))
    xl = lt.tensor(x, requires_grad=True)
    out = nn.functional.apply_rope(xl, cos, sin, "half")
    out.backward(g)
    assert out.dtype == dtype
    assert_close(out.data, ref.detach().numpy(), dtype, "out")
    assert_close(xl.grad, xt.grad.numpy(), dtype, "dx")


@needs_torch
@pytest.mark.parametrize("Dh,base", [(64, 100000.0), (32, 10000.0), (128, 500000.0)])
def test_rotary_embedding_matches_hf_float32_at_large_positions(Dh, base):
    """Same float32 angles as HF, so even position 8000 agrees to float32 rounding.

    HF's theta_i comes from float32 `pow`, whose last bit depends on the CPU (AVX2 vs AVX-512);
    ours is the float32 nearest the true value (rope.py). So: the frequencies agree to one ulp, and
    with HF given our frequencies every position agrees to float32 rounding. Unpatched, they agree
    at small positions, where one ulp of theta_i moves no angle by more than float32 rounding."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    cfg = LlamaConfig(hidden_size=2 * Dh, num_attention_heads=2, rope_theta=base, max_position_embeddings=64)
    hf = LlamaRotaryEmbedding(cfg)
    rope = nn.RotaryEmbedding(Dh, base=base, max_position_embeddings=64)  # table grows past 64 on demand
    x = np.random.default_rng(0).standard_normal((1, 2, 12, Dh)).astype(np.float32)
    ours_inv, hf_inv = rope_frequencies(Dh, base), hf.inv_freq.numpy()
    assert ours_inv.dtype == hf_inv.dtype == np.float32
    ulps = np.abs(ours_inv.view(np.int32).astype(np.int64) - hf_inv.view(np.int32))  # floats between them
    assert ulps.max() <= 1, f"theta_i differ by up to {ulps.max()} ulp"

    def compare(offsets, what):
        for offset in offsets:
            pos = torch.arange(offset, offset + 12)[None]
            cos, sin = hf(torch.tensor(x), pos)
            ref, _ = hf_apply()(torch.tensor(x), torch.tensor(x), cos, sin)
            out = rope(lt.tensor(x), offset=offset)
            assert out.dtype == np.float32
            assert_close(out.data, ref.numpy(), np.float32, f"{what}, offset {offset}")

    compare((0, 63), "HF's own frequencies")
    hf.inv_freq.copy_(torch.from_numpy(ours_inv))
    compare((0, 63, 1000, 8180), "HF given our frequencies")


@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("Dh,factor", [(16, 0.25), (64, 0.5), (256, 0.25), (8, 1.0)])
def test_partial_rotary_matches_hf_qwen3_next_forward_and_backward(dtype, Dh, factor):
    """RotaryEmbedding(Dh, rotary_dim=int(Dh * factor)) is HF Qwen3NextRotaryEmbedding + apply_rotary_pos_emb."""
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRotaryEmbedding, apply_rotary_pos_emb
    rd = int(Dh * factor)
    cfg = Qwen3NextConfig(hidden_size=64, num_attention_heads=4, head_dim=Dh, max_position_embeddings=64,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": factor})
    hf = Qwen3NextRotaryEmbedding(cfg)
    rope = nn.RotaryEmbedding(Dh, base=10000.0, rotary_dim=rd)
    ulps = np.abs(rope_frequencies(rd, 10000.0).view(np.int32).astype(np.int64) - hf.inv_freq.numpy().view(np.int32))
    assert hf.inv_freq.shape == (rd // 2,) and ulps.max() <= 1
    r = np.random.default_rng(Dh)
    x, g = (r.standard_normal((2, 3, 9, Dh)).astype(dtype) for _ in range(2))
    offset = 5
    cos, sin = rope.cos_sin(9, offset, dtype=dtype)  # [T, rd]: ours, fed to HF so float64 stays float64
    xt = torch.tensor(x, requires_grad=True)
    ref, _ = apply_rotary_pos_emb(xt, xt.detach(), torch.tensor(cos)[None], torch.tensor(sin)[None])
    ref.backward(torch.tensor(g))
    xl = lt.tensor(x, requires_grad=True)
    out = rope(xl, offset=offset)
    out.backward(g)
    assert out.dtype == dtype and cos.shape == (9, rd)
    assert_close(out.data, ref.detach().numpy(), dtype, "out")
    assert_close(xl.grad, xt.grad.numpy(), dtype, "dx")
    np.testing.assert_array_equal(out.data[..., rd:], x[..., rd:])  # the unrotated part passes through
    if dtype == np.float32:  # and with HF's own float32 table (frequencies within one ulp): float32 rounding
        hcos, hsin = hf(torch.tensor(x), torch.arange(offset, offset + 9)[None])
        ref2, _ = apply_rotary_pos_emb(torch.tensor(x), torch.tensor(x), hcos, hsin)
        assert_close(out.data, ref2.numpy(), dtype, "vs HF's own table")


def test_rotary_dim_must_be_even_and_at_most_head_dim():
    with pytest.raises(ShapeError, match="rotary_dim must be an even integer"):
        nn.RotaryEmbedding(16, rotary_dim=3)
    for bad in (0, 18, 2.0, True):  # out of 2..head_dim, or not an int: checks.py's ConfigError
        with pytest.raises(ConfigError, match="rotary_dim"):
            nn.RotaryEmbedding(16, rotary_dim=bad)


@needs_torch
@pytest.mark.parametrize("Dh,base", [(32, 10000.0), (64, 100000.0), (128, 500000.0)])
def test_rope_frequencies_are_the_nearest_float32_to_the_true_values(Dh, base):
    """theta_i = base^(-2i/Dh) computed by torch in float64 and rounded once to float32: the same table on
    every CPU (float32 `pow` is not; see rope.py). Dh is a power of two, so 2i/Dh is exact in float32."""
    truth = (1.0 / base ** (torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)).float().numpy()
    assert np.array_equal(rope_frequencies(Dh, base), truth)


def _complex_reference(x, positions, base, pairing):
    """torch complex128: pair (a, b) is the complex number a + ib, rotated by multiplying e^{i p theta}."""
    Dh = x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    freqs_cis = torch.polar(torch.ones(len(positions), Dh // 2, dtype=torch.float64),
                            torch.tensor(positions, dtype=torch.float64)[:, None] * inv)  # [T, Dh/2]
    xt = torch.tensor(x)
    if pairing == "interleaved":  # Meta's llama: view_as_complex over (2i, 2i+1)
        z = torch.view_as_complex(xt.reshape(*xt.shape[:-1], Dh // 2, 2).contiguous())
        return torch.view_as_real(z * freqs_cis).flatten(-2).numpy()
    z = torch.complex(xt[..., : Dh // 2], xt[..., Dh // 2:])  # half: (i, i + Dh/2)
    w = z * freqs_cis
    return torch.cat([w.real, w.imag], dim=-1).numpy()


@needs_torch
@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_both_pairings_equal_the_complex_number_form_float64(pairing):
    x = np.random.default_rng(1).standard_normal((2, 3, 20, 16))
    rope = nn.RotaryEmbedding(16, base=10000.0, pairing=pairing)
    for offset in (0, 7, 3000):
        out = rope(lt.tensor(x), offset=offset)
        assert out.dtype == np.float64
        ref = _complex_reference(x, list(range(offset, offset + 20)), 10000.0, pairing)
        assert_close(out.data, ref, np.float64, f"{pairing} offset {offset}")


# --------------------------------------------------------------------------------------------
# Pairings and the permutation
# --------------------------------------------------------------------------------------------
def test_permute_and_unpermute_are_inverse():
    w = np.random.default_rng(2).standard_normal((9 * 64, 576))
    assert np.array_equal(nn.unpermute_qk(nn.permute_qk_to_interleaved(w, 9), 9), w)
    assert np.array_equal(nn.permute_qk_to_interleaved(nn.unpermute_qk(w, 9), 9), w)
    b = np.arange(3 * 8.0)
    assert np.array_equal(nn.unpermute_qk(b, 3)[:8], [0, 2, 4, 6, 1, 3, 5, 7])  # per head: evens then odds
    with pytest.raises(ShapeError, match="n_heads=4"):
        nn.unpermute_qk(np.zeros((10, 3)), 4)


def test_unpermute_matches_the_gguf_formula_of_design_md():
    n_head, head_dim, d_in = 3, 8, 5
    w = np.random.default_rng(3).standard_normal((n_head * head_dim, d_in))
    expect = w.reshape(n_head, head_dim // 2, 2, d_in).swapaxes(1, 2).reshape(n_head * head_dim, d_in)
    assert np.array_equal(nn.unpermute_qk(w, n_head), expect)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rope_interleaved_on_gguf_weights_equals_rope_half_on_unpermuted(dtype):
    """rope_interleaved(x @ W.T) == rope_half(x @ unpermute(W).T), up to renaming coordinates:
    applying the same per-head row permutation to the output vectors maps one onto the other,
    and the attention scores q.k (all that attention uses) are identical."""
    H, Dh, C, T = 3, 16, 24, 10
    r = np.random.default_rng(4)
    Wq, Wk = r.standard_normal((H * Dh, C)).astype(dtype), r.standard_normal((H * Dh, C)).astype(dtype)
    x = r.standard_normal((T, C)).astype(dtype)
    half, inter = nn.RotaryEmbedding(Dh, pairing="half"), nn.RotaryEmbedding(Dh, pairing="interleaved")

    def heads(y):  # [T, H*Dh] -> [1, H, T, Dh]
        return lt.tensor(y.reshape(T, H, Dh).transpose(1, 0, 2)[None].copy())

    q_i = inter(heads(x @ Wq.T), offset=5).data[0]  # GGUF layout, interleaved RoPE
    k_i = inter(heads(x @ Wk.T), offset=5).data[0]
    q_h = half(heads(x @ nn.unpermute_qk(Wq, H).T), offset=5).data[0]  # HF layout, half RoPE
    k_h = half(heads(x @ nn.unpermute_qk(Wk, H).T), offset=5).data[0]
    tol = 1e-10 if dtype == np.float64 else 1e-4
    # the same vectors with coordinates renamed: unpermute the interleaved output per head
    renamed = nn.unpermute_qk(q_i.transpose(1, 0, 2).reshape(T, H * Dh).T, H).T.reshape(T, H, Dh).transpose(1, 0, 2)
    assert np.abs(renamed - q_h).max() < tol
    scores_i, scores_h = q_i @ k_i.transpose(0, 2, 1), q_h @ k_h.transpose(0, 2, 1)
    assert np.abs(scores_i - scores_h).max() < tol * np.abs(scores_h).max()


def test_wrong_pairing_is_exact_at_distance_0_and_drifts_with_distance():
    """Why a model with the wrong RoPE pairing writes a good first token, then nonsense.

    Any pairing is still a rotation by position, so a score q_p . k_p' depends only on p - p'.
    At distance 0 (the first token, attending to itself) every pairing gives q . k exactly; the
    wrong pairing's error grows with distance, so the longer the context the worse it gets."""
    H, Dh, C, T = 2, 64, 16, 300
    r = np.random.default_rng(5)
    Wq, Wk = r.standard_normal((H * Dh, C)), r.standard_normal((H * Dh, C))
    x = r.standard_normal((1, T, C))
    rope_h, rope_i = nn.RotaryEmbedding(Dh, pairing="half"), nn.RotaryEmbedding(Dh, pairing="interleaved")

    def scores(rope):
        q, k = (rope(lt.tensor((x @ W.T).reshape(1, T, H, Dh).transpose(0, 2, 1, 3).copy())).data for W in (Wq, Wk))
        return (q @ k.transpose(0, 1, 3, 2))[0]  # [H, T, T]

    good, bad = scores(rope_h), scores(rope_i)  # HF-layout weights: half is right, interleaved wrong
    err = np.abs(good - bad).mean(0) / np.abs(good).mean()  # [T, T]
    dist = np.subtract.outer(np.arange(T), np.arange(T))
    by_distance = np.array([err[dist == d].mean() for d in range(T)])
    assert by_distance[0] < 1e-12  # position 0 / distance 0: cos = 1, sin = 0 for every pair
    assert 0 < by_distance[1] < 0.5 * by_distance[16:256].mean()


# --------------------------------------------------------------------------------------------
# Properties (no torch)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pairing", ["half", "interleaved"])
def test_rope_scores_depend_only_on_relative_position(pairing):
    r = np.random.default_rng(6)
    q, k = r.standard_normal(32), r.standard_normal(32)
    rope = nn.RotaryEmbedding(32, pairing=pairing)

    def at(v, p):
        return rope(lt.tensor(v.reshape(1, 1, 1, 32)), offset=p).data.ravel()

    s = [at(q, p + 3) @ at(k, p) for p in (0, 10, 500)]
    assert np.allclose(s, s[0], atol=1e-10)
    assert abs(np.linalg.norm(at(q, 77)) - np.linalg.norm(q)) < 1e-12  # a rotation keeps lengths


def test_offset_positions_and_batched_positions_agree():
    x = lt.randn(2, 3, 6, 16)
    rope = nn.RotaryEmbedding(16, max_position_embeddings=8)
    a = rope(x, offset=4).data
    b = rope(x, positions=np.arange(4, 10)).data
    c = rope(x, positions=np.stack([np.arange(4, 10), np.arange(0, 6)])).data  # per-sequence rows
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], c[0])
    np.testing.assert_array_equal(rope(x).data[1], c[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rope_table_grows_with_the_positions_used_and_equals_one_built_at_once(dtype):
    """The cos/sin table is sized by the positions actually used (doubling as they grow), and every
    row equals the row of a table computed in one go for all positions (row p depends on p only)."""
    rope = nn.RotaryEmbedding(64, base=100000.0, max_position_embeddings=2**20)
    inv_freq = rope_frequencies(64, 100000.0, np.float64 if dtype == np.float64 else np.float32)
    full_cos, full_sin = rope_cos_sin(np.arange(9000), inv_freq)  # [9000, 64], the reference
    steps = [(0, 3)] + [(p, 1) for p in range(3, 300)] + [(300, 17), (5000, 4), (317, 1), (8990, 10)]
    for offset, T in steps:  # a prefill, a decode one token at a time, jumps forward and back
        cos, sin = rope.cos_sin(T, offset=offset, dtype=dtype)
        np.testing.assert_array_equal(cos, full_cos[offset:offset + T].astype(dtype))
        np.testing.assert_array_equal(sin, full_sin[offset:offset + T].astype(dtype))
    cos, _ = rope.cos_sin(2, positions=np.array([[7, 8999], [0, 1]]), dtype=dtype)
    np.testing.assert_array_equal(cos[:, 0], full_cos[[[7, 8999], [0, 1]]].astype(dtype))


def test_a_large_declared_context_allocates_nothing_until_used():
    """Before: the first call built cos/sin for all max_position_embeddings positions (2**20 x 64 x
    float32 x 2 = 512 MiB, plus float64 angles on the way)."""
    import tracemalloc
    rope = nn.RotaryEmbedding(64, base=100000.0, max_position_embeddings=2**20)
    x = lt.randn(1, 2, 3, 64)
    tracemalloc.start()
    rope(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 1024, f"a 3-position rotation allocated {peak} bytes"


def test_rope_float32_stays_float32_and_float64_uses_a_float64_table():
    rope = nn.RotaryEmbedding(64, base=100000.0)
    assert rope(lt.randn(1, 2, 3, 64)).dtype == np.float32
    cos, sin = rope.cos_sin(1, offset=5000, dtype=np.float64)
    inv = 1.0 / 100000.0 ** (np.arange(0, 64, 2) / 64)
    assert np.abs(cos[0, :32] - np.cos(5000 * inv)).max() < 1e-12  # float32 angles would be off by ~1e-4


def test_rope_gradient_by_finite_differences():
    for pairing in ("half", "interleaved"):
        r = np.random.default_rng(7)
        x0, g = r.standard_normal((1, 2, 3, 8)), r.standard_normal((1, 2, 3, 8))
        cos, sin = rope_cos_sin(np.arange(3), rope_frequencies(8, 10000.0, np.float64), pairing)
        x = lt.tensor(x0, requires_grad=True)
        (nn.functional.apply_rope(x, cos, sin, pairing) * g).sum().backward()
        num = np.zeros_like(x0)
        for i in np.ndindex(x0.shape):
            e = np.zeros_like(x0)
            e[i] = 1e-6
            f = lambda z: (nn.functional.apply_rope(z, cos, sin, pairing).data * g).sum()
            num[i] = (f(x0 + e) - f(x0 - e)) / 2e-6
        assert np.abs(num - x.grad).max() < 1e-8


def test_rotate_pairs_layouts():
    x = np.arange(8.0)
    np.testing.assert_array_equal(rotate_pairs(x, "half"), [-4, -5, -6, -7, 0, 1, 2, 3])
    np.testing.assert_array_equal(rotate_pairs(x, "interleaved"), [-1, 0, -3, 2, -5, 4, -7, 6])


def test_rope_errors():
    with pytest.raises(ShapeError, match="even head_dim"):
        nn.RotaryEmbedding(7)
    with pytest.raises(ValueError, match="pairing"):
        nn.RotaryEmbedding(8, pairing="gptj")
    with pytest.raises(ShapeError, match="head_dim=8"):
        nn.RotaryEmbedding(8)(lt.randn(1, 1, 2, 16))
    cos, sin = rope_cos_sin(np.arange(2), rope_frequencies(8), "half")  # float32
    with pytest.raises(DTypeError, match="cast them to float64"):
        nn.functional.apply_rope(np.zeros((1, 1, 2, 8)), cos, sin)
    with pytest.raises(ShapeError, match=r"do not broadcast to x of shape \(1, 1, 3, 8\)"):
        nn.functional.apply_rope(np.zeros((1, 1, 3, 8), np.float32), cos, sin)
    with pytest.raises(ShapeError, match="positions has shape"):
        nn.RotaryEmbedding(8)(lt.randn(1, 1, 2, 8), positions=np.arange(3))


# --------------------------------------------------------------------------------------------
# Sinusoidal positional encoding ("Attention Is All You Need")
# --------------------------------------------------------------------------------------------
def test_sinusoidal_table_matches_the_paper_formula():
    pe = nn.sinusoidal_positional_encoding(50, 16, dtype=np.float64)
    p, i = 37, 3
    assert abs(pe[p, 2 * i] - np.sin(p / 10000 ** (2 * i / 16))) < 1e-14
    assert abs(pe[p, 2 * i + 1] - np.cos(p / 10000 ** (2 * i / 16))) < 1e-14
    assert nn.sinusoidal_positional_encoding(4, 7).shape == (4, 7)  # odd width works


@needs_torch
def test_sinusoidal_matches_the_pytorch_tutorial():
    """The PositionalEncoding of PyTorch's transformer tutorial (float32 math in torch)."""
    import math
    max_len, d = 100, 32
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
    ref = torch.zeros(max_len, d)
    ref[:, 0::2] = torch.sin(position * div_term)
    ref[:, 1::2] = torch.cos(position * div_term)
    ours = nn.sinusoidal_positional_encoding(max_len, d)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref.numpy()).max() < 2e-5  # torch's table is float32 all the way (angles to 99 rad)


def test_sinusoidal_module_adds_the_table_at_an_offset():
    m = nn.SinusoidalPositionalEncoding(8, max_len=20)
    x = lt.zeros(2, 5, 8)
    np.testing.assert_array_equal(m(x, offset=3).data[1], nn.sinusoidal_positional_encoding(20, 8)[3:8])
    assert m(x).dtype == np.float32 and m(x.double()).dtype == np.float64
    with pytest.raises(lt.ContextLengthError, match="max_len=20"):
        m(x, offset=16)
