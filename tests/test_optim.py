"""litetorch.optim against torch.optim, torch.nn.utils.clip_grad_norm_ and HF's cosine schedule.

Optimizer parity: the same MLP (weights from tests/fixtures/make_fixtures_nn.mlp_init), the same
data, 50 full-batch steps; the final parameters must equal torch's to 1e-12 in float64 and 1e-6
in float32. torch's CPU kernels fuse multiply-adds (one rounding instead of two) and its BLAS sums
in another order, so float32 runs drift apart by a few ulps per step; float64 stays ~1e-15.
References are live when torch is importable and from tests/fixtures/nn.npz otherwise.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import litetorch as lt
import litetorch.nn.functional as F
from litetorch import nn, optim


def _fixture_script():
    """tests/fixtures/make_fixtures_nn.py, imported once per session (its torch results are cached)."""
    if "make_fixtures_nn" not in sys.modules:
        path = Path(__file__).parent / "fixtures" / "make_fixtures_nn.py"
        spec = importlib.util.spec_from_file_location("make_fixtures_nn", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["make_fixtures_nn"] = module
        spec.loader.exec_module(module)
    return sys.modules["make_fixtures_nn"]


fx = _fixture_script()

DT = {"f32": np.float32, "f64": np.float64}
PARAM_TOL = {"f64": 1e-12, "f32": 1e-6}

try:  # many tiny matmuls: one BLAS thread is fastest, and immune to a busy machine (docs/ARCHITECTURE.md §7)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None


@pytest.fixture(autouse=True)
def _one_blas_thread():
    if threadpool_limits is None:
        yield
    else:
        with threadpool_limits(1):
            yield


@pytest.fixture(scope="module")
def ref():
    arrays, source = fx.reference()
    print(f"reference values: {source}")
    return arrays


def case(ref, prefix):
    prefix += "/"
    return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


def mlp(dt):
    """The litetorch twin of make_fixtures_nn._torch_mlp: Linear-Tanh-Linear-Tanh-Linear."""
    layers = []
    for a, b in zip(fx.MLP_SIZES[:-1], fx.MLP_SIZES[1:]):
        layers += [nn.Linear(a, b, dtype=dt), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))


# ------------------------------------------------------------------------------------------------
# 50 steps on an MLP: litetorch == torch
# ------------------------------------------------------------------------------------------------
def train_litetorch(name: str, dt, steps: int = fx.OPT_STEPS):
    cls_name, kwargs = fx.OPT_CONFIGS[name]
    extras = fx.LOOP_EXTRAS.get(name, {})
    X, Y, weights = fx.mlp_init(dt)
    model = mlp(dt)
    model.load_state_dict(weights)
    opt = getattr(optim, cls_name)(model.parameters(), **kwargs)
    sched = None
    if "warmup" in extras:
        sched = optim.CosineWithWarmup(opt, extras["warmup"], steps, extras["min_lr_ratio"])
    x = lt.tensor(X)
    losses, norms = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), Y)
        loss.backward()
        if "clip" in extras:
            norms.append(optim.clip_grad_norm_(model.parameters(), extras["clip"]).item())
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return model, np.array(losses), np.array(norms)


@pytest.mark.parametrize("tag", ["f64", "f32"])
@pytest.mark.parametrize("name", list(fx.OPT_CONFIGS))
def test_50_steps_on_an_mlp_match_torch_optim(ref, name, tag):
    c = case(ref, f"{tag}/opt/{name}")
    model, losses, norms = train_litetorch(name, DT[tag])
    worst = 0.0
    for k, v in model.state_dict().items():
        assert v.dtype == DT[tag], f"{k} became {v.dtype}"
        worst = max(worst, max_err(v, c[f"final.{k}"]))
    print(f"{tag} {name}: max |param - torch| after {fx.OPT_STEPS} steps = {worst:.2e}")
    assert worst <= PARAM_TOL[tag], f"{name} {tag}: parameters differ from torch's by {worst:.3e}"
    assert max_err(losses, c["losses"]) <= (1e-12 if tag == "f64" else 1e-5)
    assert losses[-1] < losses[0]  # it learned something
    if "grad_norms" in c:
        assert max_err(norms, c["grad_norms"]) <= (1e-12 if tag == "f64" else 1e-5) * c["grad_norms"].max()


def test_optimizer_state_stays_in_the_parameter_dtype():
    """float32 in, float32 out: even a NumPy float64 learning rate must not upcast (docs/ARCHITECTURE.md §5)."""
    for cls, kw in ((optim.SGD, dict(momentum=0.9, weight_decay=0.1, nesterov=True)),
                    (optim.Adam, dict(weight_decay=0.1, amsgrad=True)), (optim.AdamW, dict(amsgrad=True))):
        p = nn.Parameter(np.ones((3, 2), dtype=np.float32))
        opt = cls([p], lr=np.float64(0.01), **kw)
        for _ in range(3):
            p.grad = np.full((3, 2), 0.5, dtype=np.float32)
            opt.step()
        assert p.dtype == np.float32, cls.__name__
        assert all(v.dtype == np.float32 for v in opt.state[p].values() if isinstance(v, np.ndarray))


# ------------------------------------------------------------------------------------------------
# Checkpoint resume
# ------------------------------------------------------------------------------------------------
def _run(model, opt, sched, X, Y, steps):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


@pytest.mark.parametrize("cls, kwargs", [(optim.AdamW, dict(lr=1e-2, amsgrad=True)),
                                         (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True))])
def test_state_dict_round_trip_resumes_identically(cls, kwargs):
    X, Y, weights = fx.mlp_init(np.float32)
    X = lt.tensor(X)

    def fresh():
        model = mlp(np.float32)
        model.load_state_dict(weights)
        opt = cls(model.parameters(), **kwargs)
        return model, opt, optim.CosineWithWarmup(opt, warmup_steps=5, total_steps=40, min_lr_ratio=0.1)

    # uninterrupted: 40 steps
    m1, o1, s1 = fresh()
    _run(m1, o1, s1, X, Y, 40)
    # interrupted after 15 steps: save everything, rebuild from scratch, load, finish
    m2, o2, s2 = fresh()
    _run(m2, o2, s2, X, Y, 15)
    ckpt = {"model": m2.state_dict(), "optim": o2.state_dict(), "sched": s2.state_dict()}
    buffer = "exp_avg" if cls is optim.AdamW else "momentum_buffer"
    o2.state[next(iter(o2.state))][buffer][...] = 123.0  # state_dict() saved a copy, not a view
    m3, o3, s3 = fresh()
    m3.load_state_dict(ckpt["model"])
    o3.load_state_dict(ckpt["optim"])
    s3.load_state_dict(ckpt["sched"])
    assert o3.param_groups[0]["lr"] == s3.get_last_lr()[0]
    _run(m3, o3, s3, X, Y, 25)
    for k, v in m1.state_dict().items():
        assert np.array_equal(v, m3.state_dict()[k]), k  # bit for bit


def test_optimizer_state_dict_layout_is_torchs():
    p1, p2 = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))
    opt = optim.Adam([{"params": [p1]}, {"params": [p2], "lr": 0.1}], lr=1e-3)
    p1.grad, p2.grad = np.ones(2), np.ones(3)
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert [g["lr"] for g in sd["param_groups"]] == [1e-3, 0.1]
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and sd["state"][0]["step"] == 1
    other = optim.Adam([nn.Parameter(np.ones(2))])
    with pytest.raises(ValueError, match="2 parameter groups, the optimizer has 1"):
        other.load_state_dict(sd)
    bad = optim.Adam([{"params": [nn.Parameter(np.ones(2))]}, {"params": [nn.Parameter(np.ones(4))]}])
    with pytest.raises(ValueError, match="shape"):
        bad.load_state_dict(sd)
    assert not bad.state  # nothing was changed


# ------------------------------------------------------------------------------------------------
# Optimizer API
# ------------------------------------------------------------------------------------------------
def test_tied_or_repeated_parameter_is_updated_once():
    p = nn.Parameter(np.zeros(2))
    opt = optim.SGD([p, p], lr=1.0)
    p.grad = np.ones(2)
    opt.step()
    assert np.array_equal(p.data, [-1.0, -1.0])
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}])


def test_param_groups_have_their_own_hyperparameters():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(2))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.0}], lr=0.5)
    a.grad = b.grad = np.ones(2)
    opt.step()
    assert np.array_equal(a.data, [-0.5, -0.5]) and np.array_equal(b.data, [0.0, 0.0])


def test_parameters_without_grad_are_skipped_and_zero_grad_clears():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.AdamW([a, b], lr=0.1)
    a.grad = np.ones(2)
    opt.step()
    assert np.array_equal(b.data, [1.0, 1.0]) and b not in opt.state
    opt.zero_grad()
    assert a.grad is None


def test_step_with_closure_returns_the_loss():
    w = nn.Parameter(np.array([3.0]))
    opt = optim.SGD([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 9.0 and np.isclose(w.data[0], 3.0 - 0.1 * 6.0)


def test_bad_hyperparameters_are_refused():
    p = [nn.Parameter(np.ones(1))]
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="learning rate"):
        optim.AdamW(p, lr=-1.0)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)


def test_the_first_adam_step_moves_every_parameter_by_lr_against_its_gradient():
    """With both moments bias-corrected, step 1 is lr * g / (|g| + eps): every parameter moves by ~lr,
    whatever the size of its gradient (Kingma & Ba 2015, section 2.1). Without the corrections the first
    steps would be ~(1 - beta1) / sqrt(1 - beta2) times that."""
    g = np.array([1e-3, -2.0, 50.0, -0.5])
    p = lt.Parameter(np.zeros(4))
    p.grad = g.copy()
    optim.Adam([p], lr=0.01, eps=1e-12).step()
    np.testing.assert_allclose(p.data, -0.01 * g / (np.abs(g) + 1e-12), rtol=1e-12)  # = -lr * sign(g), to 1e-9


def test_adamw_decoupled_decay_differs_from_adam_l2():
    """With zero gradient, AdamW still shrinks the weight by (1 - lr*wd); Adam's L2 goes through 1/sqrt(v)."""
    a, b = nn.Parameter(np.array([2.0])), nn.Parameter(np.array([2.0]))
    oa, ob = optim.AdamW([a], lr=0.1, weight_decay=0.5), optim.Adam([b], lr=0.1, weight_decay=0.5)
    a.grad = b.grad = np.zeros(1)
    oa.step()
    ob.step()
    assert a.data[0] == 2.0 * (1 - 0.1 * 0.5)
    assert np.isclose(b.data[0], 2.0 - 0.1, atol=1e-6)  # Adam: a full lr-sized step along sign(wd * p)


