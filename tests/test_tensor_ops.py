"""Every op matches PyTorch, forward and backward, in float64 and float32.

The cases (one expression each, written once for both engines) live in
tests/fixtures/make_fixtures.py. Each case is checked twice:

- live against torch when it is importable (`test_op_matches_torch_...`), and
- against tests/fixtures/ops.npz, made by torch, with NumPy only (`test_op_matches_torch_fixture_...`),
  so a machine without torch still checks every number.

Tolerances (docs/ARCHITECTURE.md §5, "Numbers"): float64 max abs error <= 1e-10; float32 error <= 1e-5
relative to the output's scale (litetorch.testing.assert_close's defaults). Gradients are
d/d(inputs) of sum(out * upstream) with a random upstream gradient, which catches a transposed
or mis-broadcast gradient that an all-ones upstream would hide.
"""
import json

import numpy as np
import pytest

from _torch_ref import FIXTURES, load_make_fixtures, requires_torch, torch
from litetorch.testing import assert_close

mf = load_make_fixtures()
LT = mf.litetorch_ns()
CASE_IDS = [c.name for c in mf.CASES]
FIXTURE = FIXTURES / "ops.npz"


def _compare(case, dtype, lt_outs, lt_grads, ref_outs, ref_grads, source):
    for k, (got, want) in enumerate(zip(lt_outs, ref_outs)):
        assert got.dtype == np.dtype(dtype), f"{case.name}: output {k} is {got.dtype}, input dtype was {dtype}"
        assert_close(got, want, msg=f"{case.name} [{dtype}] output {k} vs {source}")
    for i, (got, want) in enumerate(zip(lt_grads, ref_grads)):
        if want is None:
            continue
        assert got is not None, f"{case.name} [{dtype}]: input {i} got no gradient"
        assert got.shape == case.inputs[i].shape, f"{case.name}: grad {i} shape {got.shape} != input shape"
        assert_close(got, want, msg=f"{case.name} [{dtype}] gradient of input {i} vs {source}")


# ---- live against torch ---------------------------------------------------------------------
@requires_torch
@pytest.mark.parametrize("dtype", mf.DTYPES)
@pytest.mark.parametrize("name", CASE_IDS)
def test_op_matches_torch_forward_and_backward(name, dtype):
    case = mf.CASES_BY_NAME[name]
    T = mf.torch_ns(torch)
    xs = mf.make_inputs(case, dtype)
    ref_outs, _ = mf.run_case(case, T, xs)
    gouts = mf.make_upstream(case, [o.shape for o in ref_outs], dtype)
    ref_outs, ref_grads = mf.run_case(case, T, xs, gouts)
    lt_outs, lt_grads = mf.run_case(case, LT, xs, gouts)
    _compare(case, dtype, lt_outs, lt_grads, ref_outs, ref_grads, f"torch {torch.__version__}")


# ---- against the committed torch-made fixture (NumPy only) ------------------------------------
@pytest.fixture(scope="module")
def ops_fixture():
    if not FIXTURE.exists():
        pytest.fail(f"{FIXTURE} is missing; run `python tests/fixtures/make_fixtures.py --section ops`")
    with np.load(FIXTURE) as f:  # allow_pickle stays False: fixtures are plain arrays + a JSON string
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("dtype", mf.DTYPES)
@pytest.mark.parametrize("name", CASE_IDS)
def test_op_matches_torch_fixture_forward_and_backward(name, dtype, ops_fixture):
    case = mf.CASES_BY_NAME[name]
    get = lambda what: ops_fixture.get(mf.key(name, dtype, what))  # noqa: E731
    xs = [get(f"in{i}") for i in range(len(case.inputs))]
    assert all(x is not None for x in xs), f"{name}.{dtype} is not in {FIXTURE.name}; regenerate the fixtures"
    n_out = sum(1 for k in ops_fixture if k.startswith(f"{name}.{dtype}.out"))
    ref_outs = [get(f"out{k}") for k in range(n_out)]
    gouts = [get(f"gout{k}") for k in range(n_out)]
    ref_grads = [get(f"grad{i}") if spec.is_float else None for i, spec in enumerate(case.inputs)]
    lt_outs, lt_grads = mf.run_case(case, LT, xs, gouts)
    _compare(case, dtype, lt_outs, lt_grads, ref_outs, ref_grads, f"{FIXTURE.name}")


def test_fixture_inputs_are_the_ones_the_cases_draw(ops_fixture):
    """The fixture's inputs are exactly what make_inputs draws, so live and fixture tests test the same numbers."""
    for case in mf.CASES:
        for dtype in mf.DTYPES:
            for i, x in enumerate(mf.make_inputs(case, dtype)):
                np.testing.assert_array_equal(ops_fixture[mf.key(case.name, dtype, f"in{i}")], x,
                                              err_msg=f"{case.name}.{dtype}.in{i}")


