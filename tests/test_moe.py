"""Sparse Mixture of Experts (nn/moe.py) and Qwen3-Next's gated-attention pieces against HF transformers.

Claims:
- SparseMoeBlock equals HF's Qwen3NextSparseMoeBlock (with a shared expert) and Qwen3MoeSparseMoeBlock
  (without) given copied weights (`load_state_dict(hf.state_dict())`): forward and backward in float32
  (<= 1e-5 relative) and in float64 (<= 1e-10 against torch autograd through HF's code: the input and
  every parameter, the router's included). HF's router runs its softmax in float32 whatever the input
  (an upcast for bf16, a downcast for float64), so the float64 reference runs HF's code with that
  softmax in float64 (`float64_softmax`); everything else is HF's code unchanged.
- load_balancing_loss equals HF's load_balancing_loss_func, value and gradient, with and without an
  attention mask. In float32 directly; in float64, HF accumulates in float32 by design, so it is
  checked to float32 rounding against HF and to 1e-10 against Switch's eqs. 4-6 written in torch float64.
- Ties: litetorch picks the lower expert index; torch.topk's order of ties is unspecified (on CPU it picked
  other experts). The weights are the same, and when the tied experts are the same function so is the output.
- top-1 routing with renormalised weights gives the router no gradient from the output (w = p/p = 1).
- A few AdamW steps (task loss + auxiliary loss) lower the loss of a toy regression and move the router.
- index_add (the combine step) equals torch.index_add, value and gradients, with repeated indices.
- ZeroCenteredRMSNorm equals HF's Qwen3NextRMSNorm (float32) and torch's rms_norm with weight 1 + w (float64).
- split_query_and_gate + gate_attention_output, composed with litetorch's Linear, RoPE and SDPA, equal
  HF's Qwen3NextAttention forward and backward (float32, and float64 with HF's float32 islands lifted).
- Bad arguments raise ConfigError / ShapeError naming the expected and the actual value.
"""
import contextlib

import numpy as np
import pytest

import litetorch as lt
from litetorch import nn, optim
from litetorch.errors import ConfigError, DTypeError, ShapeError
from litetorch.nn import functional as F
from litetorch.nn.moe import top_k_indices
from litetorch.testing import gradcheck, named_grads

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import Qwen3MoeConfig, Qwen3NextConfig  # noqa: E402
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock  # noqa: E402
from transformers.models.qwen3_next import modeling_qwen3_next as qnext  # noqa: E402

TDT = {np.float32: torch.float32, np.float64: torch.float64}
C, E, K, I, I_SHARED = 16, 8, 2, 12, 20