# ------------------------------------------------------------------------------------------------
# Gradient clipping
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", ["f64", "f32"])
@pytest.mark.parametrize("name", list(fx.CLIP_CASES))
def test_clip_grad_norm_matches_torch(ref, name, tag):
    c = case(ref, f"{tag}/clip/{name}")
    max_norm, norm_type = fx.CLIP_CASES[name]
    grads = fx.clip_grads(DT[tag])
    params = [nn.Parameter(np.zeros(g.shape, dtype=DT[tag])) for g in grads] + [nn.Parameter(np.zeros(2, DT[tag]))]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    total = optim.clip_grad_norm_(params, max_norm, norm_type)
    assert isinstance(total, lt.Tensor) and total.dtype == DT[tag] and params[-1].grad is None
    tol = 1e-12 if tag == "f64" else 1e-6
    assert abs(total.item() - c["total_norm"]) <= tol * c["total_norm"]
    for i, p in enumerate(params[:-1]):
        assert p.grad.dtype == DT[tag]
        assert max_err(p.grad, c[f"clipped{i}"]) <= tol * max(1.0, np.abs(c[f"clipped{i}"]).max())


def test_clip_grad_norm_caps_the_global_norm_and_keeps_direction():
    rng = np.random.default_rng(0)
    ps = [nn.Parameter(np.zeros(s)) for s in ((3, 4), (5,))]
    for p in ps:
        p.grad = rng.standard_normal(p.shape) * 10
    before = np.concatenate([p.grad.ravel() for p in ps])
    total = optim.clip_grad_norm_(ps, 2.0).item()
    after = np.concatenate([p.grad.ravel() for p in ps])
    assert np.isclose(total, np.linalg.norm(before))
    assert np.isclose(np.linalg.norm(after), 2.0 * total / (total + 1e-6))
    assert np.allclose(after / np.linalg.norm(after), before / np.linalg.norm(before))


