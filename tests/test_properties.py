"""Properties over random shapes (hypothesis): broadcasting and reductions.

References, from most to least independent of litetorch:
- PyTorch on the same numbers, when it is installed;
- a brute-force "unbroadcast" written as a loop over every output element (no NumPy reductions),
  so it shares no code or idea with `litetorch.tensor.unbroadcast` beyond the definition;
- finite differences (`gradcheck`).
"""
import itertools

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes  # noqa: E402

import litetorch as lt  # noqa: E402
from _torch_ref import to_torch, torch  # noqa: E402
from litetorch.testing import assert_close, gradcheck  # noqa: E402

FAST = settings(max_examples=40, deadline=None)

BINARY = {
    "add": (lambda a, b: a + b, lambda a, b, g: (g, g)),
    "sub": (lambda a, b: a - b, lambda a, b, g: (g, -g)),
    "mul": (lambda a, b: a * b, lambda a, b, g: (g * b, g * a)),
    "div": (lambda a, b: a / b, lambda a, b, g: (g / b, -g * a / (b * b))),
    "where": (lambda a, b: lt.where(where_mask(a.shape, b.shape), a, b),
              lambda a, b, g: (np.where(where_mask(g.shape), g, 0), np.where(where_mask(g.shape), 0, g))),
}


def where_mask(*shapes):
    """A fixed pattern (every third element True) over the broadcast shape."""
    shape = np.broadcast_shapes(*shapes)
    return np.asarray((np.arange(int(np.prod(shape))).reshape(shape) % 3) == 0)


def brute_force_unbroadcast(full_grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum each output element's gradient into the input element it was broadcast from (a plain loop)."""
    out = np.zeros(shape)
    pad = full_grad.ndim - len(shape)
    for idx in itertools.product(*(range(n) for n in full_grad.shape)):
        src = tuple(0 if shape[d] == 1 else idx[pad + d] for d in range(len(shape)))
        out[src] += full_grad[idx]
    return out


def _draw(rng, shape, away=False):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.5, 0.5 + np.abs(x), x) if away else x


@FAST
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4),
       op=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2**16))
def test_broadcast_binary_op_gradients_have_operand_shapes_and_equal_unbroadcast_sums(shapes, op, seed):
    (sa, sb), out_shape = shapes
    rng = np.random.default_rng(seed)
    A, B = _draw(rng, sa), _draw(rng, sb, away=(op == "div"))
    G = rng.standard_normal(out_shape)
    fwd, local = BINARY[op]
    a, b = lt.tensor(A, requires_grad=True), lt.tensor(B, requires_grad=True)
    out = fwd(a, b)
    assert out.shape == out_shape
    out.backward(G)
    assert a.grad.shape == sa and b.grad.shape == sb
    # d out / d operand on the broadcast values, then summed back to the operand by brute force
    Af, Bf = np.broadcast_to(A, out_shape), np.broadcast_to(B, out_shape)
    ga, gb = local(Af, Bf, G)
    assert_close(a.grad, brute_force_unbroadcast(np.broadcast_to(ga, out_shape), sa))
    assert_close(b.grad, brute_force_unbroadcast(np.broadcast_to(gb, out_shape), sb))
    if torch is not None:
        at, bt = to_torch(A, True), to_torch(B, True)
        tfwd = {"where": lambda x, y: torch.where(torch.from_numpy(where_mask(x.shape, y.shape)), x, y)}.get(op, fwd)
        ot = tfwd(at, bt)
        ot.backward(torch.from_numpy(G))
        assert_close(out, ot)
        assert_close(a.grad, at.grad)
        assert_close(b.grad, bt.grad)


@FAST
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=3, max_side=3),
       seed=st.integers(0, 2**16))
def test_broadcast_float32_stays_float32_and_matches_float64_reference(shapes, seed):
    (sa, sb), out_shape = shapes
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
    a, b = lt.tensor(A, requires_grad=True), lt.tensor(B, requires_grad=True)
    out = (a * b + a) / 2.0
    out.sum().backward()
    assert out.dtype == a.grad.dtype == b.grad.dtype == np.float32
    ref = (A.astype(np.float64) * B + A) / 2.0
    assert_close(out, ref.astype(np.float32))  # float32 rule: 1e-5 of the output's scale


