# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 06 — The feed-forward network: MLP and SwiGLU
#
# After attention has mixed information between tokens, each token goes through the same small
# network on its own. The 2017 transformer and GPT-2 use `fc2(act(fc1(x)))`; Llama uses SwiGLU,
# `down(silu(gate(x)) * up(x))`: one projection decides, unit by unit, how much of another passes.
# We plot the activations, check both networks against PyTorch/HF, and count parameters.
# Lesson: `lessons/06-swiglu.md`.

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
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP
except ImportError:
    torch = None
    print("SKIP: PyTorch/transformers are not installed, so the cells comparing with PyTorch print a "
          "message and do nothing. (pip install torch==2.13.0 transformers)")

# %% [markdown]
# ## 1. The nonlinearities
#
# ReLU cuts negatives to 0. GELU (x·Φ(x)) and SiLU (x·σ(x)) are smooth versions that let a little
# negative signal through. In SwiGLU, silu(gate) is not applied to the signal itself but used as a
# *multiplier* for `up(x)`: the product silu(a)·b below.

# %%
z = lt.tensor(np.linspace(-4, 4, 401))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for name, y in (("ReLU", F.relu(z)), ("GELU", F.gelu(z)), ("GELU (tanh)", F.gelu(z, approximate="tanh")),
                ("SiLU", F.silu(z))):
    axes[0].plot(z.data, y.data, label=name)
axes[0].axhline(0, color="gray", lw=0.5)
axes[0].legend(fontsize=8)
axes[0].set_title("activations", fontsize=10)
a, b = np.meshgrid(np.linspace(-4, 4, 161), np.linspace(-4, 4, 161))
prod = (F.silu(lt.tensor(a)) * lt.tensor(b)).data
im = axes[1].imshow(prod, extent=(-4, 4, -4, 4), origin="lower", cmap="RdBu_r", vmin=-12, vmax=12)
axes[1].set_xlabel("a = gate(x)")
axes[1].set_ylabel("b = up(x)")
axes[1].set_title("silu(a) · b: the gate opens for a > 0", fontsize=10)
fig.colorbar(im, ax=axes[1], fraction=0.046)
fig.tight_layout()
fig.savefig(OUT / "06-activations.png", dpi=110)
print("saved", OUT / "06-activations.png")
print("min of silu:", F.silu(z).data.min().round(4), "(at x ≈ -1.28)")

# %% [markdown]
# ## 2. SwiGLU vs HF LlamaMLP, MLP vs torch

# %%
rng = np.random.default_rng(0)
if torch is None:
    print("SKIP (no PyTorch/transformers): comparison with HF LlamaMLP and torch Linear-GELU-Linear")
else:
    for dtype, tdt, tol in ((np.float64, torch.float64, 1e-10), (np.float32, torch.float32, 1e-5)):
        torch.manual_seed(0)
        hf = LlamaMLP(LlamaConfig(hidden_size=64, intermediate_size=172, num_attention_heads=4)).to(tdt)
        ours = nn.SwiGLU(64, 172).to(dtype)
        ours.load_state_dict({k: v.detach().numpy() for k, v in hf.state_dict().items()})
        x = rng.standard_normal((2, 9, 64)).astype(dtype)
        xl, xt = lt.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        yl, yt = ours(xl), hf(xt)
        yl.sum().backward()
        yt.sum().backward()
        e_out = np.abs(yl.data - yt.detach().numpy()).max() / max(np.abs(yt.detach().numpy()).max(), 1.0)
        e_dx = np.abs(xl.grad - xt.grad.numpy()).max() / max(np.abs(xt.grad.numpy()).max(), 1.0)
        print(f"SwiGLU {np.dtype(dtype).name}: out {e_out:.1e}  dx {e_dx:.1e}")
        assert max(e_out, e_dx) <= tol

        mlp = nn.MLP(64, 256, activation="gelu").to(dtype)
        ref = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).to(tdt)
        ref.load_state_dict({k.replace("fc1", "0").replace("fc2", "2"): torch.tensor(v)
                             for k, v in mlp.state_dict().items()})
        e = np.abs(mlp(lt.tensor(x)).data - ref(torch.tensor(x)).detach().numpy()).max()
        print(f"MLP    {np.dtype(dtype).name}: out {e:.1e}")
        assert e <= tol

# %% [markdown]
# ## 3. Same budget, three matrices
#
# A GELU MLP with hidden 4C has 2 · C · 4C = 8C² weights. SwiGLU has three matrices, so with hidden
# (8/3)·C it has 3 · C · (8/3)C = 8C² as well. Real models round the width: SmolLM2 uses 1536 for
# C = 576 (2.67 C), TinyLlama 5632 for C = 2048 (2.75 C).

# %%
for C, hidden, name in ((576, 1536, "SmolLM2"), (2048, 5632, "TinyLlama")):
    swi, gelu = nn.SwiGLU(C, hidden, bias=False), nn.MLP(C, 4 * C, bias=False)
    print(f"{name:9s} C={C}: SwiGLU(hidden={hidden}) {swi.num_parameters():>11,}   "
          f"GELU MLP(hidden={4 * C}) {gelu.num_parameters():>11,}   ratio {swi.num_parameters() / gelu.num_parameters():.2f}")
