"""Finite differences agree with autograd for every op (float64), and the checking tools work.

Central differences, (f(x + eps) - f(x - eps)) / 2 eps, use only the forward pass, so they are an
independent reference for every `_backward` closure. The cases are the same ones the PyTorch
parity tests use (tests/fixtures/make_fixtures.py).
"""
import numpy as np
import pytest

import litetorch as lt
from _torch_ref import load_make_fixtures, requires_torch, torch
from litetorch.tensor import Tensor
from litetorch.testing import assert_close, gradcheck, max_abs_err, rel_err

mf = load_make_fixtures()
LT = mf.litetorch_ns()
GRADCHECK_CASES = [c.name for c in mf.CASES if c.gradcheck and any(s.is_float for s in c.inputs)]


def _as_single_tensor(case):
    """Wrap case.fn so it takes Tensors and returns one float64 Tensor (gradcheck's contract)."""
    def fn(*xs):
        outs = case.fn(LT, *xs)
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        flat = lt.cat([o.reshape(-1) for o in outs]) if len(outs) > 1 else outs[0]
        # -inf outputs (a masked log-softmax) have no finite differences; compare the finite part
        bad = ~np.isfinite(flat.data)
        return flat.masked_fill(lt.tensor(bad), 0.0) if bad.any() else flat
    return fn


@pytest.mark.parametrize("name", GRADCHECK_CASES)
def test_gradcheck_passes_for_op_in_float64(name):
    case = mf.CASES_BY_NAME[name]
    xs = [lt.tensor(a, requires_grad=spec.is_float) for a, spec in zip(mf.make_inputs(case, "float64"), case.inputs)]
    assert gradcheck(_as_single_tensor(case), *xs)


def test_every_op_family_is_gradchecked():
    families = ["add", "sub", "mul", "div", "neg", "pow", "rpow", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid",
                "relu", "silu", "gelu_erf", "gelu_tanh", "abs", "clamp", "matmul", "sum", "mean", "amax", "amin",
                "var", "reshape", "view", "transpose", "permute", "unsqueeze", "squeeze", "flatten", "expand",
                "slice", "gather", "index_bool", "cat", "stack", "split", "chunk", "where", "masked_fill",
                "softmax", "log_softmax"]
    missing = [f for f in families if not any(n.startswith(f) for n in GRADCHECK_CASES)]
    assert not missing, f"no gradcheck case for {missing}"


def test_gradcheck_of_a_composite_expression_with_shared_inputs():
    rng = np.random.default_rng(1)
    x = lt.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = lt.tensor(rng.standard_normal((4, 4)), requires_grad=True)
    # x feeds three branches; w is used twice
    assert gradcheck(lambda x, w: lt.softmax((x @ w).tanh() @ w.T + x, dim=-1) * x.sigmoid(), x, w)


def test_gradcheck_large_input_uses_vector_jacobian_products():
    x = lt.tensor(np.random.default_rng(2).standard_normal((40, 30)), requires_grad=True)
    assert gradcheck(lambda x: (x @ x.T).tanh(), x)  # 1200 x 1600 Jacobian: too big to compare entry by entry


# ---- gradcheck catches wrong gradients and says where -------------------------------------------------
def _square_with_wrong_backward(x):
    """x^2 whose backward forgets the factor 2 (the kind of bug gradcheck exists for)."""
    return Tensor._make(x.data ** 2, (x,), lambda g: (g * x.data,), "bad_square")


def test_gradcheck_reports_input_element_and_both_values():
    x = lt.tensor(np.array([[1.0, 2.0], [3.0, -1.0]]), requires_grad=True)
    y = lt.tensor(np.array([0.5, 0.25]), requires_grad=True)
    with pytest.raises(AssertionError) as info:
        gradcheck(lambda y, x: y.sum() + _square_with_wrong_backward(x), y, x)
    msg = str(info.value)
    assert "input 1" in msg and "element (0, 0)" in msg
    assert "numeric  2" in msg and "analytic 1" in msg  # d(x^2)/dx at 1 is 2; the bad backward says 1


def test_gradcheck_catches_a_wrong_gradient_in_vjp_mode_too():
    x = lt.tensor(np.random.default_rng(3).standard_normal((300, 200)), requires_grad=True)
    with pytest.raises(AssertionError, match="input 0"):
        gradcheck(_square_with_wrong_backward, x)


def test_gradcheck_returns_false_instead_of_raising_when_asked():
    x = lt.tensor(np.array([1.0, 2.0]), requires_grad=True)
    assert gradcheck(_square_with_wrong_backward, x, raise_exception=False) is False


def test_gradcheck_leaves_callers_tensors_untouched():
    x = lt.tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)  # checked in float64 copies
    before = x.data.copy()
    assert gradcheck(lambda t: (t * t).sum(), x)
    np.testing.assert_array_equal(x.data, before)
    assert x.grad is None and x.dtype == np.float32


# ---- assert_close and the error helpers -------------------------------------------------------------
def test_assert_close_message_names_shape_errors_and_worst_index():
    expected = np.zeros((2, 3))
    actual = expected.copy()
    actual[1, 2] = 1e-6
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, msg="layer 3")
    msg = str(info.value)
    assert msg.startswith("layer 3")
    assert "(2, 3)" in msg and "1.000e-06" in msg and "(1, 2)" in msg and "max elementwise rel error" in msg


def test_assert_close_defaults_follow_dtype():
    one = np.ones(4)
    assert_close(one + 5e-11, one)  # float64: 1e-10 absolute is fine
    with pytest.raises(AssertionError):
        assert_close(one + 1e-9, one)
    f32 = np.full(4, 100.0, np.float32)
    assert_close(f32 + np.float32(5e-4), f32)  # float32: 1e-5 of the scale (100) = 1e-3
    with pytest.raises(AssertionError):
        assert_close(f32 + np.float32(5e-3), f32)
    with pytest.raises(AssertionError):
        assert_close(np.array([1, 2]), np.array([1, 3]))  # ints: exact


def test_assert_close_treats_matching_nan_and_inf_as_equal_but_not_mismatched_ones():
    assert_close(np.array([np.nan, -np.inf, 1.0]), np.array([np.nan, -np.inf, 1.0]))
    with pytest.raises(AssertionError):
        assert_close(np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(AssertionError):
        assert_close(np.array([np.inf]), np.array([-np.inf]))


def test_assert_close_rejects_shape_and_optionally_dtype_mismatch():
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(AssertionError, match="dtype"):
        assert_close(np.zeros(3, np.float32), np.zeros(3), check_dtype=True)


@requires_torch
def test_assert_close_accepts_tensors_of_both_libraries():
    t = torch.ones(3, dtype=torch.float64, requires_grad=True) * 2  # needs detach() inside
    assert_close(lt.tensor(np.full(3, 2.0)), t)


def test_error_helpers_agree_with_hand_computed_values():
    assert max_abs_err(np.array([1.0, 2.0]), np.array([1.5, 2.0])) == 0.5
    assert rel_err(np.array([1.0, 4.0]), np.array([1.0, 2.0])) == 1.0  # |4 - 2| / max|expected| = 2 / 2