REDUCTIONS = ["sum", "mean", "amax", "amin", "var"]


@st.composite
def shape_and_dims(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4))
    n = len(shape)
    kind = draw(st.sampled_from(["all", "one", "tuple"]))
    if kind == "all":
        dim = None
    elif kind == "one":
        dim = draw(st.integers(-n, n - 1))
    else:
        dims = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
        dim = tuple(d - n if draw(st.booleans()) else d for d in dims)  # mix negative and positive dims
    return shape, dim, draw(st.booleans())


def _reduce(x, name, dim, keepdim):
    if dim is None:
        return getattr(x, name)() if not keepdim else getattr(x, name)(dim=tuple(range(x.ndim)), keepdim=True)
    return getattr(x, name)(dim=dim, keepdim=keepdim)


@FAST
@given(spec=shape_and_dims(), name=st.sampled_from(REDUCTIONS), seed=st.integers(0, 2**16))
def test_reduction_matches_reference_and_gradcheck_for_random_dims(spec, name, seed):
    shape, dim, keepdim = spec
    X = np.random.default_rng(seed).standard_normal(shape)
    n_reduced = X.size if dim is None else int(np.prod([shape[d] for d in np.atleast_1d(dim)]))
    if name == "var" and n_reduced < 2:
        return  # variance with correction 1 of a single value is 0/0 (NaN in torch too)
    x = lt.tensor(X, requires_grad=True)
    out = _reduce(x, name, dim, keepdim)
    np_fn = {"sum": np.sum, "mean": np.mean, "amax": np.max, "amin": np.min,
             "var": lambda a, axis, keepdims: np.var(a, axis=axis, keepdims=keepdims, ddof=1)}[name]
    axis = None if dim is None else dim
    ref = np_fn(X, axis=axis, keepdims=keepdim) if not (dim is None and keepdim) else np_fn(X, axis=None, keepdims=True)
    assert_close(out, np.asarray(ref))
    G = np.random.default_rng(seed + 1).standard_normal(out.shape)
    out.backward(G)
    assert x.grad.shape == shape
    if torch is not None:
        xt = to_torch(X, True)
        ot = _reduce(xt, name, dim, keepdim)
        ot.backward(torch.from_numpy(G))
        assert_close(out, ot)
        assert_close(x.grad, xt.grad)
    assert gradcheck(lambda t: _reduce(t, name, dim, keepdim), lt.tensor(X, requires_grad=True))


@FAST
@given(shapes=mutually_broadcastable_shapes(min_dims=0, max_dims=2, max_side=3,
                                            signature=np.matmul.signature),
       seed=st.integers(0, 2**16))
def test_matmul_with_random_broadcast_batch_dims_matches_reference(shapes, seed):
    (sa, sb), out_shape = shapes
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal(sa), rng.standard_normal(sb)
    a, b = lt.tensor(A, requires_grad=True), lt.tensor(B, requires_grad=True)
    out = a @ b
    assert_close(out, np.matmul(A, B))
    G = rng.standard_normal(out.shape)
    out.backward(G)
    assert a.grad.shape == sa and b.grad.shape == sb
    if torch is not None:
        at, bt = to_torch(A, True), to_torch(B, True)
        (at @ bt).backward(torch.from_numpy(G))
        assert_close(a.grad, at.grad)
        assert_close(b.grad, bt.grad)
    else:
        assert gradcheck(lambda x, y: x @ y, lt.tensor(A, requires_grad=True), lt.tensor(B, requires_grad=True))


@FAST
@given(shape=array_shapes(min_dims=1, max_dims=4, max_side=4), data=st.data())
def test_permute_then_reshape_gradient_is_the_inverse_move(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    X = np.random.default_rng(0).standard_normal(shape)
    x = lt.tensor(X, requires_grad=True)
    y = x.permute(*perm).reshape(-1)
    G = np.arange(y.shape[0], dtype=np.float64)
    y.backward(G)
    # each input element receives the upstream value at the position it was moved to
    expected = G.reshape(np.transpose(X, perm).shape).transpose(np.argsort(perm))
    assert_close(x.grad, expected)
