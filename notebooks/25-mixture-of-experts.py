# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 25 — Mixture of Experts: a router, k of E experts, a shared expert
#
# A sparse MoE layer replaces the one feed-forward network of a block by E of them and a router that
# sends each token to k. We route a few tokens by hand, check the block against HF's Qwen3-Next and
# Qwen3-MoE blocks (forward and backward), count active against total parameters for real models,
# and train a small block twice — with and without the Switch Transformer's auxiliary loss — to see
# what the loss does to expert utilisation.
# Lesson: `lessons/25-mixture-of-experts.md`; code: `litetorch/nn/moe.py`.

# %%
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: use the repo next to this notebook
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
import matplotlib.pyplot as plt  # noqa: E402

import litetorch as lt  # noqa: E402
import litetorch.nn.functional as F  # noqa: E402
from litetorch import nn, optim  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)
t_start = time.perf_counter()

try:
    import torch
    from transformers import Qwen3MoeConfig, Qwen3NextConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextSparseMoeBlock, load_balancing_loss_func
except ImportError:
    torch = None
    print("SKIP: PyTorch/transformers are not installed, so the cells comparing with HF print a message "
          "and do nothing. (pip install torch==2.13.0 transformers)")

# %% [markdown]
# ## 1. Routing six tokens by hand
#
# The router is one matrix W_r [E, C]: logits = x W_r^T, a softmax over the E experts, and the k
# largest probabilities. With `norm_topk_prob` those k weights are divided by their sum — which is
# the same as Mixtral's softmax over the k largest *logits* (the other experts' terms cancel).

# %%
SEED = 0
print("seed", SEED)
lt.manual_seed(SEED)
router = nn.TopKRouter(d_model=8, n_experts=4, top_k=2, norm_topk_prob=True).double()
x = lt.tensor(np.random.default_rng(SEED).standard_normal((6, 8)))
with lt.no_grad():
    logits, w, idx = router(x)
probs = F.softmax(logits, dim=-1).data
np.set_printoptions(precision=3, suppress=True)
print("probabilities p [6 tokens, 4 experts]:\n", probs)
print("chosen experts [6, 2]:\n", idx.data)
print("weights (renormalised, each row sums to 1):\n", w.data)
top_logits = np.take_along_axis(logits.data, idx.data, axis=-1)
mixtral = np.exp(top_logits) / np.exp(top_logits).sum(-1, keepdims=True)  # softmax over the top-k logits
print("max |renormalised top-k - softmax(top-k logits)| =", np.abs(w.data - mixtral).max())
assert np.abs(w.data - mixtral).max() < 1e-15

# %% [markdown]
# ## 2. The block against HF (Qwen3-Next with a shared expert, Qwen3-MoE without)
#
# Weights are copied with `load_state_dict(hf_block.state_dict())`: the names and the 3-D layouts
# (`experts.gate_up_proj [E, 2I, C]`, `experts.down_proj [E, C, I]`) are HF's. In float64 HF's router
# would compute its softmax in float32 (`dtype=torch.float`, meant as an *upcast* for bf16), which
# caps agreement at ~1e-7; `float64_softmax` runs HF's code with that one softmax in float64.

# %%
@contextlib.contextmanager
def float64_softmax():
    original = torch.nn.functional.softmax
    torch.nn.functional.softmax = lambda t, dim=None, _stacklevel=3, dtype=None: original(
        t, dim=dim, dtype=None if t.dtype == torch.float64 else dtype)
    try:
        yield
    finally:
        torch.nn.functional.softmax = original


def randomized(block, tdtype, seed):
    r = np.random.default_rng(seed)
    block = block.to(tdtype)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(torch.from_numpy(r.standard_normal(p.shape) * (1.0 if name == "gate.weight" else p.shape[-1] ** -0.5)))
    return block


if torch is None:
    print("SKIP (no PyTorch/transformers): comparison with HF's MoE blocks")
else:
    C, E, I = 16, 8, 12
    for name, make, shared, k, norm in (
            ("Qwen3-Next", lambda: Qwen3NextSparseMoeBlock(Qwen3NextConfig(
                hidden_size=C, num_experts=E, num_experts_per_tok=2, moe_intermediate_size=I,
                shared_expert_intermediate_size=20)), 20, 2, True),
            ("Qwen3-MoE ", lambda: Qwen3MoeSparseMoeBlock(Qwen3MoeConfig(
                hidden_size=C, num_experts=E, num_experts_per_tok=3, moe_intermediate_size=I)), None, 3, False)):
        for dtype, tdt, tol in ((np.float64, torch.float64, 1e-10), (np.float32, torch.float32, 1e-5)):
            hf = randomized(make(), tdt, seed=1)
            ours = nn.SparseMoeBlock(C, E, k, I, norm_topk_prob=norm, shared_expert_hidden=shared).to(dtype)
            ours.load_state_dict(hf.state_dict())
            r = np.random.default_rng(2)
            xs, g = r.standard_normal((2, 9, C)).astype(dtype), r.standard_normal((2, 9, C)).astype(dtype)
            xt, xl = torch.tensor(xs, requires_grad=True), lt.tensor(xs, requires_grad=True)
            with float64_softmax():
                yt = hf(xt)
            yt.backward(torch.from_numpy(g))
            yl = ours(xl)
            yl.backward(g)

            def rel(a, b):
                b = np.asarray(b)
                return np.abs(np.asarray(a) - b).max() / (1.0 if dtype == np.float64 else max(np.abs(b).max(), 1.0))
            grads = lt.testing.named_grads(ours)  # the shared expert's gate_up_proj split into HF's gate_proj, up_proj
            errs = {"out": rel(yl.data, yt.detach().numpy()), "dx": rel(xl.grad, xt.grad.numpy()),
                    "d router": rel(grads["gate.weight"], hf.gate.weight.grad.numpy()),
                    "d params (worst)": max(rel(grads[n], p.grad.numpy()) for n, p in hf.named_parameters())}
            print(f"{name} {np.dtype(dtype).name}: " + "  ".join(f"{k} {v:.1e}" for k, v in errs.items()))
            assert max(errs.values()) <= tol

