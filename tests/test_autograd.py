"""The engine's claims, many of them regressions from micrograd's issue history.

Each test checks against an independent reference: a gradient worked out by hand, PyTorch on the
same expression, or the dtype/shape rule the design states.
"""
import sys

import numpy as np
import pytest

import litetorch as lt
from _torch_ref import requires_torch, to_torch, torch
from litetorch.errors import DTypeError, ShapeError
from litetorch.tensor import unbroadcast
from litetorch.testing import assert_close


def leaf(values, dtype=np.float64):
    return lt.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# ---- unbroadcast: the backward of broadcasting ----------------------------------------------------
@requires_torch
@pytest.mark.parametrize("grad_shape, shape", [((2, 3, 4), (3, 1)), ((2, 3, 4), (1, 3, 4)), ((5, 4), (4,)),
                                               ((2, 1, 4), (2, 1, 4)), ((3, 4), ()), ((2, 3), (1, 1))])
def test_unbroadcast_sums_over_the_broadcast_axes(grad_shape, shape):
    """Every copy broadcasting made contributed to the loss, so the input's gradient is the sum over the
    copies: torch's `sum_to_size` is that same reduction, written independently."""
    g = np.random.default_rng(0).standard_normal(grad_shape)
    got = unbroadcast(g, shape)
    assert got.shape == shape
    assert_close(got, torch.from_numpy(g).sum_to_size(shape).numpy())
    if shape == (3, 1):  # by hand: each entry sums 2 * 4 = 8 copies of a gradient of ones
        assert np.array_equal(unbroadcast(np.ones(grad_shape), shape), np.full((3, 1), 8.0))


# ---- accumulation: the multivariate chain rule -------------------------------------------------
def test_reused_non_leaf_accumulates_gradient():
    # micrograd's classic bug: with `grad = ...` instead of `grad += ...`, "b = a + a" gives da = 1, not 2.
    # Here a is used twice, then b is used twice: dc/da = 2 * 2 = 4
    a = leaf(3.0)
    b = a + a
    c = b + b
    c.backward()
    assert a.grad == 4.0


def test_node_feeding_two_branches_of_different_depth_gets_both_contributions():
    # x -> b -> a, and r = b + a: b is reached directly and through a longer path. A topological
    # sort that marks nodes when they are *pushed* emits b before a and loses a's contribution.
    x = leaf([1.5])
    b = x * 2.0
    a = b * 3.0
    r = b + a  # r = 2x + 6x = 8x
    r.sum().backward()
    assert_close(x.grad, np.array([8.0]))


def test_node_feeding_two_branches_matches_hand_derivative():
    # y = tanh(x) feeds both a product and an exp: d/dx [y*y + exp(y)] = (2y + exp(y)) (1 - y^2)
    x = leaf([0.3, -1.2])
    y = x.tanh()
    (y * y + y.exp()).sum().backward()
    yv = np.tanh(x.data)
    assert_close(x.grad, (2 * yv + np.exp(yv)) * (1 - yv * yv))


def test_two_backward_calls_accumulate_like_torch():
    x = leaf([1.0, 2.0])
    loss = (x * x).sum()
    loss.backward()
    loss.backward()
    assert_close(x.grad, 2 * (2 * x.data))  # two calls: 2 * d(x^2)/dx


def test_zero_grad_resets_accumulation():
    x = leaf([1.0, 2.0])
    (x * x).sum().backward()
    x.zero_grad()
    assert x.grad is None
    (x * 3.0).sum().backward()
    assert_close(x.grad, np.array([3.0, 3.0]))


def test_deep_chain_of_5000_ops_needs_no_recursion():
    x = leaf(0.5)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # a recursive topological sort would blow this
    try:
        y.backward()
    finally:
        sys.setrecursionlimit(old)
    assert_close(x.grad, np.array(1.0001 ** 5000))


def test_gradient_of_leaf_that_is_not_used_stays_none():
    a, b = leaf([1.0]), leaf([2.0])
    (a * 2.0).sum().backward()
    assert b.grad is None


def test_retain_grad_keeps_a_non_leaf_gradient():
    x = leaf([1.0, -2.0])
    h = (x * 3.0).retain_grad()
    (h * h).sum().backward()
    assert_close(h.grad, 2 * h.data)


# ---- errors that teach -----------------------------------------------------------------------
def test_backward_of_non_scalar_without_grad_is_shape_error():
    y = leaf([1.0, 2.0]) * 2.0
    with pytest.raises(ShapeError, match=r"\(2,\)"):
        y.backward()


def test_backward_with_wrong_gradient_shape_is_shape_error():
    y = leaf([1.0, 2.0]) * 2.0
    with pytest.raises(ShapeError, match=r"\(3,\).*\(2,\)"):
        y.backward(np.ones(3))