def test_clip_grad_norm_edge_cases():
    assert optim.clip_grad_norm_([nn.Parameter(np.ones(2))], 1.0).item() == 0.0  # no gradients at all
    p = nn.Parameter(np.ones(2))
    p.grad = np.array([np.inf, 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


# ------------------------------------------------------------------------------------------------
# Learning-rate schedule
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(fx.SCHEDULES))
def test_warmup_cosine_equals_hf_transformers_at_every_step(ref, name):
    base, warmup, total, ratio = fx.SCHEDULES[name]
    expected = ref[f"sched/{name}/lrs"]
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=base)
    sched = optim.get_cosine_schedule_with_warmup(opt, warmup, total, min_lr_ratio=ratio)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert len(lrs) == len(expected)
    assert max_err(lrs, expected) <= 1e-15 * base
    # the shape: 0 at step 0, the peak right after warmup, the floor at the end and beyond
    assert lrs[0] == 0.0 and lrs[warmup] == base and math.isclose(lrs[-1], ratio * base, abs_tol=1e-18)
    for _ in range(5):
        sched.step()
    assert math.isclose(sched.get_last_lr()[0], ratio * base, abs_tol=1e-18)


def test_lambda_lr_is_torch_semantics():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=2.0)
    sched = optim.LambdaLR(opt, lambda s: 0.5 ** s)
    assert opt.param_groups[0]["lr"] == 2.0 and opt.param_groups[0]["initial_lr"] == 2.0  # step 0 applied
    sched.step()
    sched.step()
    assert sched.get_last_lr() == [0.5] and sched.last_epoch == 2


def test_lambda_lr_matches_torch_lambdalr_live():
    torch = pytest.importorskip("torch")
    lam = lambda s: fx_lambda(s)  # noqa: E731
    t_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    t_sched = torch.optim.lr_scheduler.LambdaLR(t_opt, lam)
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.3)
    sched = optim.LambdaLR(opt, lam)
    for _ in range(30):
        assert sched.get_last_lr() == t_sched.get_last_lr()
        t_opt.step()
        t_sched.step()
        sched.step()


def fx_lambda(s):
    return optim.lr_scheduler.warmup_cosine_lambda(s, warmup_steps=4, total_steps=25, min_lr_ratio=0.05)
