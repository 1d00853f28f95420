# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 — Modules and optimizers, side by side with PyTorch
#
# Companion of [lessons/02-modules-and-optimizers.md](../lessons/02-modules-and-optimizers.md).
# We build the same small MLP in litetorch and in PyTorch, copy the weights from one to the other
# through `load_state_dict`, and check that outputs, gradients and 200 steps of AdamW (with gradient
# clipping and a warmup + cosine learning-rate schedule) give the same numbers. Then we plot the
# two loss curves, the schedule, and the decision boundary the network learned.
#
# Without PyTorch installed the comparison cells are skipped (with a message) and the rest runs.

# %%
import contextlib
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import litetorch as lt  # noqa: E402
import litetorch.nn.functional as F  # noqa: E402
from litetorch import nn, optim  # noqa: E402

try:
    import torch

    torch.set_num_threads(1)
    HAVE_TORCH = True
except ImportError:
    torch = None
    HAVE_TORCH = False
    print("PyTorch is not installed: the cells that compare with PyTorch are skipped.")

try:  # many tiny matmuls: one BLAS thread is fastest (see docs/ARCHITECTURE.md §7, "Threads and timing")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
except ImportError:
    pass

OUT = Path("notebooks/_out") if Path("notebooks").is_dir() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)
t_start = time.time()

# %% [markdown]
# ## The data: two interleaved spirals
# Class 1 is class 0 rotated by 180°; no straight line separates them, so the network must
# bend its decision boundary around the arms.


# %%
def two_spirals(n_per_class, rng, noise=0.2, turns=1.25):
    t = np.sqrt(rng.random(n_per_class)) * turns * 2 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)  # [n, 2]
    X = np.concatenate([arm, -arm]) + rng.standard_normal((2 * n_per_class, 2)) * noise
    return (X / (turns * 2 * np.pi) * 3.0), np.repeat([0, 1], n_per_class)  # [2n, 2], [2n]


X_np, y_np = two_spirals(200, np.random.default_rng(0))
print("X", X_np.shape, "y", y_np.shape, "classes", np.bincount(y_np))

# %% [markdown]
# ## The same MLP twice
# `nn.Sequential(Linear, Tanh, Linear)` registers its children as `"0"`, `"1"`, `"2"`, so the
# parameter names are `0.weight`, `0.bias`, `2.weight`, `2.bias` — exactly torch's. That is what
# lets one `state_dict` travel between the two libraries.
#
# We work in float64 for the strict comparison (errors ~1e-15 instead of float32's ~1e-7 drift).

# %%
DTYPE = np.float64
lt.manual_seed(0)
model = nn.Sequential(nn.Linear(2, 64, dtype=DTYPE), nn.Tanh(), nn.Linear(64, 2, dtype=DTYPE))
print(model)
print({k: v.shape for k, v in model.state_dict().items()})

# %%
if HAVE_TORCH:
    torch.manual_seed(0)
    tmodel = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)).double()
    assert list(tmodel.state_dict()) == list(model.state_dict()), "parameter names differ"
    model.load_state_dict({k: v.detach().numpy() for k, v in tmodel.state_dict().items()})
    print("copied torch's initial weights into the litetorch model")
else:
    print("[skipped] no PyTorch: the litetorch model keeps its own initialization")

# %% [markdown]
# ## One forward and backward: outputs and every gradient

# %%
x = lt.tensor(X_np.astype(DTYPE))
loss = F.cross_entropy(model(x), y_np)
model.zero_grad()
loss.backward()
if HAVE_TORCH:
    tx, ty = torch.from_numpy(X_np), torch.from_numpy(y_np)
    tlogits = tmodel(tx)
    tloss = torch.nn.functional.cross_entropy(tlogits, ty)
    tloss.backward()
    err_out = np.abs(model(x).data - tlogits.detach().numpy()).max()
    err_loss = abs(loss.item() - tloss.item())
    err_grad = max(np.abs(p.grad - tp.grad.numpy()).max()
                   for p, tp in zip(model.parameters(), tmodel.parameters()))
    print(f"max |logits - torch| = {err_out:.2e}   |loss - torch| = {err_loss:.2e}   "
          f"max |grad - torch| = {err_grad:.2e}")
    assert err_out <= 1e-10 and err_loss <= 1e-10 and err_grad <= 1e-10
