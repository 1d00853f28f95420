# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 21 — Ternary weights: BitLinear b1.58 by hand
#
# BitNet b1.58 (arXiv 2402.17764) keeps a full-precision weight W for the optimizer but runs the forward
# pass with W_q = clamp(round(W / mean|W|), -1, 1) * mean|W| (three values per matrix, times one scale)
# and 8-bit per-token activations. Gradients pass "straight through" the rounding.
# Lesson: `lessons/21-ternary-weights.md`; code: `litetorch/nn/bitlinear.py`.

# %%
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

try:
    import litetorch  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
import litetorch as lt  # noqa: E402
from litetorch.nn.bitlinear import BitLinear, activation_quant, weight_quant  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)
t_start = time.perf_counter()

# %% [markdown]
# ## Quantize a weight matrix by hand (absmean, round half to even)

# %%
W = np.array([[0.30, -0.05, 0.12, -0.41],
              [0.02, 0.25, -0.18, 0.07]])
gamma = np.abs(W).mean()  # the one scale of the tensor
T = np.clip(np.round(W / gamma), -1, 1)  # ternary codes
print("mean|W| =", gamma)
print("codes:\n", T)
print("W_q = codes * gamma:\n", T * gamma)
assert np.allclose(weight_quant(W), T * gamma)
print("round is half-to-even: round([0.5, 1.5, 2.5, -0.5]) =", np.round([0.5, 1.5, 2.5, -0.5]))

# %% [markdown]
# ## 8-bit activations, per token (absmax)

# %%
x = np.array([[0.9, -0.31, 0.004, 1.7], [10.0, -3.0, 0.5, 0.0]])
xq = activation_quant(x)
print("per-token scale 127/max|x|:", 127 / np.abs(x).max(-1))
print("x_q:\n", xq, "\nmax error per token:", np.abs(xq - x).max(-1), "<= max|x|/254:", np.abs(x).max(-1) / 254)
assert np.all(np.abs(xq - x).max(-1) <= np.abs(x).max(-1) / 254 + 1e-12)

# %% [markdown]
# ## The straight-through estimator, against PyTorch
# `x + stopgrad(q(x) - x)`: forward value q(x), gradient 1. In torch: `x + (q(x) - x).detach()`.

# %%
lt.manual_seed(0)
bl = BitLinear(16, 8).double()
xin = np.random.default_rng(0).standard_normal((4, 16))
x_lt = lt.tensor(xin, requires_grad=True)
y = bl(x_lt)
y.sum().backward()
try:
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference") if "__file__" in globals()
                    else "../tests/reference")
    import torch_looplm as ref
    tb = ref.BitLinear(16, 8, bias=False).double()
    tb.load_state_dict({k: torch.from_numpy(v) for k, v in bl.state_dict().items()})
    tx = torch.from_numpy(xin.copy()).requires_grad_(True)
    ty = tb(tx)
    ty.sum().backward()
    e_y = np.abs(y.data - ty.detach().numpy()).max()
    e_g = np.abs(bl.weight.grad - tb.weight.grad.numpy()).max()
    print(f"max |y - y_torch| = {e_y:.2e}, max |dW - dW_torch| = {e_g:.2e}")
    assert e_y <= 1e-12 and e_g <= 1e-12
except ImportError:
    print("torch not installed: comparison skipped")

# %% [markdown]
# ## What the forward pass sees
# A trained-looking weight distribution (Gaussian), its ternary version, and the fraction of zeros.

# %%
w = np.random.default_rng(1).standard_normal(20000) * 0.02
wq = weight_quant(w[None])[0]
codes, counts = np.unique(np.round(wq / np.abs(w).mean()), return_counts=True)
print("codes and fractions:", dict(zip(codes.astype(int).tolist(), np.round(counts / counts.sum(), 3).tolist())))
fig, ax = plt.subplots(1, 2, figsize=(8, 3))
ax[0].hist(w, bins=100, color="gray")
for c in (-0.5, 0.5):
    ax[0].axvline(c * np.abs(w).mean(), color="red", ls=":")
ax[0].set_title("W (red: rounding thresholds ±mean|W|/2)")
ax[1].bar(codes, counts / counts.sum())
ax[1].set_xticks([-1, 0, 1])
ax[1].set_title("W_q codes")
fig.tight_layout()
fig.savefig(OUT / "21-ternary.png", dpi=120)
print(f"wall time {time.perf_counter() - t_start:.1f}s")
