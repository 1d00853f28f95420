"""litetorch.nn layers and Module against PyTorch.

Layer parity: every case of `LAYER_CASES` (tests/fixtures/make_fixtures_nn.py) is built in
litetorch from the same description, the torch module's weights are copied in through
`load_state_dict`, and the output and *all* gradients (input and parameters, for the loss
sum(out * G)) are compared with PyTorch's: live when torch is importable, from the committed
fixture `tests/fixtures/nn.npz` otherwise. Tolerances (docs/ARCHITECTURE.md §5): float64 max abs error
<= 1e-10; float32 <= 1e-5 times the reference's largest magnitude.
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import litetorch as lt
import litetorch.nn.functional as F
from litetorch import nn
from litetorch.errors import ShapeError, StateDictError, TokenizerError
from litetorch.nn.activation import Identity  # not yet exported from litetorch.nn


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
PARAM_MODULES = ("Linear", "Embedding", "LayerNorm", "RMSNorm")


@pytest.fixture(scope="module")
def ref():
    arrays, source = fx.reference()
    print(f"reference values: {source}")
    return arrays


def case(ref, tag, name):
    prefix = f"{tag}/{name}/"
    return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


def max_err(actual, expected) -> float:
    return float(np.max(np.abs(np.asarray(actual, dtype=np.float64) - np.asarray(expected, dtype=np.float64)),
                        initial=0.0))


def assert_close(actual, expected, tag: str, what: str):
    """float64: max abs error <= 1e-10; float32: <= 1e-5 * max|expected| (the output's scale)."""
    actual = np.asarray(actual)
    assert actual.shape == np.shape(expected), f"{what}: shape {actual.shape} vs torch {np.shape(expected)}"
    err = max_err(actual, expected)
    scale = float(np.max(np.abs(expected), initial=0.0)) or 1.0
    tol = 1e-10 if tag == "f64" else 1e-5 * scale
    print(f"[{'OK' if err <= tol else 'DIFF'}] {tag} {what}: max abs err {err:.2e} (tol {tol:.1e})")
    assert err <= tol, f"{what}: max abs error {err:.3e} > {tol:.1e} (scale {scale:.3g})"
    return err


# ------------------------------------------------------------------------------------------------
# Layer parity with PyTorch (forward and backward)
# ------------------------------------------------------------------------------------------------
def build_litetorch_case(name: str, tag: str, c: dict):
    """The litetorch twin of LAYER_CASES[name]: returns (function of x, module or None)."""
    spec = fx.LAYER_CASES[name]
    kwargs = spec.get("kwargs", {})
    if "module" in spec:
        cls = getattr(nn, spec["module"])
        if spec["module"] in PARAM_MODULES:
            mod = cls(*spec.get("args", ()), **kwargs, dtype=DT[tag])
        elif spec["module"] == "Dropout":  # litetorch's mask, from a seeded Generator
            mod = cls(**kwargs, generator=lt.Generator(fx.DROPOUT_SEED))
        else:
            mod = cls(*spec.get("args", ()), **kwargs)
        mod.load_state_dict({k[2:]: v for k, v in c.items() if k.startswith("p.")})  # copy torch's weights
        return mod, mod
    loss = getattr(F, spec["fn"])
    return (lambda x: loss(x, c["target"], **kwargs)), None


@pytest.mark.parametrize("tag", ["f64", "f32"])
@pytest.mark.parametrize("name", list(fx.LAYER_CASES))
def test_layer_matches_torch_forward_and_backward(ref, name, tag):
    c = case(ref, tag, name)
    fn, mod = build_litetorch_case(name, tag, c)
    x = lt.tensor(c["x"], requires_grad=c["x"].dtype.kind == "f")
    out = fn(x)
    assert out.dtype == DT[tag], f"{name}: output dtype {out.dtype}, expected {DT[tag]}"
    assert_close(out.data, c["out"], tag, f"{name} out")
    (out * lt.tensor(c["G"])).sum().backward()
    if "grad.x" in c:
        assert x.grad.dtype == DT[tag]
        assert_close(x.grad, c["grad.x"], tag, f"{name} grad x")
    if mod is not None:
        for pname, p in mod.named_parameters():
            assert p.grad.dtype == DT[tag]
            assert_close(p.grad, c[f"grad.p.{pname}"], tag, f"{name} grad {pname}")


def test_rms_norm_matches_hf_llama_order_in_float16(ref):
    """HF LlamaRMSNorm: normalize in float32, cast back to float16, then multiply by the weight."""
    c = case(ref, "f16", "hf_rms_norm")
    ours = nn.RMSNorm(16, eps=1e-5, dtype=np.float16)
    ours.load_state_dict({"weight": c["p.weight"]})
    got = ours(lt.tensor(c["x"])).data
    assert got.dtype == np.float16
    # the same float32 math, then float16 roundings: at most one float16 ulp apart
    expected = c["out"]
    ulp = np.spacing(np.abs(expected)).astype(np.float32)
    err = np.abs(got.astype(np.float32) - expected.astype(np.float32))
    assert np.all(err <= ulp), f"max error {err.max()} ulp {ulp[err.argmax() // 1]}"


def test_rms_norm_equals_torch_rmsnorm_and_hf_in_float32():
    torch = pytest.importorskip("torch")
    modeling = pytest.importorskip("transformers.models.llama.modeling_llama")
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 7, 32)) * 10).astype(np.float32)
    w = (1 + 0.3 * rng.standard_normal(32)).astype(np.float32)
    a = torch.nn.RMSNorm(32, eps=1e-6)
    b = modeling.LlamaRMSNorm(32, eps=1e-6)
    ours = nn.RMSNorm(32, eps=1e-6)
    for m in (a, b, ours):
        m.load_state_dict({"weight": torch.from_numpy(w)})  # a torch tensor loads directly, too
    got = ours(lt.tensor(x)).data
    for m in (a, b):
        expected = m(torch.from_numpy(x)).detach().numpy()
        assert max_err(got, expected) <= 1e-5 * np.abs(expected).max()


