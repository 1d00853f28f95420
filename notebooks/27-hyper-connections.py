# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 27 — Hyper-connections: n residual streams, and keeping them on the Birkhoff polytope
#
# A residual layer adds F(x) to one stream. Hyper-connections (HC) keep n streams and learn how each
# layer reads them (H_pre), writes into them (H_post) and mixes them (H_res). mHC constrains H_res to
# the doubly stochastic matrices with Sinkhorn-Knopp; mHC-lite builds it exactly from permutations.
# We check that n = 1 is the plain residual bit for bit, watch Sinkhorn-Knopp converge, compare the
# layer with a torch twin and with DeepSeek-V4's implementation in HF transformers, and measure the
# signal and gradient gain across 64 layers for a plain residual, HC and mHC.
# Lesson: `lessons/27-hyper-connections.md`; code: `litetorch/nn/hyper.py`, `litetorch/nn/doubly_stochastic.py`.

# %%
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
from litetorch import nn  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)
t_start = time.perf_counter()
np.set_printoptions(precision=3, suppress=True)

try:
    import torch
    from transformers import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection
except ImportError:
    torch = None
    print("SKIP: PyTorch/transformers are not installed, so the cells comparing with them print a message "
          "and do nothing. (pip install torch==2.13.0 transformers)")

# %% [markdown]
# ## 1. One stream with identity coefficients is the residual, bit for bit
#
# `HyperConnection(F, d_model, n_streams, kind)` computes x_{l+1} = H_res x_l + H_post^T F(H_pre x_l) on
# streams [B, T, n, C]. With n = 1, HC's initialisation gives H_pre = H_post = H_res = 1, and the
# wrapped decoder block must give exactly x + F(x). (For mHC, H_pre = sigmoid(b_pre) is 1 only at
# b_pre = +inf: we set it there to make the point, and the tests do the same for all four kinds.)

