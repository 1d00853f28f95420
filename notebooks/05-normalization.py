# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 05 — Normalization: LayerNorm and RMSNorm
#
# A deep stack keeps adding to the same residual vector; its scale drifts from layer to layer.
# Normalization rescales each token's vector before a sublayer reads it. LayerNorm centres and
# scales (`(x − mean) / std`); RMSNorm, used by Llama, only scales (`x / rms`) — one statistic
# fewer, and it works as well. We compare both with PyTorch, show that LayerNorm is RMSNorm of
# the centred vector, and plot what each is invariant to.
# Lesson: `lessons/05-normalization.md`.

# %%
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: use the repo next to this notebook
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
import litetorch as lt  # noqa: E402
import litetorch.nn.functional as F  # noqa: E402
from litetorch import nn  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)

try:
    import torch
except ImportError:
    torch = None
    print("SKIP: PyTorch is not installed, so the cells comparing with PyTorch print a message and do "
          "nothing. (pip install torch==2.13.0)")

# %% [markdown]
# ## 1. The two formulas, by hand and by litetorch
#
# RMSNorm: y = x / √(mean(x²) + ε) · w.   LayerNorm: y = (x − μ) / √(var(x) + ε) · w + b.

# %%
rng = np.random.default_rng(0)
C, eps = 64, 1e-5
x = rng.standard_normal((3, 5, C)) * 3 + 1.5  # off-centre, scale 3

rms_by_hand = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
ln_by_hand = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
rms = nn.RMSNorm(C, eps=eps, dtype=np.float64)
ln = nn.LayerNorm(C, eps=eps, dtype=np.float64)
print("RMSNorm   vs formula:", np.abs(rms(lt.tensor(x)).data - rms_by_hand).max())
print("LayerNorm vs formula:", np.abs(ln(lt.tensor(x)).data - ln_by_hand).max())
assert np.abs(rms(lt.tensor(x)).data - rms_by_hand).max() < 1e-12
assert np.abs(ln(lt.tensor(x)).data - ln_by_hand).max() < 1e-12

# %% [markdown]
# LayerNorm is RMSNorm applied to the centred vector (the mean of x − μ is 0, so its RMS is the
# standard deviation):

# %%
centred = x - x.mean(-1, keepdims=True)
diff = np.abs(ln(lt.tensor(x)).data - rms(lt.tensor(centred)).data).max()
print(f"LayerNorm(x) vs RMSNorm(x - mean): {diff:.1e}")
assert diff < 1e-12

# %% [markdown]
# ## 2. Against PyTorch (forward and backward, float64 and float32)

# %%
if torch is None:
    print("SKIP (no PyTorch): comparison with torch.nn.RMSNorm / torch.nn.LayerNorm")
else:
    for dtype, tdt, tol in ((np.float64, torch.float64, 1e-10), (np.float32, torch.float32, 1e-5)):
        xs, g = x.astype(dtype), rng.standard_normal(x.shape).astype(dtype)
        w = (1 + 0.1 * rng.standard_normal(C)).astype(dtype)
        for name, ours, ref in (("RMSNorm", nn.RMSNorm(C, eps=eps, dtype=dtype), torch.nn.RMSNorm(C, eps=eps, dtype=tdt)),
                                ("LayerNorm", nn.LayerNorm(C, eps=eps, dtype=dtype), torch.nn.LayerNorm(C, eps=eps, dtype=tdt))):
            ours.weight.data = w.copy()
            ref.weight.data = torch.tensor(w)
            xl, xt = lt.tensor(xs, requires_grad=True), torch.tensor(xs, requires_grad=True)
            yl, yt = ours(xl), ref(xt)
            yl.backward(g)
            yt.backward(torch.tensor(g))
            errs = [np.abs(a - b).max() / max(np.abs(b).max(), 1.0) for a, b in
                    ((yl.data, yt.detach().numpy()), (xl.grad, xt.grad.numpy()),
                     (ours.weight.grad, ref.weight.grad.numpy()))]
            print(f"{name:9s} {np.dtype(dtype).name}: out {errs[0]:.1e}  dx {errs[1]:.1e}  dweight {errs[2]:.1e}")
            assert max(errs) <= tol

# %% [markdown]
# ## 3. What each one ignores
#
# Both outputs are unchanged when x is multiplied by a positive number (that is the point: the
# sublayer sees the same input whatever the residual stream's scale). Only LayerNorm also ignores
# adding a constant to every coordinate.

# %%
shifts = np.linspace(0, 5, 21)
scales = np.logspace(-2, 3, 21)
base = rng.standard_normal((1, C))
rms1, ln1 = nn.RMSNorm(C, eps=eps, dtype=np.float64), nn.LayerNorm(C, eps=eps, dtype=np.float64)


def change(norm, x2):
    return np.abs(norm(lt.tensor(x2)).data - norm(lt.tensor(base)).data).max()


fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
x_off = base * 3 + 1.5  # a token vector with scale 3 and mean 1.5
axes[0].plot(x_off[0, :24], "k.-", label="x (scale 3, mean 1.5)")
axes[0].plot(rms1(lt.tensor(x_off)).data[0, :24], "o-", ms=3, label="RMSNorm(x): rms 1, mean kept")
axes[0].plot(ln1(lt.tensor(x_off)).data[0, :24], "s-", ms=3, label="LayerNorm(x): std 1, mean 0")
axes[0].axhline(0, color="gray", lw=0.5)
axes[0].set_title("first 24 coordinates of one token", fontsize=10)
axes[0].legend(fontsize=7)
axes[1].semilogx(scales, [change(rms1, base * s) for s in scales], "o-", label="RMSNorm")
axes[1].semilogx(scales, [change(ln1, base * s) for s in scales], "s--", label="LayerNorm")
axes[1].set_title("change of output when x → s·x", fontsize=10)
axes[1].set_xlabel("s")
axes[1].legend(fontsize=7)
axes[2].plot(shifts, [change(rms1, base + s) for s in shifts], "o-", label="RMSNorm")
axes[2].plot(shifts, [change(ln1, base + s) for s in shifts], "s--", label="LayerNorm")
axes[2].set_title("change of output when x → x + β", fontsize=10)
axes[2].set_xlabel("β")
axes[2].legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "05-norms.png", dpi=110)
print("saved", OUT / "05-norms.png")
assert change(ln1, base + 3.0) < 1e-9 and change(rms1, base + 3.0) > 0.1
# exact up to eps: it matters only once mean(x²) is comparable to eps = 1e-5 (the left end of the curve)
assert max(change(rms1, base * s) for s in scales if s >= 1) < 1e-4

# %% [markdown]
# ## 4. Extreme inputs stay finite in float32
#
# mean(x²) of entries near 1e4 is 1e8 — fine in float32 (max ~3e38); entries near 1e20 would
# overflow x², which is why HF computes RMSNorm in float32 even for float16 activations.

# %%
for s in (1e-4, 1.0, 1e4):
    y = nn.RMSNorm(C, eps=eps)(lt.tensor((base * s).astype(np.float32))).data
    print(f"scale {s:g}: output RMS {np.sqrt((y ** 2).mean()):.4f}, dtype {y.dtype}")
    assert np.all(np.isfinite(y)) and y.dtype == np.float32