def assert_close(ours, ref, dtype, what=""):
    """float64: max abs error <= 1e-10; float32: max abs error <= 1e-5 * max(max|ref|, 1)."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    err = np.abs(ours - ref).max()
    bound = 1e-10 if dtype == np.float64 else 1e-5 * max(np.abs(ref).max(), 1.0)
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"
    return err


@contextlib.contextmanager
def float64_softmax():
    """Inside, `F.softmax(x, dtype=torch.float32)` on a float64 x stays float64.

    HF's router and eager attention compute their softmax with `dtype=torch.float` (float32) to protect
    bf16 training; for a float64 input that is a downcast to float32, which caps a float64 check at ~1e-8.
    Only that one argument is ignored, and only for float64 inputs.
    """
    original = torch.nn.functional.softmax

    def softmax(x, dim=None, _stacklevel=3, dtype=None):
        return original(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)

    torch.nn.functional.softmax = softmax
    try:
        yield
    finally:
        torch.nn.functional.softmax = original


def hf_next_block(dtype, seed=0, top_k=K, norm_topk_prob=True):
    cfg = Qwen3NextConfig(hidden_size=C, num_experts=E, num_experts_per_tok=top_k, moe_intermediate_size=I,
                          shared_expert_intermediate_size=I_SHARED, norm_topk_prob=norm_topk_prob)
    return _randomized(qnext.Qwen3NextSparseMoeBlock(cfg), dtype, seed)


def hf_moe_block(dtype, seed=0, top_k=3, norm_topk_prob=False):
    cfg = Qwen3MoeConfig(hidden_size=C, num_experts=E, num_experts_per_tok=top_k, moe_intermediate_size=I,
                         norm_topk_prob=norm_topk_prob)
    return _randomized(Qwen3MoeSparseMoeBlock(cfg), dtype, seed)


def _randomized(block, dtype, seed):
    """Distinct random weights everywhere (HF's experts start as torch.empty, its router as zeros).
    The router's scale spreads its probabilities, so no two are within rounding of each other."""
    r = np.random.default_rng(seed)
    block = block.to(TDT[dtype])
    with torch.no_grad():
        for name, p in block.named_parameters():
            scale = 1.0 if name == "gate.weight" else p.shape[-1] ** -0.5
            p.copy_(torch.from_numpy(r.standard_normal(p.shape) * scale))
    return block


def ours_like(hf, dtype, shared: bool, top_k: int, norm_topk_prob: bool):
    block = nn.SparseMoeBlock(C, E, top_k, I, norm_topk_prob=norm_topk_prob,
                              shared_expert_hidden=I_SHARED if shared else None).to(dtype)
    block.load_state_dict(hf.state_dict())
    return block


def _compare_block(hf, ours, dtype, seed):
    r = np.random.default_rng(seed)
    x, g = r.standard_normal((3, 7, C)).astype(dtype), r.standard_normal((3, 7, C)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    with float64_softmax():
        yt = hf(xt)
    yt.backward(torch.from_numpy(g))
    xl = lt.tensor(x, requires_grad=True)
    y = ours(xl)
    y.backward(g)
    assert y.dtype == dtype
    errs = {"out": assert_close(y.data, yt.detach().numpy(), dtype, "out"),
            "dx": assert_close(xl.grad, xt.grad.numpy(), dtype, "dx")}
    grads = named_grads(ours)  # the shared expert's gate_up_proj split into HF's gate_proj / up_proj
    assert sorted(grads) == sorted(n for n, _ in hf.named_parameters())
    for name, p in hf.named_parameters():
        errs[name] = assert_close(grads[name], p.grad.numpy(), dtype, f"d {name}")
    return errs


# --------------------------------------------------------------------------------------------
# The block against HF
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_block_equals_hf_qwen3_next_forward_and_backward(dtype):
    hf = hf_next_block(dtype, seed=1)
    errs = _compare_block(hf, ours_like(hf, dtype, shared=True, top_k=K, norm_topk_prob=True), dtype, seed=2)
    assert "gate.weight" in errs and "shared_expert_gate.weight" in errs


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_block_equals_hf_qwen3_moe_forward_and_backward(dtype):
    """Qwen3-MoE: no shared expert, and (its default) unnormalised top-k weights; k = 3 here."""
    hf = hf_moe_block(dtype, seed=3)
    errs = _compare_block(hf, ours_like(hf, dtype, shared=False, top_k=3, norm_topk_prob=False), dtype, seed=4)
    assert set(errs) == {"out", "dx", "gate.weight", "experts.gate_up_proj", "experts.down_proj"}


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_router_picks_hf_experts_and_weights(norm_topk_prob):
    hf = hf_next_block(np.float32, seed=5, top_k=3, norm_topk_prob=norm_topk_prob)
    ours = ours_like(hf, np.float32, shared=True, top_k=3, norm_topk_prob=norm_topk_prob)
    x = np.random.default_rng(6).standard_normal((40, C)).astype(np.float32)
    with torch.no_grad():
        logits_t, w_t, i_t = hf.gate(torch.from_numpy(x))
    with lt.no_grad():
        logits, w, i = ours.gate(x)
    np.testing.assert_array_equal(i.data, i_t.numpy())
    assert_close(logits.data, logits_t.numpy(), np.float32, "router logits")
    assert_close(w.data, w_t.numpy(), np.float32, "top-k weights")
    if norm_topk_prob:
        np.testing.assert_allclose(w.data.sum(-1), 1.0, rtol=1e-6)


def test_float32_block_stays_float32():
    """No float64 scalar sneaks in (the NumPy 2 promotion trap): outputs, logits, weights and the loss."""
    block = nn.SparseMoeBlock(C, E, K, I, shared_expert_hidden=I_SHARED)
    x = lt.tensor(np.random.default_rng(0).standard_normal((2, 5, C)).astype(np.float32), requires_grad=True)
    y, logits = block(x, output_router_logits=True)
    _, w, i = block.gate(x)
    loss = nn.load_balancing_loss(logits, E, K)
    assert (y.dtype, logits.dtype, w.dtype, loss.dtype) == (np.float32,) * 4
    assert i.dtype == np.int64
    (y.sum() + loss).backward()
    assert all(p.grad.dtype == np.float32 for p in block.parameters())


# --------------------------------------------------------------------------------------------
# Gradients reach the router
# --------------------------------------------------------------------------------------------
def test_top1_with_renormalised_weights_gives_the_router_no_gradient_from_the_output():
    """With k = 1 and norm_topk_prob, each token's single weight is p / p = 1 whatever the logits:
    the output cannot teach the router (only an auxiliary loss can). Without renormalisation it can."""
    x = np.random.default_rng(0).standard_normal((12, C))
    for norm, expect_zero in ((True, True), (False, False)):
        lt.manual_seed(0)
        block = nn.SparseMoeBlock(C, E, 1, I, norm_topk_prob=norm).double()
        block(lt.tensor(x)).sum().backward()
        g = np.abs(block.gate.weight.grad).max()
        assert (g < 1e-12) if expect_zero else (g > 1e-3), f"norm_topk_prob={norm}: max |d router| = {g:.2e}"


def test_a_few_training_steps_lower_the_loss_on_a_toy_task():
    """A student block learns a random teacher block's function (task loss + 0.01 * auxiliary loss)."""
    lt.manual_seed(0)
    teacher = nn.SparseMoeBlock(8, 4, 2, 16).double()
    lt.manual_seed(1)
    student = nn.SparseMoeBlock(8, 4, 2, 16).double()
    x = lt.tensor(np.random.default_rng(2).standard_normal((64, 8)))
    with lt.no_grad():
        target = teacher(x).data
    router_before = student.gate.weight.data.copy()
    opt = optim.AdamW(student.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        y, logits = student(x, output_router_logits=True)
        task = F.mse_loss(y, lt.tensor(target))
        (task + 0.01 * nn.load_balancing_loss(logits, 4, 2)).backward()
        opt.step()
        losses.append(task.item())
    assert losses[-1] < 0.3 * losses[0], f"task loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    assert np.abs(student.gate.weight.data - router_before).max() > 1e-2  # the router learned too


# --------------------------------------------------------------------------------------------
# Ties
# --------------------------------------------------------------------------------------------
def test_ties_go_to_the_lower_expert_index():
    p = np.array([[0.1, 0.3, 0.3, 0.3], [0.25, 0.25, 0.25, 0.25], [0.4, 0.2, 0.4, 0.0]])
    np.testing.assert_array_equal(top_k_indices(p, 2), [[1, 2], [0, 1], [0, 2]])


def test_tied_router_gives_hf_weights_and_an_equal_output_when_tied_experts_agree():
    """A zero router (HF's initial value) ties all E experts for every token. litetorch takes experts
    0..k-1; torch.topk takes others (unspecified). The weights agree (1/k each); with every expert
    holding the same weights the block's output agrees too: the tie-break is then invisible."""
    hf = hf_next_block(np.float64, seed=7)
    with torch.no_grad():
        hf.gate.weight.zero_()
        hf.experts.gate_up_proj.copy_(hf.experts.gate_up_proj[:1].expand_as(hf.experts.gate_up_proj))
        hf.experts.down_proj.copy_(hf.experts.down_proj[:1].expand_as(hf.experts.down_proj))
    ours = ours_like(hf, np.float64, shared=True, top_k=K, norm_topk_prob=True)
    x = np.random.default_rng(8).standard_normal((2, 5, C))
    with torch.no_grad():
        _, w_t, i_t = hf.gate(torch.from_numpy(x))
        y_t = hf(torch.from_numpy(x)).numpy()
    with lt.no_grad():
        _, w, i = ours.gate(x)
        y = ours(x).data
    np.testing.assert_array_equal(i.data, np.tile(np.arange(K), (10, 1)))
    np.testing.assert_allclose(w.data, w_t.numpy(), atol=1e-15)
    np.testing.assert_allclose(w.data, 1.0 / K, atol=1e-15)
    assert_close(y, y_t, np.float64, "out with tied, identical experts")


# --------------------------------------------------------------------------------------------
# The auxiliary loss
# --------------------------------------------------------------------------------------------
def _logits_and_mask(dtype, seed, B=3, T=6, layers=3):
    r = np.random.default_rng(seed)
    logits = [r.standard_normal((B * T, E)).astype(dtype) * 2 for _ in range(layers)]
    mask = np.ones((B, T), dtype=np.int64)
    mask[0, :2] = 0  # left padding
    mask[2, 4:] = 0  # right padding
    return logits, mask


def _ours_loss(logits, mask, top_k=K):
    ls = [lt.tensor(l, requires_grad=True) for l in logits]
    loss = nn.load_balancing_loss(tuple(ls), E, top_k, attention_mask=mask)
    loss.backward()
    return loss, [l.grad for l in ls]


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_aux_loss_equals_hf_float32(masked):
    logits, mask = _logits_and_mask(np.float32, seed=10)
    mask = mask if masked else None
    lt_ = [torch.tensor(l, requires_grad=True) for l in logits]
    ref = qnext.load_balancing_loss_func(tuple(lt_), E, K, None if mask is None else torch.from_numpy(mask))
    ref.backward()
    loss, grads = _ours_loss(logits, mask)
    assert loss.dtype == np.float32
    assert_close(loss.data, ref.detach().numpy(), np.float32, "loss")
    for i, (g, t) in enumerate(zip(grads, lt_)):
        assert_close(g, t.grad.numpy(), np.float32, f"d logits[{i}]")


def switch_loss_torch(logits, num_experts, top_k, mask=None):
    """Switch Transformer eqs. 4-6 with top-k counts, in torch, in the logits' dtype (float64 here)."""
    counts = torch.zeros(num_experts, dtype=logits[0].dtype)
    prob_sum, rows = torch.zeros(num_experts, dtype=logits[0].dtype), 0.0
    for l in logits:
        w = torch.ones(l.shape[0], dtype=l.dtype) if mask is None else mask.reshape(-1).to(l.dtype)
        p = torch.softmax(l, dim=-1)
        chosen = torch.topk(p, top_k, dim=-1).indices
        counts = counts.scatter_add(0, chosen.reshape(-1), w.repeat_interleave(top_k))
        prob_sum = prob_sum + (p * w[:, None]).sum(0)
        rows = rows + w.sum()
    return num_experts * ((counts / rows) * (prob_sum / rows)).sum()


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_aux_loss_float64_equals_switch_equations_and_hf_to_float32_rounding(masked):
    logits, mask = _logits_and_mask(np.float64, seed=11)
    mask = mask if masked else None
    tmask = None if mask is None else torch.from_numpy(mask)
    loss, grads = _ours_loss(logits, mask)
    assert loss.dtype == np.float64
    # 1. Switch's equations in torch float64 (autograd gives the gradient): 1e-10.
    lt_ = [torch.tensor(l, requires_grad=True) for l in logits]
    exact = switch_loss_torch(lt_, E, K, tmask)
    exact.backward()
    assert_close(loss.data, exact.detach().numpy(), np.float64, "loss vs eqs. 4-6")
    for g, t in zip(grads, lt_):
        assert_close(g, t.grad.numpy(), np.float64, "d logits vs eqs. 4-6")
    # 2. HF's function: it sums in float32 whatever the input, so it agrees to float32 rounding.
    hf_in = [torch.tensor(l, requires_grad=True) for l in logits]
    ref = qnext.load_balancing_loss_func(tuple(hf_in), E, K, tmask)
    ref.backward()
    assert ref.dtype == torch.float32
    assert_close(loss.data, ref.detach().numpy(), np.float32, "loss vs HF")
    for g, t in zip(grads, hf_in):
        assert_close(g, t.grad.numpy(), np.float32, "d logits vs HF")


def test_aux_loss_is_k_when_balanced_and_E_when_collapsed():
    # token t puts p = 1/2 on experts t and t + 1 (mod E): every expert gets 2 of the 16 slots
    pairs = [(e, (e + 1) % E) for e in range(E)]
    balanced = np.full((E, E), -30.0)
    for t, (a, b) in enumerate(pairs):
        balanced[t, [a, b]] = 0.0
    # f_e = 2/8 and P_e = 1/8 for every expert: loss = 8 * 8 * (2/8) * (1/8) = 2 = k
    assert abs(nn.load_balancing_loss(lt.tensor(balanced), E, K).item() - K) < 1e-9
    collapsed = np.full((E, E), -30.0)
    collapsed[:, [3, 5]] = 0.0  # every token: experts 3 and 5, p = 1/2 each
    assert abs(nn.load_balancing_loss(lt.tensor(collapsed), E, K).item() - E) < 1e-9


# --------------------------------------------------------------------------------------------
# Utilisation statistics
# --------------------------------------------------------------------------------------------
def test_tokens_per_expert_and_routing_matrix():
    lt.manual_seed(0)
    block = nn.SparseMoeBlock(C, E, 3, I)
    x = np.random.default_rng(1).standard_normal((50, C)).astype(np.float32)
    with lt.no_grad():
        _, w, i = block.gate(x)
    counts = nn.tokens_per_expert(i, E)
    table = nn.routing_matrix(i, w, E)
    assert counts.shape == (E,) and counts.sum() == 50 * 3
    np.testing.assert_array_equal(counts, (table > 0).sum(axis=0))
    np.testing.assert_array_equal((table > 0).sum(axis=1), 3)
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=1e-6)  # norm_topk_prob
    np.testing.assert_array_equal(table[np.arange(50)[:, None], i.data], w.data)


def test_active_parameters_count_k_of_e_experts():
    block = nn.SparseMoeBlock(C, E, K, I, shared_expert_hidden=I_SHARED)
    per_expert = 3 * C * I
    shared = 3 * C * I_SHARED + C
    assert block.num_parameters() == E * C + E * per_expert + shared
    assert block.active_parameters() == E * C + K * per_expert + shared


# --------------------------------------------------------------------------------------------
# index_add: the combine step
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [0, 1])
def test_index_add_equals_torch_with_repeated_indices(dim):
    r = np.random.default_rng(0)
    x = r.standard_normal((5, 6, 3))
    index = np.array([4, 0, 4, 2])
    src_shape = list(x.shape)
    src_shape[dim] = len(index)
    src = r.standard_normal(src_shape)
    g = r.standard_normal(x.shape)
    xl, sl = lt.tensor(x, requires_grad=True), lt.tensor(src, requires_grad=True)
    out = xl.index_add(dim, index, sl)
    out.backward(g)
    xt, st = torch.tensor(x, requires_grad=True), torch.tensor(src, requires_grad=True)
    ref = xt.index_add(dim, torch.from_numpy(index), st)
    ref.backward(torch.from_numpy(g))
    assert_close(out.data, ref.detach().numpy(), np.float64, "index_add")
    assert_close(xl.grad, xt.grad.numpy(), np.float64, "dx")
    assert_close(sl.grad, st.grad.numpy(), np.float64, "dsource")


def test_index_add_and_the_block_pass_finite_difference_gradchecks():
    r = np.random.default_rng(1)
    x, src = lt.tensor(r.standard_normal((4, 3)), requires_grad=True), lt.tensor(r.standard_normal((5, 3)), requires_grad=True)
    assert gradcheck(lambda a, b: a.index_add(0, np.array([1, 3, 1, 0, 1]), b), x, src)
    lt.manual_seed(2)
    block = nn.SparseMoeBlock(C, E, K, I, shared_expert_hidden=I_SHARED).double()
    h = lt.tensor(r.standard_normal((6, C)), requires_grad=True)
    assert gradcheck(block, h)  # through the router's weights, the experts and the shared expert


def test_index_add_rejects_bad_shapes_and_indices():
    x, src = lt.zeros(4, 3), lt.zeros(2, 3)
    with pytest.raises(ShapeError, match=r"expected \(2, 3\)"):
        x.index_add(0, [0, 1], lt.zeros(2, 4))
    with pytest.raises(ShapeError, match=r"\[0, 4\)"):
        x.index_add(0, [0, 4], src)
    with pytest.raises(ShapeError, match="integers"):
        x.index_add(0, [0.0, 1.0], src)
    with pytest.raises(DTypeError):
        x.index_add(0, [0, 1], src.double())


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k,match", [(9, r"between 1 and n_experts = 8, got top_k = 9"),
                                         (0, "got top_k = 0"), (2.0, "must be an int, got float")])
