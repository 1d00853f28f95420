"""The gated delta rule (litetorch/nn/delta_rule.py) against HF's Qwen3-Next functions and a float64 twin.

Claims:
- `gated_delta_rule` equals HF's `torch_recurrent_gated_delta_rule` (chunk_size=None) and
  `torch_chunk_gated_delta_rule` (an integer chunk size) in float32, <= 1e-5 relative to the
  output's scale, over head groupings, head dims, lengths that are and are not multiples of the
  chunk size, chunk sizes 1 .. > T, with and without an initial state and q/k l2-normalization.
- The recurrent and the chunked form agree with each other and with a float64 torch twin of the
  recurrence (written here: HF's functions cast to float32), forward and backward, <= 1e-10.
- The UT transform's triangular inverse is the matrix inverse, and its hand-written backward
  matches finite differences; so does the whole chunked rule.
- Plain linear attention as an RNN equals the masked quadratic form (Q K^T * causal) V.
- Bad shapes, dtypes and chunk sizes raise clear errors.
"""
import numpy as np
import pytest

import litetorch as lt
import litetorch.nn.functional as F
from litetorch.errors import ConfigError, DTypeError, ShapeError
from litetorch.nn.delta_rule import linear_attention_recurrent, unit_lower_inverse
from litetorch.testing import assert_close, gradcheck

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed; live parity tests skipped")


def _hf():
    """HF's reference functions, or skip (Qwen3-Next needs a recent transformers)."""
    if torch is None:
        pytest.skip("PyTorch not installed")
    try:
        from transformers.models.qwen3_next import modeling_qwen3_next as hf
    except ImportError:
        pytest.skip("transformers has no Qwen3-Next")
    return hf


def _inputs(B, T, Hk, Hv, Dk, Dv, dtype, seed, l2=False):
    """Random inputs in the ranges a real layer produces: decays exp(g) in (0.5, 1), beta in (0, 1).

    Without l2-normalization the keys get length ~1 (as with it): with raw N(0, 1) keys of length
    ~sqrt(Dk), I - beta k k^T has eigenvalues far below -1 and the state explodes, in any
    implementation."""
    r = np.random.default_rng(seed)
    q = r.standard_normal((B, T, Hk, Dk))
    k = r.standard_normal((B, T, Hk, Dk)) * (1.0 if l2 else 0.9 / np.sqrt(Dk))
    v = r.standard_normal((B, T, Hv, Dv))
    g = np.log(r.uniform(0.5, 1.0, (B, T, Hv)))
    beta = r.uniform(0.0, 1.0, (B, T, Hv))
    S0 = r.standard_normal((B, Hv, Dk, Dv))
    return [a.astype(dtype) for a in (q, k, v, g, beta, S0)]


# (B, T, Hk, Hv, Dk, Dv, chunk): T a multiple of the chunk or not, chunk 1, chunk > T, T = 1, grouped heads
CASES = [
    (2, 10, 2, 4, 8, 6, 4),
    (1, 37, 1, 1, 16, 16, 8),
    (2, 16, 2, 2, 8, 8, 16),
    (1, 70, 2, 6, 8, 4, 64),
    (2, 5, 2, 2, 4, 4, 64),
    (1, 1, 1, 2, 4, 4, 64),
    (1, 9, 1, 1, 4, 4, 1),
    (3, 13, 1, 3, 5, 7, 6),
]


@needs_torch
@pytest.mark.parametrize("case", CASES, ids=[f"B{c[0]}T{c[1]}Hk{c[2]}Hv{c[3]}Dk{c[4]}Dv{c[5]}C{c[6]}" for c in CASES])
@pytest.mark.parametrize("l2", [False, True], ids=["raw_qk", "l2norm_qk"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_gated_delta_rule_matches_hf_recurrent_and_chunked_float32(case, l2, with_state):
    hf = _hf()
    B, T, Hk, Hv, Dk, Dv, C = case
    q, k, v, g, beta, S0 = _inputs(B, T, Hk, Hv, Dk, Dv, np.float32, seed=sum(case), l2=l2)
    S0 = S0 if with_state else None
    tq, tk, tv, tg, tb = (torch.from_numpy(a) for a in (q, k, v, g, beta))
    tS = None if S0 is None else torch.from_numpy(S0)
    ref_o, ref_s = hf.torch_recurrent_gated_delta_rule(tq, tk, tv, tg, tb, initial_state=tS, output_final_state=True,
                                                       use_qk_l2norm_in_kernel=l2)
    out, state = F.gated_delta_rule(q, k, v, g, beta, initial_state=S0, use_qk_l2norm=l2)
    assert out.dtype == np.float32 and state.dtype == np.float32
    assert_close(out, ref_o, msg="recurrent out")
    assert_close(state, ref_s, msg="recurrent state")

    ref_o, ref_s = hf.torch_chunk_gated_delta_rule(tq, tk, tv, tg, tb, chunk_size=C, initial_state=tS,
                                                   output_final_state=True, use_qk_l2norm_in_kernel=l2)
    out, state = F.gated_delta_rule(q, k, v, g, beta, initial_state=S0, chunk_size=C, use_qk_l2norm=l2)
    assert out.dtype == np.float32 and state.dtype == np.float32
    assert_close(out, ref_o, msg="chunked out")
    assert_close(state, ref_s, msg="chunked state")


# --------------------------------------------------------------------------------------------
# float64: both forms against a torch twin of the recurrence, forward and backward
# --------------------------------------------------------------------------------------------
def torch_gated_delta_rule_f64(q, k, v, g, beta, S, l2):
    """The gated delta rule written independently in torch (einsum, HF's [B, T, H, D] layout), in float64.

    Same math as HF's `torch_recurrent_gated_delta_rule`, which would cast everything to float32."""
    Hk, Dk, Hv = q.shape[2], q.shape[3], v.shape[2]
    if l2:
        q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    q = q * Dk ** -0.5
    q, k = q.repeat_interleave(Hv // Hk, dim=2), k.repeat_interleave(Hv // Hk, dim=2)
    outs = []
    for t in range(q.shape[1]):
        S = S * g[:, t].exp()[..., None, None]
        u = (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S)) * beta[:, t, :, None]
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], u)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(outs, dim=1), S