else:
    print("[skipped] no PyTorch: loss", loss.item())

# %% [markdown]
# ## Train both: AdamW + gradient clipping + warmup/cosine, 200 steps
# The same loop in both libraries. The torch schedule is `LambdaLR` with litetorch's own
# `warmup_cosine_lambda`, so both optimizers see identical learning rates.

# %%
STEPS, WARMUP, CLIP = 200, 10, 1.0
lam = lambda s: optim.lr_scheduler.warmup_cosine_lambda(s, WARMUP, STEPS, min_lr_ratio=0.1)  # noqa: E731

opt = optim.AdamW(model.parameters(), lr=0.05, weight_decay=1e-4)
sched = optim.LambdaLR(opt, lam)
losses, lrs = [], []
for step in range(STEPS):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y_np)
    loss.backward()
    optim.clip_grad_norm_(model.parameters(), CLIP)
    lrs.append(opt.param_groups[0]["lr"])  # the lr this step uses
    opt.step()
    sched.step()
    losses.append(loss.item())

if HAVE_TORCH:
    topt = torch.optim.AdamW(tmodel.parameters(), lr=0.05, weight_decay=1e-4)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lam)
    tlosses = []
    for step in range(STEPS):
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tmodel(tx), ty)
        tloss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), CLIP)
        topt.step()
        tsched.step()
        tlosses.append(tloss.item())
    err_params = max(np.abs(v - tmodel.state_dict()[k].numpy()).max() for k, v in model.state_dict().items())
    err_losses = np.abs(np.array(losses) - np.array(tlosses)).max()
    print(f"after {STEPS} steps: max |param - torch| = {err_params:.2e}, max |loss - torch| = {err_losses:.2e}")
    assert err_params <= 1e-10 and err_losses <= 1e-10
else:
    tlosses = None
    print("[skipped] no PyTorch: trained litetorch only")
print(f"loss {losses[0]:.3f} -> {losses[-1]:.4f}")

# %% [markdown]
# ## The loss curves (one line hides the other: they agree to ~1e-15)

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(losses, label="litetorch", lw=3, alpha=0.6)
if tlosses is not None:
    ax.plot(tlosses, "--", label="PyTorch", lw=1.5, color="k")
ax.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="AdamW on two spirals")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "02-loss-curves.png", dpi=110)

# %% [markdown]
# ## The learning rate: linear warmup, then half a cosine down to 10%

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(lrs)
ax.axvline(WARMUP, color="gray", ls=":", lw=1)
ax.set(xlabel="step", ylabel="lr", title=f"warmup {WARMUP} steps + cosine to 0.1 x lr over {STEPS} steps")
fig.tight_layout()
fig.savefig(OUT / "02-lr-schedule.png", dpi=110)

# %% [markdown]
# ## What the network learned

# %%
g = np.linspace(-3.5, 3.5, 200)
gx, gy = np.meshgrid(g, g)
grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(DTYPE)  # [200*200, 2]
with lt.no_grad():
    prob = F.softmax(model(lt.tensor(grid)), dim=-1).data[:, 1].reshape(gx.shape)
    acc = float((model(x).data.argmax(-1) == y_np).mean())
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.contourf(gx, gy, prob, levels=20, cmap="RdBu_r", alpha=0.6)
ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1)
ax.scatter(X_np[:, 0], X_np[:, 1], c=y_np, cmap="RdBu_r", s=8, edgecolors="k", linewidths=0.3)
ax.set(title=f"decision boundary (train accuracy {acc:.1%})", aspect="equal")
fig.tight_layout()
fig.savefig(OUT / "02-decision-boundary.png", dpi=110)
print(f"train accuracy {acc:.3f}")
assert acc >= 0.95

# %% [markdown]
# ## Try it
# - Switch `DTYPE` to `np.float32`: the parity errors grow to ~1e-6 (torch fuses multiply-adds and
#   its BLAS sums in another order), but the curves still overlap.
# - Replace `AdamW` by `SGD(lr=0.5, momentum=0.9)` in both loops; then drop the momentum.
# - Set `CLIP = 1e-3`: every step now has the same length; what happens to the loss curve?

# %%
print(f"figures in {OUT}/; notebook ran in {time.time() - t_start:.1f} s")