def test_bad_top_k_is_a_config_error(top_k, match):
    with pytest.raises(ConfigError, match=match):
        nn.SparseMoeBlock(C, E, top_k, I)
    with pytest.raises(ConfigError, match=match):
        nn.load_balancing_loss(lt.zeros(4, E), E, top_k)


def test_bad_shapes_are_shape_errors():
    block = nn.SparseMoeBlock(C, E, K, I)
    with pytest.raises(ShapeError, match=r"C = d_model = 16, got shape \(2, 5, 12\)"):
        block(lt.zeros(2, 5, 12))
    with pytest.raises(ShapeError, match="E = num_experts = 8, got \\(6, 7\\)"):
        nn.load_balancing_loss(lt.zeros(6, 7), E, K)
    with pytest.raises(ShapeError, match="attention_mask has 5 entries"):
        nn.load_balancing_loss(lt.zeros(6, E), E, K, attention_mask=np.ones(5))
    with pytest.raises(ShapeError, match="ints in 0..7"):
        block.experts(lt.zeros(3, C), np.array([[0, 8]] * 3), lt.zeros(3, 2))
    with pytest.raises(ConfigError, match="moe_hidden must be a positive int"):
        nn.SparseMoeBlock(C, E, K, 0)


# --------------------------------------------------------------------------------------------
# Qwen3-Next's gated attention pieces
# --------------------------------------------------------------------------------------------
def test_zero_centered_rms_norm_equals_hf_float32_and_torch_rms_norm_float64():
    r = np.random.default_rng(0)
    D = 8
    w = r.standard_normal(D) * 0.3
    assert np.all(nn.ZeroCenteredRMSNorm(D).weight.data == 0)  # starts as the identity scale, as HF
    for dtype in (np.float32, np.float64):
        x, g = r.standard_normal((2, 5, 4, D)).astype(dtype) * 3, r.standard_normal((2, 5, 4, D)).astype(dtype)
        ours = nn.ZeroCenteredRMSNorm(D, eps=1e-6, dtype=dtype)
        ours.load_state_dict({"weight": w})
        xl = lt.tensor(x, requires_grad=True)
        y = ours(xl)
        y.backward(g)
        xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w.astype(dtype), requires_grad=True)
        if dtype == np.float32:
            hf = qnext.Qwen3NextRMSNorm(D, eps=1e-6)
            with torch.no_grad():
                hf.weight.copy_(wt)
            yt = hf(xt)
            yt.backward(torch.from_numpy(g))
            wgrad = hf.weight.grad
        else:  # HF's module computes float64 in float32 (x.float()); torch's own op in float64 is the reference
            yt = torch.nn.functional.rms_norm(xt, (D,), 1.0 + wt, 1e-6)
            yt.backward(torch.from_numpy(g))
            wgrad = wt.grad
        assert y.dtype == dtype
        assert_close(y.data, yt.detach().numpy(), dtype, "out")
        assert_close(xl.grad, xt.grad.numpy(), dtype, "dx")
        assert_close(ours.weight.grad, wgrad.numpy(), dtype, "dweight")