def test_matmul_shape_mismatch_is_shape_error_naming_both_shapes():
    a, b = lt.zeros(2, 3), lt.zeros(4, 5)
    with pytest.raises(ShapeError, match=r"\(2, 3\).*\(4, 5\)"):
        a @ b


def test_mixing_float32_and_float64_tensors_is_dtype_error():
    a = lt.tensor(np.ones(3, np.float32))
    b = lt.tensor(np.ones(3, np.float64))
    for op in (lambda: a + b, lambda: a * b, lambda: b - a, lambda: a / b, lambda: a @ b,
               lambda: lt.where(np.ones(3, bool), a, b), lambda: lt.cat([a, b]), lambda: lt.stack([a, b])):
        with pytest.raises(DTypeError):
            op()


@pytest.mark.parametrize("scalar", [2.0, 3, np.sqrt(64), np.float64(0.125), np.array(2.5), np.float32(2.0),
                                    np.arange(4.0)[2]], ids=["py_float", "py_int", "np_sqrt_64", "np_float64",
                                                             "0d_float64_array", "np_float32", "read_from_f64_array"])
def test_scalar_never_upcasts_float32(scalar):
    # The NumPy-2 trap: np.float32_array / np.sqrt(64) is float64. litetorch treats scalars as weak.
    x = lt.tensor(np.ones((2, 2), np.float32), requires_grad=True)
    outs = [x + scalar, scalar + x, x - scalar, scalar - x, x * scalar, scalar * x, x / scalar, scalar / x,
            x ** scalar, abs(scalar) ** x, lt.where(np.eye(2, dtype=bool), x, scalar), x.masked_fill(np.eye(2, dtype=bool), scalar),
            x.clamp(min=scalar)]
    for k, out in enumerate(outs):
        assert out.dtype == np.float32, f"expression {k} gave {out.dtype}"
    sum(o.sum() for o in outs).backward()
    assert x.grad.dtype == np.float32


def test_attention_scale_by_numpy_sqrt_stays_float32():
    q = lt.randn(4, 8)
    scores = (q @ q.T) / np.sqrt(8)  # the line that cost 10x speed in a NumPy SmolLM2 forward
    assert scores.dtype == np.float32
    assert (scores @ q).dtype == np.float32


def test_int_tensor_is_lifted_to_float_not_truncating_a_float_scalar():
    i = lt.tensor(np.array([2, 3]))
    out = i * np.float32(1.5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.data, [3.0, 4.5])
    assert (i + lt.tensor(np.array([0.5, 0.5], np.float64))).dtype == np.float64
    assert (i ** 2).dtype == np.int64 and (i ** 0.5).dtype == np.float32  # torch: int ** 2 int, ** 0.5 float32


# ---- no_grad ---------------------------------------------------------------------------------
def test_no_grad_builds_no_graph():
    x = leaf([1.0, 2.0])
    with lt.no_grad():
        y = (x * 2.0).exp().sum()
    assert y.requires_grad is False
    assert y._prev == ()
    assert y._backward is None
    with pytest.raises(RuntimeError):
        y.backward()
    z = (x * 2.0).sum()  # grad mode is back on after the block
    assert z.requires_grad and z._prev


def test_no_grad_as_decorator_and_enable_grad_inside():
    x = leaf([1.0])

    @lt.no_grad()
    def f(t):
        inner = t * 2.0
        with lt.enable_grad():
            kept = t * 3.0
        return inner, kept

    inner, kept = f(x)
    assert not inner.requires_grad and kept.requires_grad


def test_detach_stops_gradient():
    x = leaf([2.0])
    y = x * x.detach()  # d/dx = x (the detached factor is a constant)
    y.sum().backward()
    assert_close(x.grad, np.array([2.0]))


# ---- small Python-protocol regressions -----------------------------------------------------------
def test_iterating_a_tensor_yields_rows_and_stops():
    t = lt.tensor(np.arange(6.0).reshape(3, 2))
    rows = list(t)
    assert len(rows) == 3 and all(r.shape == (2,) for r in rows)
    assert [float(x) for x in lt.tensor(np.arange(3.0))] == [0.0, 1.0, 2.0]


def test_truth_value_of_single_element_tensor_is_its_value():
    assert not lt.tensor(np.array([0.0]))
    assert lt.tensor(np.array(2.0))
    with pytest.raises(ShapeError):
        bool(lt.tensor(np.array([1.0, 2.0])))


def test_integer_index_returns_0d_tensor_with_gradient():
    x = leaf([1.0, 2.0, 3.0])
    y = x[1]
    assert y.shape == ()
    (y * 5.0).backward()
    assert_close(x.grad, np.array([0.0, 5.0, 0.0]))


def test_np_array_of_a_tensor_is_a_copy_and_np_asarray_a_view():
    t = lt.tensor(np.zeros(3))
    copied = np.array(t)
    copied[0] = 99.0
    assert t.data[0] == 0.0  # NumPy 2 passes copy=True to __array__ and trusts it to copy
    assert np.shares_memory(np.asarray(t), t.data)