# ------------------------------------------------------------------------------------------------
# Dropout
# ------------------------------------------------------------------------------------------------
def test_dropout_p0_and_eval_mode_are_identity():
    x = lt.tensor(np.random.default_rng(0).standard_normal((4, 5)), requires_grad=True)
    assert F.dropout(x, 0.0) is x
    d = nn.Dropout(0.5).eval()
    assert d(x) is x


def test_dropout_p1_zeros_everything_and_its_gradient():
    x = lt.tensor(np.random.default_rng(0).standard_normal((4, 5)), requires_grad=True)
    y = nn.Dropout(1.0)(x)
    assert np.all(y.data == 0)
    y.sum().backward()
    assert np.all(x.grad == 0)


def test_dropout_same_seed_same_mask_and_scaling():
    x = lt.ones(50, 40)
    a = nn.Dropout(0.25, generator=lt.Generator(1))(x).data
    b = nn.Dropout(0.25, generator=lt.Generator(1))(x).data
    c = nn.Dropout(0.25, generator=lt.Generator(2))(x).data
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0.0, np.float32(1 / 0.75)}  # survivors scaled by 1/(1-p)
    lt.manual_seed(9)
    d = F.dropout(x, 0.25).data
    lt.manual_seed(9)
    assert np.array_equal(d, F.dropout(x, 0.25).data)  # the global generator is seeded by manual_seed


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_preserves_the_expected_value(p):
    n = 400_000
    y = F.dropout(lt.ones(n, dtype=np.float64), p, generator=lt.Generator(0)).data
    # each element is 1/(1-p) with prob 1-p, else 0: mean 1, variance p/(1-p)
    sd_of_mean = np.sqrt(p / (1 - p) / n)
    assert abs(y.mean() - 1.0) < 5 * sd_of_mean
    assert abs((y == 0).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_dropout_rejects_bad_p():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nn.Dropout(1.5)


# ------------------------------------------------------------------------------------------------
# Module API
# ------------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8, bias=False))
        self.heads = nn.ModuleDict({"q": nn.Linear(8, 8), "k": nn.Linear(8, 4)})
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return x + self.drop(self.mlp(self.norm(x)))


class Net(nn.Module):
    """The litetorch twin of the torch `Net` in make_fixtures_nn._torch_names."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.layers = nn.ModuleList([Block() for _ in range(2)])
        self.final_norm = nn.RMSNorm(8)
        self.lm_head = nn.Linear(8, 11, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        self.register_buffer("position_ids", np.arange(5))
        self.register_buffer("cache", np.zeros(3, dtype=np.float32), persistent=False)
        self.scale = 2.0  # a plain attribute: not registered

    def forward(self, ids):
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.final_norm(h))


def test_state_dict_names_and_order_equal_torch(ref):
    net = Net()
    assert list(net.state_dict()) == list(ref["names/state_dict"])
    assert [n for n, _ in net.named_parameters()] == list(ref["names/named_parameters"])
    assert [str(v.shape) for v in net.state_dict().values()] == list(ref["names/shapes"])


def test_parameters_register_on_assignment():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert "layers.1.heads.k.bias" in names and "scale" not in names
    net.layers[0].extra = nn.Parameter(np.zeros(2, dtype=np.float32))
    assert "layers.0.extra" in [n for n, _ in net.named_parameters()]
    del net.layers[0].extra
    assert "layers.0.extra" not in [n for n, _ in net.named_parameters()]
    net.layers[0].norm = Identity()  # replacing a submodule drops its parameters
    assert not any(n.startswith("layers.0.norm") for n, _ in net.named_parameters())
    with pytest.raises(TypeError, match="Parameter or None"):
        net.final_norm.weight = lt.ones(8)  # a plain Tensor in a parameter slot: refused, like torch
    net.final_norm.weight = None
    assert "final_norm.weight" not in net.state_dict()


def test_replacing_a_module_or_parameter_keeps_its_place():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    order = list(seq.state_dict())
    seq[0] = nn.Linear(2, 3)
    seq[1] = nn.Tanh()
    assert list(seq.state_dict()) == order and isinstance(seq[1], nn.Tanh)
    lin = nn.Linear(2, 2)
    lin.weight = nn.Parameter(np.zeros((2, 2), dtype=np.float32))
    assert list(lin.state_dict()) == ["weight", "bias"]
    assert isinstance(seq[:2], nn.Sequential) and len(seq[:2]) == 2


def test_module_before_super_init_fails_clearly():
    class Bad(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Bad()


def test_tied_parameters_appear_once():
    net = Net()
    params = list(net.parameters())
    assert len(params) == len({id(p) for p in params})
    assert sum(p is net.embed.weight for p in params) == 1
    sd = net.state_dict()
    assert "lm_head.weight" in sd and "embed.weight" in sd  # both names saved, like torch
    assert net.num_parameters() == sum(p.data.size for p in params)


def test_buffers_follow_dtype_and_only_persistent_ones_are_saved():
    net = Net()
    assert "position_ids" in net.state_dict() and "cache" not in net.state_dict()
    net.double()
    assert net.cache.dtype == np.float64 and net.embed.weight.dtype == np.float64
    assert net.position_ids.dtype.kind == "i"  # integer buffers are not cast
    net.position_ids = np.arange(5) * 2  # re-assigning a buffer keeps it a buffer
    assert np.array_equal(net.state_dict()["position_ids"], np.arange(5) * 2)
    net.float()
    assert all(p.dtype == np.float32 for p in net.parameters())


def test_load_state_dict_strict_names_every_problem_and_changes_nothing():
    net = Net()
    before = net.state_dict()
    sd = Net().state_dict()
    del sd["layers.0.norm.bias"]
    sd["layers.1.mlp.0.weight"] = np.zeros((3, 3), dtype=np.float32)
    sd["not.a.param"] = np.zeros(2)
    with pytest.raises(StateDictError) as info:
        net.load_state_dict(sd)
    msg = str(info.value)
    assert "missing keys: layers.0.norm.bias" in msg
    assert "unexpected keys: not.a.param" in msg
    assert "layers.1.mlp.0.weight: checkpoint (3, 3) vs model (16, 8)" in msg
    after = net.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_load_state_dict_non_strict_reports_and_loads_the_rest():
    net, other = Net(), Net()
    sd = other.state_dict()
    del sd["final_norm.weight"]
    sd["extra.weight"] = np.zeros(1)
    result = net.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["final_norm.weight"] and result.unexpected_keys == ["extra.weight"]
    missing, unexpected = result  # unpacks like torch's NamedTuple
    assert np.array_equal(net.layers[1].mlp[0].weight.data, other.layers[1].mlp[0].weight.data)
    sd["layers.0.norm.weight"] = np.zeros(9)
    with pytest.raises(StateDictError, match="size mismatch"):  # shapes are checked even when not strict
        net.load_state_dict(sd, strict=False)


def test_load_state_dict_keeps_the_model_dtype_and_copies():
    m = nn.Linear(3, 2)
    w = np.arange(6, dtype=np.float64).reshape(2, 3)
    m.load_state_dict({"weight": w, "bias": np.zeros(2)})
    assert m.weight.dtype == np.float32
    w[0, 0] = 100.0
    assert m.weight.data[0, 0] == 0.0  # a copy, not a view of the caller's array


def test_train_and_eval_propagate():
    net = Net()
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    x = lt.tensor(np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32))
    blk = net.layers[0]
    assert np.array_equal(blk(x).data, blk(x).data)  # dropout is off in eval mode
    net.train()
    assert net.layers[1].drop.training and net.layers[1].heads["q"].training


def test_zero_grad():
    net = Net()
    logits = net(np.array([[1, 2, 3]]))
    F.cross_entropy(logits.reshape(-1, 11), np.array([2, 3, 4])).backward()
    assert net.embed.weight.grad is not None and net.layers[1].mlp[2].weight.grad.any()
    net.zero_grad(set_to_none=False)
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_deepcopy_gives_independent_parameters():
    net = Net()
    twin = copy.deepcopy(net)
    twin.embed.weight.data[0, 0] += 1.0
    assert net.embed.weight.data[0, 0] != twin.embed.weight.data[0, 0]
    assert twin.lm_head.weight is twin.embed.weight  # tying survives the copy
    assert list(twin.state_dict()) == list(net.state_dict())


def test_repr_shows_the_tree():
    text = repr(Net())
    assert "(layers): ModuleList" in text and "Linear(in_features=8, out_features=16, bias=True)" in text


# ------------------------------------------------------------------------------------------------
# Initialization (torch's defaults)
# ------------------------------------------------------------------------------------------------
def test_linear_init_is_uniform_within_one_over_sqrt_fan_in():
    m = nn.Linear(400, 300, generator=lt.Generator(0))
    bound = 1 / np.sqrt(400)
    w = m.weight.data.astype(np.float64)
    assert m.weight.dtype == np.float32 and m.weight.shape == (300, 400)
    assert np.abs(w).max() <= bound and np.abs(m.bias.data).max() <= bound
    assert np.abs(w).max() > 0.99 * bound  # fills the whole interval
    n = w.size
    assert abs(w.mean()) < 5 * bound / np.sqrt(3 * n)
    assert abs(w.var() / (bound ** 2 / 3) - 1) < 0.02  # U(-b, b) has variance b^2 / 3


def test_embedding_init_is_standard_normal():
    e = nn.Embedding(1000, 64, generator=lt.Generator(0))
    w = e.weight.data.astype(np.float64)
    assert abs(w.mean()) < 5 / np.sqrt(w.size) and abs(w.std() - 1) < 0.01
    pad = nn.Embedding(10, 4, padding_idx=2)
    assert not pad.weight.data[2].any()


def test_norm_init_is_ones_and_zeros():
    ln, rms = nn.LayerNorm(5), nn.RMSNorm(5)
    assert np.all(ln.weight.data == 1) and np.all(ln.bias.data == 0) and np.all(rms.weight.data == 1)


def test_init_is_reproducible_from_a_seed():
    lt.manual_seed(123)
    a = nn.Linear(5, 3).weight.data
    lt.manual_seed(123)
    assert np.array_equal(a, nn.Linear(5, 3).weight.data)
    assert nn.Linear(5, 3, dtype=np.float64).weight.dtype == np.float64


# ------------------------------------------------------------------------------------------------
# Errors that teach, and dtype discipline
# ------------------------------------------------------------------------------------------------
def test_errors_name_expected_and_actual():
    with pytest.raises(ShapeError, match=r"input has 5 features.*weight expects 3"):
        nn.Linear(3, 2)(lt.ones(4, 5))
    with pytest.raises(TokenizerError, match=r"token id 10 in embedding ids is out of range for a vocabulary of 10 "):
        nn.Embedding(10, 2)(np.array([1, 10]))
    with pytest.raises(ShapeError, match="target class 7 out of range for 5 classes"):
        F.cross_entropy(lt.ones(2, 5), np.array([1, 7]))
    with pytest.raises(ShapeError, match="integer class ids"):
        F.cross_entropy(lt.ones(2, 5), np.array([1.0, 2.0]))
    with pytest.raises(ShapeError, match=r"target has shape \(3,\)"):
        F.cross_entropy(lt.ones(2, 5), np.array([1, 2, 3]))
    with pytest.raises(ShapeError, match="mse_loss"):
        F.mse_loss(lt.ones(2, 3), np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(lt.ones(2, 5), np.array([1, 2]), reduction="avg")


def test_cross_entropy_all_ignored_is_nan_like_torch():
    x = lt.ones(2, 5, requires_grad=True)
    out = F.cross_entropy(x, np.array([-100, -100]))
    assert np.isnan(out.item())
    out.backward()
    assert np.array_equal(x.grad, np.zeros((2, 5)))  # torch: NaN loss, zero gradients
    assert F.cross_entropy(lt.ones(2, 5), np.array([-100, -100]), reduction="sum").item() == 0.0


def test_cross_entropy_gradient_by_finite_differences():
    """An independent check that needs no torch: central differences in float64."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 4, 3))
    t = np.array([[0, 3, -100], [2, -100, 1]])

    def f(a):
        return F.cross_entropy(lt.tensor(a), t, label_smoothing=0.15).item()

    x = lt.tensor(x0, requires_grad=True)
    F.cross_entropy(x, t, label_smoothing=0.15).backward()
    num = np.zeros_like(x0)
    h = 1e-6
    for i in np.ndindex(x0.shape):
        e = np.zeros_like(x0)
        e[i] = h
        num[i] = (f(x0 + e) - f(x0 - e)) / (2 * h)
    assert max_err(x.grad, num) < 1e-8


def test_float32_model_stays_float32_end_to_end():
    """The NumPy-2 promotion trap (docs/ARCHITECTURE.md §5): no layer may silently upcast a float32 activation."""
    net = Net()
    seen = []
    ids = np.array([[1, 2, 3, 4]])
    h = net.embed(ids)
    seen.append(h)
    for layer in net.layers:
        h = layer.norm(h)
        seen.append(h)
        h = layer.mlp(h)
        seen.append(h)
    h = net.final_norm(h)
    seen.append(h)
    logits = net.lm_head(h)
    loss = F.cross_entropy(logits.reshape(-1, 11), np.array([1, 2, 3, -100]), label_smoothing=0.1)
    seen += [logits, loss]
    assert all(t.dtype == np.float32 for t in seen), [t.dtype for t in seen]
    loss.backward()
    assert all(p.grad.dtype == np.float32 for p in net.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------------------
# The committed fixture
# ------------------------------------------------------------------------------------------------
def test_fixture_loads_without_pickle_and_has_metadata():
    with np.load(fx.NPZ, allow_pickle=False) as z:
        for key in ("meta/torch_version", "meta/numpy_version", "meta/script", "meta/date", "meta/seeds"):
            assert key in z.files and z[key].dtype.kind == "U", key
        assert all(z[k].dtype != object for k in z.files)


def test_fixture_is_reproduced_by_regenerating_it():
    """Re-running the fixture script with today's torch reproduces the committed numbers."""
    if not fx.torch_available():
        pytest.skip("torch/transformers not installed: cannot regenerate the fixture")
    live, saved = fx.compute(), fx.load_npz()
    assert set(live) == {k for k in saved if not k.startswith("meta/")}
    for k, v in live.items():
        if v.dtype.kind in "US":
            assert np.array_equal(v, saved[k]), k
        elif v.dtype.kind in "biu":
            assert np.array_equal(v, saved[k]), k
        else:
            # Keys say the precision the number was computed in: "f32/.../losses" holds float32 losses
            # stored as float64 (loss.item()), so it is reproducible to float32 rounding only (torch's
            # float32 kernels round differently on AVX2 and AVX-512 machines), not to 1e-10.
            computed_in_f64 = v.dtype == np.float64 and not k.startswith("f32/")
            tol = 1e-10 if computed_in_f64 else 1e-5
            scale = max(float(np.max(np.abs(v), initial=0.0)), 1.0)
            assert max_err(v, saved[k]) <= tol * scale, k


@pytest.mark.parametrize("shape,normalized", [((3, 5), (5,)), ((2, 3, 4), (3, 4))])
def test_rms_norm_backward_passes_finite_differences(shape, normalized):
    """rms_norm is one op with a hand-written backward: check it by central differences (float64)."""
    from litetorch.testing import gradcheck
    rng = np.random.default_rng(3)
    x = lt.tensor(rng.standard_normal(shape), requires_grad=True)
    w = lt.tensor(rng.standard_normal(normalized), requires_grad=True)
    assert gradcheck(lambda a, b: F.rms_norm(a, normalized, b, 1e-5), x, w)
    assert gradcheck(lambda a: F.rms_norm(a, normalized, None, 1e-5), x)


# ------------------------------------------------------------------------------------------------
# The norms are their formulas (no torch needed: the definition, in float64, with an eps large enough
# to matter). The torch comparisons above are the parity claim; these pin the formula itself.
# ------------------------------------------------------------------------------------------------
def test_rms_norm_is_x_over_the_root_mean_square_plus_eps_in_float64():
    x = np.random.default_rng(3).standard_normal((4, 6)) * 0.3
    w = np.random.default_rng(4).standard_normal(6)
    expected = x / np.sqrt((x * x).mean(-1, keepdims=True) + 0.05) * w
    out = F.rms_norm(lt.tensor(x), (6,), lt.tensor(w), eps=0.05).data
    assert np.abs(out - expected).max() <= 1e-12


def test_layer_norm_uses_the_biased_variance_in_float64():
    x = np.random.default_rng(5).standard_normal((4, 6))
    w, b = np.random.default_rng(6).standard_normal((2, 6))
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)  # ddof=0: divide by N, as torch
    expected = (x - mu) / np.sqrt(var + 1e-5) * w + b
    out = F.layer_norm(lt.tensor(x), (6,), lt.tensor(w), lt.tensor(b), 1e-5).data
    assert np.abs(out - expected).max() <= 1e-12