class LtGatedAttention(nn.Module):
    """Qwen3NextAttention rebuilt from litetorch pieces (HF's parameter names), for the test only."""

    def __init__(self, C, H, Hkv, Dh, eps):
        super().__init__()
        self.H, self.Hkv, self.Dh = H, Hkv, Dh
        self.q_proj = nn.Linear(C, H * Dh * 2, bias=False)
        self.k_proj = nn.Linear(C, Hkv * Dh, bias=False)
        self.v_proj = nn.Linear(C, Hkv * Dh, bias=False)
        self.o_proj = nn.Linear(H * Dh, C, bias=False)
        self.q_norm = nn.ZeroCenteredRMSNorm(Dh, eps)
        self.k_norm = nn.ZeroCenteredRMSNorm(Dh, eps)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        query, gate = nn.split_query_and_gate(self.q_proj(x), self.Dh)  # [B, T, H, Dh], [B, T, H*Dh]
        q = self.q_norm(query).transpose(1, 2)  # [B, H, T, Dh]
        k = self.k_norm(self.k_proj(x).reshape(B, T, self.Hkv, self.Dh)).transpose(1, 2)  # [B, Hkv, T, Dh]
        v = self.v_proj(x).reshape(B, T, self.Hkv, self.Dh).transpose(1, 2)  # [B, Hkv, T, Dh]
        q, k = partial_rope(q, cos, sin), partial_rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # [B, H, T, Dh]
        o = o.transpose(1, 2).reshape(B, T, self.H * self.Dh)  # [B, T, H*Dh]
        return self.o_proj(nn.gate_attention_output(o, gate))