def test_fixture_metadata_names_its_origin_and_files_are_small(ops_fixture):
    meta = json.loads(str(ops_fixture["__meta__"]))
    for field in ("torch_version", "numpy_version", "script", "date", "seed", "section"):
        assert meta.get(field), f"ops.npz metadata lacks {field!r}"
    assert meta["section"] == "ops"
    assert (FIXTURES.parent.parent / meta["script"]).exists()
    sidecar = json.loads((FIXTURES / "ops.json").read_text())
    assert set(sidecar["arrays"]) == set(ops_fixture) - {"__meta__"}
    size = FIXTURE.stat().st_size + (FIXTURES / "ops.json").stat().st_size
    assert size < 2 * 1024 * 1024, f"ops fixtures take {size / 1e6:.2f} MB; keep them under 2 MB"


@requires_torch
def test_regenerating_the_fixture_reproduces_it(ops_fixture):
    """make_fixtures.py, run in memory with today's torch, gives the committed numbers (within tolerance)."""
    fresh = mf.build("ops", torch)
    assert set(fresh) == set(ops_fixture) - {"__meta__"}, "case list changed: rerun make_fixtures.py"
    for k, v in fresh.items():
        assert_close(v, ops_fixture[k], msg=f"regenerated {k}", check_dtype=True)


# ---- extremes called out by name (they are also cases above) ----------------------------------------
def test_softmax_at_1e4_logits_is_finite_and_matches_fixture(ops_fixture):
    import litetorch as lt

    x = ops_fixture["softmax_extreme_1e4.float32.in0"]
    assert np.abs(x).max() > 5e3  # really extreme: exp(x) alone would overflow float32 at 89
    out = lt.softmax(lt.tensor(x), dim=-1).data
    assert np.isfinite(out).all()
    assert_close(out, ops_fixture["softmax_extreme_1e4.float32.out0"])


def test_log_softmax_with_minus_inf_mask_gives_minus_inf_and_zero_gradient(ops_fixture):
    import litetorch as lt

    x, m = ops_fixture["log_softmax_minus_inf_mask.float64.in0"], ops_fixture["log_softmax_minus_inf_mask.float64.in1"]
    t = lt.tensor(x, requires_grad=True)
    out = lt.log_softmax(t.masked_fill(lt.tensor(m), float("-inf")), dim=-1)
    assert np.isneginf(out.data[m]).all() and np.isfinite(out.data[~m]).all()
    out.backward(ops_fixture["log_softmax_minus_inf_mask.float64.gout0"])
    assert (t.grad[m] == 0).all()
    assert_close(t.grad, ops_fixture["log_softmax_minus_inf_mask.float64.grad0"])



INF_ROWS = [  # one row each: +inf anywhere, all -inf or a NaN make the row NaN in torch; -inf with a finite max is a mask
    [np.inf, 1.0, 2.0, 3.0], [-np.inf, 1.0, 2.0, 3.0], [-np.inf] * 4, [np.inf, -np.inf, 0.0, 0.0], [np.inf] * 4,
    [np.nan, 1.0, 2.0, 3.0], [-np.inf, -np.inf, 5.0, -np.inf], [1e4, -1e4, 0.0, -np.inf], [0.5, -1.0, 2.0, 3.0],
]


@requires_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [-1, 0])
def test_softmax_and_log_softmax_match_torch_on_inf_and_nan_rows(op, dtype, dim):
    """softmax([inf, 1]) was [nan, 0] (torch: [nan, nan]): the max was replaced by 0 when infinite."""
    import litetorch as lt

    x = np.array(INF_ROWS, dtype=dtype)
    x = x if dim == -1 else np.ascontiguousarray(x.T)  # the same rows, as columns
    g = np.random.default_rng(0).standard_normal(x.shape).astype(dtype)
    ours_in = lt.tensor(x, requires_grad=True)
    ours = getattr(lt, op)(ours_in, dim=dim)
    ours.backward(g)
    theirs_in = torch.from_numpy(x.copy()).requires_grad_(True)
    theirs = getattr(torch, op)(theirs_in, dim=dim)
    theirs.backward(torch.from_numpy(g))
    tol = dict(rtol=0, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    assert ours.dtype == dtype and ours_in.grad.dtype == dtype
    np.testing.assert_allclose(ours.data, theirs.detach().numpy(), equal_nan=True, **tol)
    np.testing.assert_allclose(ours_in.grad, theirs_in.grad.numpy(), equal_nan=True, **tol)