# %% [markdown]
# ## 3. Active against total parameters
#
# Each token uses the router, k of the E experts and (Qwen3-Next) the shared expert: the *active*
# parameters. `SparseMoeBlock.active_parameters()` counts them; on a small block we check the count by
# hand, then apply the same arithmetic to real configurations (building a real layer would take
# gigabytes). Only the MoE layers are counted here: attention, norms and embeddings come on top
# (that is how Mixtral's 47B total / 13B active and Qwen3-Next's 80B / 3B are reached).

# %%
small = nn.SparseMoeBlock(16, 8, 2, 12, shared_expert_hidden=20)
assert small.num_parameters() == 8 * 16 + 8 * 3 * 16 * 12 + 3 * 16 * 20 + 16
assert small.active_parameters() == 8 * 16 + 2 * 3 * 16 * 12 + 3 * 16 * 20 + 16
print(f"small block: {small.num_parameters():,} parameters, {small.active_parameters():,} active per token")


def moe_layer_counts(C, E, k, I, shared=0):
    expert = 3 * C * I  # gate, up, down
    extra = E * C + (3 * C * shared + C if shared else 0)  # router, shared expert and its gate
    return E * expert + extra, k * expert + extra


rows = []
for name, C_, E_, k_, I_, shared_, layers in (("Mixtral 8x7B", 4096, 8, 2, 14336, 0, 32),
                                             ("Qwen3-30B-A3B", 2048, 128, 8, 768, 0, 48),
                                             ("Qwen3-Next-80B-A3B", 2048, 512, 10, 512, 512, 48)):
    total, active = moe_layer_counts(C_, E_, k_, I_, shared_)
    rows.append((name, layers * total / 1e9, layers * active / 1e9))
    print(f"{name:20s} E={E_:4d} k={k_:3d}: MoE layers {layers * total / 1e9:6.1f}B parameters, "
          f"{layers * active / 1e9:5.2f}B active per token ({active / total:.1%})")

# %% [markdown]
# ## 4. Why the auxiliary loss: training with and without it
#
# A toy task: 512 tokens drawn around 8 cluster centres in C = 16 dimensions; the target of a
# token is tanh of a cluster-specific linear map. A `SparseMoeBlock(16, E=8, k=2, I=16)` learns it
# with AdamW, twice from the same initial weights: once on the task loss alone, once with
# 0.01 × `load_balancing_loss` added (Switch Transformer's α = 1e-2). We record tokens per expert
# and, per token, which experts it uses.

# %%
DATA_SEED, INIT_SEED, STEPS, ALPHA = 0, 2, 300, 0.01
print(f"seeds: data {DATA_SEED}, initial weights {INIT_SEED}; {STEPS} AdamW steps, lr 1e-2, alpha {ALPHA}")
Cm, Em, Km, Im, N, CL = 16, 8, 2, 16, 512, 8
rng = np.random.default_rng(DATA_SEED)
centres = rng.standard_normal((CL, Cm)) * 2.0
cluster = rng.integers(0, CL, N)
xs = (centres[cluster] + 0.5 * rng.standard_normal((N, Cm))).astype(np.float32)
maps = rng.standard_normal((CL, Cm, Cm)).astype(np.float32) / 4
ys = np.tanh(np.einsum("nc,ndc->nd", xs, maps[cluster])).astype(np.float32)
X, Y = lt.tensor(xs), lt.tensor(ys)


def routing(block):
    with lt.no_grad():
        _, w, i = block.gate(X)
    return nn.tokens_per_expert(i, Em), nn.routing_matrix(i, w, Em)