def partial_rope(x, cos, sin):
    """RoPE on the first cos.shape[-1] coordinates of each head (Qwen3-Next rotates 25% of Dh)."""
    rd = cos.shape[-1]
    rot, rest = lt.split(x, [rd, x.shape[-1] - rd], dim=-1)
    return lt.cat([F.apply_rope(rot, cos, sin), rest], dim=-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_gated_attention_pieces_rebuild_hf_qwen3_next_attention(dtype):
    Cm, H, Hkv, Dh, B, T = 32, 4, 2, 16, 2, 7
    cfg = Qwen3NextConfig(hidden_size=Cm, num_attention_heads=H, num_key_value_heads=Hkv, head_dim=Dh,
                          rms_norm_eps=1e-6)
    cfg._attn_implementation = "eager"
    hf = qnext.Qwen3NextAttention(cfg, layer_idx=3).to(TDT[dtype])
    r = np.random.default_rng(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            scale = 0.3 if "norm" in name else p.shape[-1] ** -0.5
            p.copy_(torch.from_numpy(r.standard_normal(p.shape) * scale))
    if dtype == np.float64:  # HF's Qwen3NextRMSNorm computes in float32 (x.float()); lift it to float64
        for norm in (hf.q_norm, hf.k_norm):
            norm.forward = lambda h, m=norm: torch.nn.functional.rms_norm(h, (Dh,), 1.0 + m.weight, m.eps)
    ours = LtGatedAttention(Cm, H, Hkv, Dh, 1e-6).to(dtype)
    ours.load_state_dict(hf.state_dict())

    x, g = r.standard_normal((B, T, Cm)).astype(dtype), r.standard_normal((B, T, Cm)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    cos, sin = qnext.Qwen3NextRotaryEmbedding(cfg)(xt, torch.arange(T)[None])  # [1, T, Dh/4], x's dtype
    assert cos.shape[-1] == Dh // 4
    mask = torch.full((T, T), float("-inf"), dtype=TDT[dtype]).triu(1)[None, None]
    with float64_softmax():
        yt, _ = hf(xt, position_embeddings=(cos, sin), attention_mask=mask)
    yt.backward(torch.from_numpy(g))
    xl = lt.tensor(x, requires_grad=True)
    y = ours(xl, cos[0].detach().numpy(), sin[0].detach().numpy())
    y.backward(g)
    assert y.dtype == dtype
    assert_close(y.data, yt.detach().numpy(), dtype, "out")
    assert_close(xl.grad, xt.grad.numpy(), dtype, "dx")
    params = dict(ours.named_parameters())
    for name, p in hf.named_parameters():
        assert_close(params[name].grad, p.grad.numpy(), dtype, f"d {name}")


def test_split_query_and_gate_layout_is_per_head():
    """Per head, the first Dh outputs of q_proj are the query and the next Dh the gate."""
    H, Dh = 3, 2
    qg = lt.tensor(np.arange(H * 2 * Dh, dtype=np.float64)[None, None])  # [1, 1, 12]
    q, gate = nn.split_query_and_gate(qg, Dh)
    np.testing.assert_array_equal(q.data[0, 0], [[0, 1], [4, 5], [8, 9]])
    np.testing.assert_array_equal(gate.data[0, 0], [2, 3, 6, 7, 10, 11])
    with pytest.raises(ShapeError, match="H \\* 4"):
        nn.split_query_and_gate(lt.zeros(1, 1, 10), Dh)
    with pytest.raises(ConfigError):
        nn.split_query_and_gate(qg, 0)
    with pytest.raises(ShapeError, match="same shape"):
        nn.gate_attention_output(lt.zeros(1, 1, 6), lt.zeros(1, 1, 4))