# %%
SEED = 0
print("seed", SEED)
lt.manual_seed(SEED)
C = 16
block = nn.DecoderBlock(C, 2, 1, 32, rope=nn.RotaryEmbedding(C // 2)).double()
x = lt.tensor(np.random.default_rng(SEED).standard_normal((2, 5, C)))
for kind in ("shc", "dhc", "mhc", "mhc_lite"):
    hc = nn.HyperConnection(block, C, n_streams=1, kind=kind, dtype=np.float64)
    if kind.startswith("mhc"):
        m = hc.mappings[0]
        for p in (m.phi_pre, m.phi_post, m.phi_res):
            p.data[...] = 0.0
        m.b_pre.data[...] = np.inf
    with lt.no_grad():
        y = nn.reduce_streams(hc(nn.expand_streams(x, 1)))
        plain = x + block(x)
    diff = np.abs(y.data - plain.data).max()
    print(f"{kind:9s} max |HC(x) - (x + F(x))| = {diff}")
    assert np.array_equal(y.data, plain.data)

# %% [markdown]
# ## 2. Sinkhorn-Knopp: exp, then divide columns and rows by their sums, again and again
#
# mHC eq. 9: M(0) = exp(H~), M(t) = T_r(T_c(M(t-1))), t_max = 20. Rows sum to 1 after every step (T_r
# comes last); columns approach 1 at a rate set by the spread of the logits. Below: the worst column
# error over 500 random 4 x 4 logit matrices with entries uniform in [-s/2, s/2], against the number
# of iterations.

# %%
r = np.random.default_rng(SEED)
L = lt.tensor(r.uniform(-1, 1, (4, 4)))
with lt.no_grad():
    M = F.sinkhorn_knopp(L, 20).data
print("logits:\n", L.data, "\nSinkhorn-Knopp, 20 iterations:\n", M)
print("row sums", M.sum(-1), " column sums", M.sum(-2))

iters = np.arange(1, 41)
spreads = (1, 2, 4, 8)
col_err = {}
for s in spreads:
    logits = lt.tensor(r.uniform(-s / 2, s / 2, (500, 4, 4)))
    with lt.no_grad():
        col_err[s] = [np.abs(F.sinkhorn_knopp(logits, int(k)).data.sum(-2) - 1).max() for k in iters]
    print(f"spread {s}: worst column error after 3 / 20 / 40 iterations: "
          f"{col_err[s][2]:.1e} / {col_err[s][19]:.1e} / {col_err[s][39]:.1e}")
assert col_err[2][19] < 1e-10 < col_err[2][2]

fig, ax = plt.subplots(figsize=(6, 3.6))
for s in spreads:
    ax.semilogy(iters, np.maximum(col_err[s], 1e-17), label=f"logits spread {s}")
ax.axvline(20, color="gray", ls=":", lw=1)
ax.text(20.5, 1e-15, "t_max = 20 (mHC)", fontsize=8, color="gray")
ax.set_xlabel("Sinkhorn-Knopp iterations")
ax.set_ylabel("worst |column sum - 1|")
ax.set_title("Rows are exact after every step; columns converge (n = 4)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "27-sinkhorn.png", dpi=110)
plt.show()

# %% [markdown]
# mHC-lite needs no iterations: H_res = sum_k a_k P_k over the 24 permutation matrices of size 4 is
# doubly stochastic to rounding for any logits, even ones Sinkhorn-Knopp would need hundreds of
# iterations for.

# %%
lite = nn.MHCLiteMapping(C, 4, dtype=np.float64)
lite.b_res.data = r.uniform(-30, 30, 24)
streams = lt.tensor(r.standard_normal((2, 5, 4, C)))
with lt.no_grad():
    _, _, H = lite(streams)
    sk = F.sinkhorn_knopp(lt.tensor(r.uniform(-15, 15, (500, 4, 4))), 20).data
lite_err = max(np.abs(H.data.sum(-1) - 1).max(), np.abs(H.data.sum(-2) - 1).max())
print(f"mHC-lite, logits in [-30, 30]: worst row/column error {lite_err:.1e}")
print(f"Sinkhorn, logits in [-15, 15], 20 iterations: worst column error "
      f"{np.abs(sk.sum(-2) - 1).max():.1e}")
assert lite_err < 1e-14

# %% [markdown]
# ## 3. The mHC layer against PyTorch: a twin written from the equations, and DeepSeek-V4's code
#
# The twin computes mHC eqs. 3, 7-9 directly in torch. DeepSeek-V4 in HF transformers
# (`DeepseekV4HyperConnection`) is the same method with its three projections fused into one matrix
# `fn`, H_res used transposed, and a small eps (1e-6) added to H_pre and to Sinkhorn's sums; with
# `hc_eps = 0` it must agree with ours once the weights are laid out as our `phi`, `b`, `alpha`.

# %%
n = 4


def twin_mhc(P, x, iters=20, eps=1e-6):
    """mHC eqs. 3, 7-9 in torch; the branch is Linear-SiLU-Linear."""
    Bx, Tx = x.shape[:2]
    x1 = torch.nn.functional.rms_norm(x.reshape(Bx, Tx, -1), (x.shape[-1] * n,), eps=eps)
    H_pre = torch.sigmoid(P["mappings.0.alpha_pre"] * (x1 @ P["mappings.0.phi_pre"]) + P["mappings.0.b_pre"])
    H_post = 2 * torch.sigmoid(P["mappings.0.alpha_post"] * (x1 @ P["mappings.0.phi_post"]) + P["mappings.0.b_post"])
    logits = P["mappings.0.alpha_res"] * (x1 @ P["mappings.0.phi_res"]).reshape(Bx, Tx, n, n) + P["mappings.0.b_res"]
    M = torch.exp(logits)
    for _ in range(iters):
        M = M / M.sum(-2, keepdim=True)
        M = M / M.sum(-1, keepdim=True)
    h = torch.einsum("bti,btic->btc", H_pre, x)
    y = torch.nn.functional.linear(torch.nn.functional.silu(torch.nn.functional.linear(
        h, P["branch.0.weight"], P["branch.0.bias"])), P["branch.2.weight"], P["branch.2.bias"])
    return M @ x + H_post[..., None] * y[..., None, :]


if torch is None:
    print("SKIP: torch is not installed")
else:
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        lt.manual_seed(SEED)
        layer = nn.HyperConnection(nn.Sequential(nn.Linear(C, 2 * C, dtype=dtype), nn.SiLU(),
                                                 nn.Linear(2 * C, C, dtype=dtype)), C, n, "mhc", dtype=dtype)
        for name, p in layer.named_parameters():  # move every parameter off its initial value
            p.data = (p.data + r.standard_normal(p.shape) * 0.3).astype(dtype)
        xs = r.standard_normal((2, 5, n, C)).astype(dtype)
        xl = lt.tensor(xs, requires_grad=True)
        yl = layer(xl)
        (yl * yl).sum().backward()
        P = {k: torch.tensor(v.data, requires_grad=True) for k, v in layer.named_parameters()}
        xt = torch.tensor(xs, requires_grad=True)
        yt = twin_mhc(P, xt)
        (yt * yt).sum().backward()
        scale = 1.0 if dtype == np.float64 else np.abs(yt.detach().numpy()).max()
        e_out = np.abs(yl.data - yt.detach().numpy()).max() / scale
        pairs = [(xl.grad, xt.grad.numpy())] + [(p.grad, P[k].grad.numpy()) for k, p in layer.named_parameters()]
        e_grad = max(np.abs(a - b).max() / (1.0 if dtype == np.float64 else np.abs(b).max()) for a, b in pairs)
        kind_err = "max abs error" if dtype == np.float64 else "max error / scale"
        print(f"{np.dtype(dtype).name}: {kind_err}: output {e_out:.1e}, "
              f"gradients (input and all {len(P)} parameters) {e_grad:.1e}")
        assert e_out <= tol and e_grad <= tol

# %% [markdown]
# DeepSeek-V4's module, float32 (its own compute dtype). `fn` holds [pre | post | comb] rows; HF mixes
# with comb^T, so our H_res logits are its comb logits transposed.

# %%
if torch is None:
    print("SKIP: torch/transformers are not installed")
else:
    torch.manual_seed(SEED)
    cfg = DeepseekV4Config(hidden_size=C, hc_mult=n, hc_eps=0.0, hc_sinkhorn_iters=20)
    hf = DeepseekV4HyperConnection(cfg)
    with torch.no_grad():
        hf.fn.normal_(0.0, 0.3), hf.base.normal_(0.0, 0.5), hf.scale.uniform_(0.3, 0.8)
    fn, base, scale = (hf.state_dict()[k].numpy() for k in ("fn", "base", "scale"))
    ours = nn.MHCMapping(C, n, sinkhorn_iters=20, eps=cfg.rms_norm_eps, dtype=np.float32)
    ours.load_state_dict(dict(
        phi_pre=fn[:n].T, phi_post=fn[n:2 * n].T,
        phi_res=fn[2 * n:].reshape(n, n, -1).transpose(1, 0, 2).reshape(n * n, -1).T,
        b_pre=base[:n], b_post=base[n:2 * n], b_res=base[2 * n:].reshape(n, n).T,
        alpha_pre=scale[0], alpha_post=scale[1], alpha_res=scale[2]))
    xs = r.standard_normal((2, 5, n, C)).astype(np.float32)
    with torch.no_grad():
        post, comb, collapsed = hf(torch.from_numpy(xs))
    with lt.no_grad():
        H_pre, H_post, H_res = ours(lt.tensor(xs))
        read = (H_pre.unsqueeze(-2) @ lt.tensor(xs)).squeeze(-2)
    errs = {"H_post": np.abs(H_post.data - post.numpy()).max(),
            "H_res vs comb^T": np.abs(H_res.data - comb.transpose(-1, -2).numpy()).max(),
            "H_pre x vs collapsed": np.abs(read.data - collapsed.numpy()).max() / np.abs(collapsed.numpy()).max()}
    for k, v in errs.items():
        print(f"DeepSeek-V4 (HF) vs litetorch, float32, {k}: {v:.1e}")
    assert max(errs.values()) < 1e-5

# %% [markdown]
# ## 4. Signal propagation across 64 layers: plain residual, HC, mHC
#
# mHC's measure (Figures 3 and 7 there): take the product of the residual mixings H_res over layers,
# and report its largest absolute row sum (how much a forward signal can grow) and largest absolute
# column sum (how much a gradient can grow), averaged over the tokens — the "Amax Gain Magnitude".
#
# At HC's initialisation H_res = I and the gain is exactly 1; the paper measured a trained 27B model,
# whose learned H_res had drifted from I. We stand in for that drift with a random draw per layer,
# H~_res = I + N(0, 0.2^2) (the static part b_res), used raw by HC and projected by Sinkhorn-Knopp
# (20 iterations) by mHC: the same matrices, with and without the constraint. Each layer's branch is a
# pre-norm FFN, RMSNorm -> Linear(C, 4C) -> SiLU -> Linear(4C, C), freshly initialised; 16 tokens.

# %%
L_LAYERS, N_STREAMS, C_SIG, T_SIG, SIGMA = 64, 4, 32, 16, 0.2


def ffn(C):
    return nn.Sequential(nn.RMSNorm(C, eps=1e-6), nn.Linear(C, 4 * C), nn.SiLU(), nn.Linear(4 * C, C))


def build(kind):
    lt.manual_seed(SEED)
    drift = np.random.default_rng(1)
    layers = []
    for ell in range(L_LAYERS):
        if kind == "plain":
            layers.append(ffn(C_SIG))
            continue
        layer = nn.HyperConnection(ffn(C_SIG), C_SIG, N_STREAMS, "dhc" if kind == "HC" else "mhc", layer_index=ell)
        b_res = (np.eye(N_STREAMS) + drift.normal(0.0, SIGMA, (N_STREAMS, N_STREAMS))).astype(np.float32)
        layer.mappings[0].b_res.data = b_res  # the same draw for HC (raw) and mHC (logits, then Sinkhorn)
        layers.append(layer)
    return layers


def run(kind, x0, g):
    """Forward through the 64 layers keeping each layer's input; backward from sum(out * g).
    Returns the RMS of the signal and of its gradient at each depth, and each layer's H_res."""
    layers = build(kind)
    x0 = lt.tensor(x0, requires_grad=True)
    h = x0 if kind == "plain" else nn.expand_streams(x0, N_STREAMS)
    inputs, H = [], []
    for layer in layers:
        h.retain_grad()
        inputs.append(h)
        if kind == "plain":
            h = h + layer(h)
        else:
            with lt.no_grad():
                H.append(layer.mappings[0](h)[2].data)  # [B, T, n, n] this layer's mixing, per token
            h = layer(h)
    h.retain_grad()
    inputs.append(h)
    out = h if kind == "plain" else nn.reduce_streams(h)
    (out * g).sum().backward()
    rms = lambda a: float(np.sqrt(np.mean(np.square(a))))  # noqa: E731
    return [rms(t.data) for t in inputs], [rms(t.grad) for t in inputs], H


x0 = np.random.default_rng(2).standard_normal((1, T_SIG, C_SIG)).astype(np.float32)
g = np.random.default_rng(3).standard_normal((1, T_SIG, C_SIG)).astype(np.float32)
results = {kind: run(kind, x0, g) for kind in ("plain", "HC", "mHC")}


def composite_gains(H):
    """Amax gain of the product H_l ... H_1 (input to depth l), per depth, averaged over tokens."""
    prod = np.broadcast_to(np.eye(N_STREAMS), H[0].shape).astype(np.float64)
    fwd, bwd = [1.0], [1.0]
    for Hl in H:
        prod = Hl.astype(np.float64) @ prod
        f, b = nn.amax_gain(prod)
        fwd.append(f)
        bwd.append(b)
    return np.array(fwd), np.array(bwd)


gains = {kind: composite_gains(results[kind][2]) for kind in ("HC", "mHC")}
gains["plain"] = (np.ones(L_LAYERS + 1), np.ones(L_LAYERS + 1))  # H_res = 1: the identity path
single = {kind: np.array([nn.amax_gain(Hl) for Hl in results[kind][2]]) for kind in ("HC", "mHC")}

for kind in ("plain", "HC", "mHC"):
    fwd, bwd = gains[kind]
    rms_f, rms_b, _ = results[kind]
    print(f"{kind:5s} composite Amax gain after 16 / 32 / 64 layers: forward "
          f"{fwd[16]:8.3f} {fwd[32]:8.3f} {fwd[64]:8.3f}   backward {bwd[16]:8.3f} {bwd[32]:8.3f} {bwd[64]:8.3f}"
          f"   | signal RMS out/in {rms_f[-1] / rms_f[0]:7.2f}, gradient RMS in/out {rms_b[0] / rms_b[-1]:7.2f}")
for kind in ("HC", "mHC"):
    print(f"{kind:5s} single-layer Amax gain: forward {single[kind][:, 0].min():.3f}..{single[kind][:, 0].max():.3f}, "
          f"backward {single[kind][:, 1].min():.3f}..{single[kind][:, 1].max():.3f}")
assert gains["HC"][0][64] > 10 and gains["HC"][1][64] > 10, "free mixing grows across depth"
assert np.abs(gains["mHC"][0] - 1).max() < 1e-6 and np.abs(gains["mHC"][1] - 1).max() < 1e-6, "mHC stays at 1"

# %%
depth = np.arange(L_LAYERS + 1)
colors = {"plain": "gray", "HC": "tab:red", "mHC": "tab:blue"}
styles = {"plain": "--", "HC": "-", "mHC": "-"}
fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
for kind in ("plain", "HC", "mHC"):
    fwd, bwd = gains[kind]
    rms_f, rms_b, _ = results[kind]
    axes[0, 0].semilogy(depth, fwd, styles[kind], color=colors[kind], label=kind)
    axes[0, 1].semilogy(depth, bwd, styles[kind], color=colors[kind], label=kind)
    axes[1, 0].semilogy(depth, np.array(rms_f) / rms_f[0], styles[kind], color=colors[kind], label=kind)
    axes[1, 1].semilogy(depth, np.array(rms_b) / rms_b[-1], styles[kind], color=colors[kind], label=kind)
axes[0, 0].set_title("forward Amax gain of H_res product", fontsize=10)
axes[0, 1].set_title("backward Amax gain of H_res product", fontsize=10)
axes[1, 0].set_title("signal RMS at depth l / at the input", fontsize=10)
axes[1, 1].set_title("gradient RMS at depth l / at the output", fontsize=10)
for ax in axes[1]:
    ax.set_xlabel("depth l (layers)")
for ax in axes.flat:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
fig.suptitle(f"{L_LAYERS} layers, n = {N_STREAMS} streams, H~_res = I + N(0, {SIGMA}^2): "
             "raw (HC) or Sinkhorn-projected (mHC)",
             fontsize=10)
fig.tight_layout()
fig.savefig(OUT / "27-signal-propagation.png", dpi=110)
plt.show()

# %%
print(f"notebook ran in {time.perf_counter() - t_start:.1f} s")