F64_CASES = [(2, 11, 2, 4, 4, 3, 4, True), (1, 9, 1, 1, 5, 6, 3, False), (1, 6, 1, 2, 3, 3, 1, True),
             (2, 1, 1, 1, 4, 4, 8, False), (1, 20, 1, 1, 4, 5, 64, True)]


@needs_torch
@pytest.mark.parametrize("case", F64_CASES, ids=[f"B{c[0]}T{c[1]}Hk{c[2]}Hv{c[3]}C{c[6]}l2{int(c[7])}" for c in F64_CASES])
def test_recurrent_and_chunked_forms_equal_a_float64_torch_twin_forward_and_backward(case):
    B, T, Hk, Hv, Dk, Dv, C, l2 = case
    arrays = _inputs(B, T, Hk, Hv, Dk, Dv, np.float64, seed=7 * T + Hv, l2=l2)
    r = np.random.default_rng(1)
    w_out, w_state = r.standard_normal((B, T, Hv, Dv)), r.standard_normal((B, Hv, Dk, Dv))

    t_in = [torch.tensor(a, requires_grad=True) for a in arrays]
    t_out, t_state = torch_gated_delta_rule_f64(*t_in, l2=l2)
    ((t_out * torch.from_numpy(w_out)).sum() + (t_state * torch.from_numpy(w_state)).sum()).backward()

    for chunk in (None, C):
        lt_in = [lt.tensor(a, requires_grad=True) for a in arrays]
        out, state = F.gated_delta_rule(*lt_in[:5], initial_state=lt_in[5], chunk_size=chunk, use_qk_l2norm=l2)
        ((out * lt.tensor(w_out)).sum() + (state * lt.tensor(w_state)).sum()).backward()
        form = "recurrent" if chunk is None else f"chunk {chunk}"
        assert out.dtype == np.float64
        assert_close(out, t_out, msg=f"{form}: out")
        assert_close(state, t_state, msg=f"{form}: final state")
        for name, a, b in zip(("q", "k", "v", "g", "beta", "initial_state"), lt_in, t_in):
            assert_close(a.grad, b.grad, msg=f"{form}: d loss / d {name}")


def test_chunked_equals_recurrent_in_float64_for_every_chunk_size():
    """Without torch too: every chunk size from 1 to beyond T gives the recurrence's numbers."""
    q, k, v, g, beta, S0 = _inputs(1, 10, 1, 2, 4, 3, np.float64, seed=3, l2=True)
    ref_o, ref_s = F.gated_delta_rule(q, k, v, g, beta, initial_state=S0, use_qk_l2norm=True)
    for C in range(1, 13):
        out, state = F.gated_delta_rule(q, k, v, g, beta, initial_state=S0, chunk_size=C, use_qk_l2norm=True)
        assert_close(out, ref_o, msg=f"chunk {C}: out")
        assert_close(state, ref_s, msg=f"chunk {C}: state")


def test_unit_lower_inverse_is_the_inverse_and_its_backward_matches_finite_differences():
    r = np.random.default_rng(0)
    A = r.standard_normal((2, 3, 5, 5)) * 0.5
    T = unit_lower_inverse(lt.tensor(A)).data
    M = np.eye(5) + np.tril(A, -1)
    assert np.abs(T - np.linalg.inv(M)).max() < 1e-12
    assert np.abs(T @ M - np.eye(5)).max() < 1e-12
    w = lt.tensor(r.standard_normal((2, 3, 5, 5)))
    assert gradcheck(lambda a: unit_lower_inverse(a) * w, lt.tensor(A, requires_grad=True))