def test_creation_functions_accept_torch_call_forms():
    ids = lt.randint(10, (2, 3))  # torch.randint(high, size)
    assert ids.shape == (2, 3) and ids.dtype == np.int64 and 0 <= ids.data.min() and ids.data.max() < 10
    assert lt.full(3, 1.5).shape == (3,)
    assert lt.zeros_like(lt.tensor(np.ones(2)), dtype=np.float32).dtype == np.float32


def test_pow_zero_has_zero_gradient_even_at_zero():
    x = leaf([0.0, 2.0])
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])  # torch: 0, not 0 * 0^-1 = NaN


def test_pow_tensor_exponent_gradient_at_zero_base_is_zero_not_nan():
    # d(a^b)/db = a^b ln a; at a = 0 (b >= 0) a^b is flat in b, and torch returns 0 there
    a = leaf([0.0, 0.0, 2.0])
    b = leaf([2.0, 1.0, 1.0])
    (a ** b).sum().backward()
    assert_close(b.grad, np.array([0.0, 0.0, 2.0 * np.log(2.0)]))
    assert_close(a.grad, np.array([0.0, 1.0, 1.0]))  # b a^(b-1)


# ---- the micrograd test, against torch ------------------------------------------------------------
@requires_torch
def test_micrograd_sanity_expression_matches_torch():
    def expr(x, relu):
        z = 2 * x + 2 + x
        q = relu(z) + z * x
        h = relu(z * z)
        return h + q + q * x

    x = leaf(-4.0)
    y = expr(x, lambda t: t.relu())
    y.backward()
    xt = to_torch(x, requires_grad=True)
    yt = expr(xt, torch.relu)
    yt.backward()
    assert_close(y, yt)
    assert_close(x.grad, xt.grad)


@requires_torch
def test_micrograd_more_ops_expression_matches_torch():
    def expr(a, b, relu):
        c = a + b
        d = a * b + b ** 3
        c = c + c + 1
        c = c + 1 + c + (-a)
        d = d + d * 2 + relu(b + a)
        d = d + 3 * d + relu(b - a)
        e = c - d
        f = e ** 2
        g = f / 2.0
        g = g + 10.0 / f
        return g

    a, b = leaf(-4.0), leaf(2.0)
    g = expr(a, b, lambda t: t.relu())
    g.backward()
    at, bt = to_torch(a, True), to_torch(b, True)
    gt = expr(at, bt, torch.relu)
    gt.backward()
    assert_close(g, gt)
    assert_close(a.grad, at.grad)
    assert_close(b.grad, bt.grad)


def test_micrograd_more_ops_expression_matches_recorded_torch_values():
    # The numbers torch 2.x prints for micrograd's test_more_ops (a=-4, b=2): g, dg/da, dg/db.
    a, b = leaf(-4.0), leaf(2.0)
    c = a + b
    d = a * b + b ** 3
    c = c + c + 1
    c = c + 1 + c + (-a)
    d = d + d * 2 + (b + a).relu()
    d = d + 3 * d + (b - a).relu()
    g = (c - d) ** 2 / 2.0
    g = g + 10.0 / ((c - d) ** 2)
    g.backward()
    assert abs(g.item() - 24.70408163265306) < 1e-12
    assert abs(a.grad.item() - 138.83381924198252) < 1e-10
    assert abs(b.grad.item() - 645.5772594752186) < 1e-10


@requires_torch
def test_mlp_training_step_gradients_match_torch():
    rng = np.random.default_rng(0)
    X, W1, W2 = rng.standard_normal((8, 5)), rng.standard_normal((5, 16)), rng.standard_normal((16, 3))
    y = rng.integers(0, 3, 8)

    def loss_fn(X, W1, W2, lib_log_softmax):
        h = (X @ W1).tanh()
        logp = lib_log_softmax(h @ W2)
        return -logp[np.arange(8), y].mean()

    ws = [leaf(W1), leaf(W2)]
    loss = loss_fn(lt.tensor(X), *ws, lambda z: lt.log_softmax(z, dim=-1))
    loss.backward()
    wt = [to_torch(w, True) for w in ws]
    loss_t = loss_fn(torch.from_numpy(X), *wt, lambda z: torch.log_softmax(z, dim=-1))
    loss_t.backward()
    assert_close(loss, loss_t)
    for w, t in zip(ws, wt):
        assert_close(w.grad, t.grad)


def test_backward_uses_the_condition_and_indices_as_they_were_in_the_forward():
    """Editing a mask or index array after the forward must not change the gradients (torch keeps a copy)."""
    x = lt.tensor(np.arange(4.0), requires_grad=True)
    cond = np.array([True, False, True, False])
    idx = np.array([0, 0, 3])
    y = lt.where(cond, x, 0.0).sum() + x[idx].sum()
    cond[:] = False
    idx[:] = 1
    y.backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 1.0, 1.0])