def train(alpha):
    lt.manual_seed(INIT_SEED)
    block = nn.SparseMoeBlock(Cm, Em, Km, Im)
    before = routing(block)
    opt = optim.AdamW(block.parameters(), lr=1e-2, weight_decay=0.0)
    history = []
    t0 = time.perf_counter()
    for _ in range(STEPS):
        opt.zero_grad()
        out, logits = block(X, output_router_logits=True)
        task, aux = F.mse_loss(out, Y), nn.load_balancing_loss(logits, Em, Km)
        (task + alpha * aux).backward()
        opt.step()
        history.append((task.item(), aux.item()))
    after = routing(block)
    print(f"alpha={alpha}: {time.perf_counter() - t0:.1f}s, task loss {history[0][0]:.4f} -> {history[-1][0]:.4f}, "
          f"aux loss {history[0][1]:.3f} -> {history[-1][1]:.3f}")
    print(f"   tokens per expert before {before[0]}  after {after[0]}")
    return before, after, np.array(history)


before, after_plain, hist_plain = train(0.0)
_, after_aux, hist_aux = train(ALPHA)
cv = lambda counts: counts.std() / counts.mean()  # coefficient of variation: 0 = perfectly even
print(f"spread of the load (std / mean): initial {cv(before[0]):.2f}, task loss only {cv(after_plain[0]):.2f}, "
      f"with the auxiliary loss {cv(after_aux[0]):.2f}")
assert cv(after_aux[0]) < 0.5 * cv(after_plain[0])  # the auxiliary loss evens the load out
assert hist_aux[-1, 0] < 0.05 * hist_aux[0, 0] and hist_plain[-1, 0] < 0.05 * hist_plain[0, 0]  # both learn the task

# %%
order = np.concatenate([np.flatnonzero(cluster == c)[:20] for c in range(CL)])  # 20 tokens of each cluster
fig, axes = plt.subplots(2, 3, figsize=(13, 7), gridspec_kw={"height_ratios": [1, 1.6]}, layout="constrained")
for col, (title, (counts, table)) in enumerate((("initial router", before),
                                                ("trained, task loss only", after_plain),
                                                (f"trained, + {ALPHA} x aux loss", after_aux))):
    axes[0, col].bar(np.arange(Em), counts, color="tab:blue" if col < 2 else "tab:green")
    axes[0, col].axhline(N * Km / Em, color="gray", ls="--", lw=1, label="even share")
    axes[0, col].set_ylim(0, max(before[0].max(), after_plain[0].max(), after_aux[0].max()) * 1.1)
    axes[0, col].set_title(f"{title}\ntokens per expert (std/mean {cv(counts):.2f})", fontsize=10)
    axes[0, col].set_xlabel("expert")
    im = axes[1, col].imshow(table[order].T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[1, col].set_xticks(np.arange(CL) * 20 + 10, [str(c) for c in range(CL)])
    axes[1, col].set_xlabel("tokens, 20 per input cluster")
    axes[1, col].set_ylabel("expert")
    axes[1, col].set_title("routing weight per token", fontsize=10)
axes[0, 0].legend(fontsize=8)
fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.02)
fig.savefig(OUT / "25-expert-utilisation.png", dpi=110)
print("saved", OUT / "25-expert-utilisation.png")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for hist, label in ((hist_plain, "task loss only"), (hist_aux, f"+ {ALPHA} x aux loss")):
    axes[0].semilogy(hist[:, 0], label=label)
    axes[1].plot(hist[:, 1], label=label)
axes[1].axhline(Km, color="gray", ls="--", lw=1, label="k (even slots)")
axes[0].set_title("task loss (MSE)", fontsize=10)
axes[1].set_title("auxiliary loss E · Σ f_e P_e", fontsize=10)
for ax in axes:
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "25-training.png", dpi=110)
print("saved", OUT / "25-training.png")

# %% [markdown]
# ## 5. The auxiliary loss against HF's `load_balancing_loss_func`
#
# HF sums per layer and accumulates in float32; the loss takes a tuple of layers' router logits and
# an optional attention mask that leaves padding out of both averages.

# %%
if torch is None:
    print("SKIP (no PyTorch/transformers): comparison with load_balancing_loss_func")
else:
    r = np.random.default_rng(3)
    layer_logits = [r.standard_normal((12, 8)).astype(np.float32) * 2 for _ in range(3)]
    mask = np.ones((2, 6), dtype=np.int64)
    mask[0, :2] = 0
    for m in (None, mask):
        tl = [torch.tensor(a, requires_grad=True) for a in layer_logits]
        ref = load_balancing_loss_func(tuple(tl), 8, 2, None if m is None else torch.from_numpy(m))
        ref.backward()
        ll = [lt.tensor(a, requires_grad=True) for a in layer_logits]
        ours = nn.load_balancing_loss(tuple(ll), 8, 2, attention_mask=m)
        ours.backward()
        e_val = abs(ours.item() - ref.item()) / abs(ref.item())
        e_grad = max(np.abs(a.grad - b.grad.numpy()).max() / np.abs(b.grad.numpy()).max() for a, b in zip(ll, tl))
        print(f"mask={'yes' if m is not None else 'no '}: loss {ours.item():.6f} (HF {ref.item():.6f}), "
              f"relative error {e_val:.1e}, gradient {e_grad:.1e}")
        assert e_val <= 1e-5 and e_grad <= 1e-5

print(f"wall time {time.perf_counter() - t_start:.1f}s")