@pytest.mark.parametrize("chunk", [None, 2], ids=["recurrent", "chunk2"])
def test_gated_delta_rule_backward_matches_finite_differences(chunk):
    """Independent of torch: central differences on a tiny problem, every input at once."""
    arrays = _inputs(1, 5, 1, 2, 3, 2, np.float64, seed=11, l2=True)
    inputs = [lt.tensor(a, requires_grad=True) for a in arrays]

    def f(q, k, v, g, beta, S0):
        out, state = F.gated_delta_rule(q, k, v, g, beta, initial_state=S0, chunk_size=chunk, use_qk_l2norm=True)
        return lt.cat([out.reshape(-1), state.reshape(-1)])

    assert gradcheck(f, *inputs)


# --------------------------------------------------------------------------------------------
# Plain linear attention; grouped heads; dtypes; errors
# --------------------------------------------------------------------------------------------
def test_linear_attention_recurrent_equals_the_masked_quadratic_form_float64():
    r = np.random.default_rng(2)
    B, H, T, Dk, Dv = 2, 3, 9, 4, 5
    q, k, v = r.standard_normal((B, H, T, Dk)), r.standard_normal((B, H, T, Dk)), r.standard_normal((B, H, T, Dv))
    out, state = linear_attention_recurrent(lt.tensor(q), lt.tensor(k), lt.tensor(v))
    scores = (q @ np.swapaxes(k, -1, -2)) * np.tril(np.ones((T, T)))  # (Q K^T) * causal mask, no softmax
    assert_close(out, scores @ v)
    assert_close(state, np.swapaxes(k, -1, -2) @ v)  # S_T = sum_i k_i v_i^T = K^T V


def test_grouped_value_heads_equal_key_heads_repeated_in_a_row():
    q, k, v, g, beta, S0 = _inputs(2, 7, 2, 6, 4, 3, np.float64, seed=5)
    out, state = F.gated_delta_rule(q, k, v, g, beta, initial_state=S0, chunk_size=3)
    rep_q, rep_k = np.repeat(q, 3, axis=2), np.repeat(k, 3, axis=2)  # head j -> heads 3j, 3j+1, 3j+2
    ref_o, ref_s = F.gated_delta_rule(rep_q, rep_k, v, g, beta, initial_state=S0, chunk_size=3)
    assert_close(out, ref_o)
    assert_close(state, ref_s)


@pytest.mark.parametrize("chunk", [None, 4])
def test_float32_stays_float32(chunk):
    q, k, v, g, beta, S0 = _inputs(1, 6, 1, 1, 4, 4, np.float32, seed=0)
    out, state = F.gated_delta_rule(q, k, v, g, beta, initial_state=S0, chunk_size=chunk, use_qk_l2norm=True)
    assert out.dtype == np.float32 and state.dtype == np.float32


def test_bad_inputs_raise_clear_errors():
    q, k, v, g, beta, S0 = _inputs(1, 4, 2, 4, 3, 5, np.float32, seed=0)
    with pytest.raises(ShapeError, match="multiple of the number of key heads"):
        F.gated_delta_rule(q, k, v[:, :, :3], g[:, :, :3], beta[:, :, :3])
    with pytest.raises(ShapeError, match=r"k has shape \(1, 4, 2, 2\)"):
        F.gated_delta_rule(q, k[..., :2], v, g, beta)
    with pytest.raises(ShapeError, match=r"g has shape \(1, 4, 3\), expected \[B, T, Hv\] = \(1, 4, 4\)"):
        F.gated_delta_rule(q, k, v, g[:, :, :3], beta)
    with pytest.raises(ShapeError, match="4 dims"):
        F.gated_delta_rule(q[0], k, v, g, beta)
    with pytest.raises(ShapeError, match=r"initial_state has shape \(1, 4, 3, 4\)"):
        F.gated_delta_rule(q, k, v, g, beta, initial_state=S0[..., :4])
    with pytest.raises(DTypeError, match="beta has dtype float64"):
        F.gated_delta_rule(q, k, v, g, beta.astype(np.float64))
    with pytest.raises(DTypeError, match="initial_state has dtype float64, expected float32"):
        F.gated_delta_rule(q, k, v, g, beta, initial_state=S0.astype(np.float64))
    with pytest.raises(ShapeError, match="at least one token"):
        F.gated_delta_rule(q[:, :0], k[:, :0], v[:, :0], g[:, :0], beta[:, :0])
    for bad in (0, -2, 2.0, True, "64"):
        with pytest.raises(ConfigError, match="chunk_size must be None"):
            F.gated_delta_rule(q, k, v, g, beta, chunk_size=bad)
