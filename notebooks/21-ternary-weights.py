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

# %% [markdown]
# ## Deployment: 2 bits per weight, and the same logits
# After training only W_q = T / s is needed: a ternary matrix T and one scale per stacked matrix. `pack_ternary`
# stores four weights per byte (code T + 1 in two bits); `PackedBitLinear` unpacks and runs BitLinear's lines,
# so the logits are the float path's to the bit. The GGUF file stores T as llama.cpp's TQ2_0 (byte for byte what
# the gguf package writes) when the row length is a multiple of 256, plus the float32 scales.

# %%
import tempfile  # noqa: E402

from litetorch.io.gguf import GGUFFile  # noqa: E402
from litetorch.models.looplm import LoopConfig, LoopLM  # noqa: E402
from litetorch.models.looplm_files import load_gguf, save_gguf  # noqa: E402
from litetorch.nn.bitlinear import PackedBitLinear, pack_ternary, unpack_ternary  # noqa: E402

T = np.array([[-1, 0, 1, 1, 0, -1, 0, 0]], dtype=np.int8)
print("T =", T[0].tolist(), "-> bytes", [f"{b:08b}" for b in pack_ternary(T)[0]], "(first weight in the low bits)")
assert np.array_equal(unpack_ternary(pack_ternary(T), 8), T)

lt.manual_seed(0)
cfg = LoopConfig(vocab_size=64, d_model=256, n_heads=4, hidden=768, max_len=64, n_before=1, n_after=1, loop_count=4,
                 bitlinear=True)  # the shared block of d20_loop's shape, ternary
tm = LoopLM(cfg)
ids = np.random.default_rng(0).integers(0, 64, (1, 16))
with lt.no_grad():
    float_logits = tm(ids).data
float_bytes = sum(m.weight.data.nbytes for m in tm.modules() if isinstance(m, BitLinear))
with tempfile.TemporaryDirectory() as tmp:
    f32_file = save_gguf(tm, Path(tmp) / "float.gguf", ternary="float").stat().st_size
    path = save_gguf(tm, Path(tmp) / "packed.gguf")
    packed_file = path.stat().st_size
    with GGUFFile(path) as f:
        tq = {n: t for n, t in f.tensors.items() if t.type_name == "TQ2_0"}
        file_ternary = sum(t.n_bytes for t in tq.values()) + sum(f.tensors[n + "_scale"].n_bytes for n in tq)
    back = load_gguf(path)
tm.pack_ternary()
packed_bytes = sum(m.nbytes for m in tm.modules() if isinstance(m, PackedBitLinear))
with lt.no_grad():
    assert np.array_equal(tm(ids).data, float_logits) and np.array_equal(back(ids).data, float_logits)
print("logits of the packed model, in memory and loaded from the GGUF: equal to the float path's (np.array_equal)")
print(f"{'the shared block ternary layers':<40} {'bytes':>12} {'vs float32':>10}")
for what, b in (("float32 (BitLinear's latent W)", float_bytes), ("packed in memory (2 bits + scales)", packed_bytes),
                ("in the GGUF file (TQ2_0 + scales)", file_ternary)):
    print(f"{what:<40} {b:>12,} {float_bytes / b:>9.1f}x")
print(f"whole file: {f32_file:,} B with float ternary layers, {packed_file:,} B packed "
      f"(embedding, norms and local layers stay float32)")

fig, ax = plt.subplots(figsize=(6, 2.6))
labels = ["float32", "packed (memory)", "GGUF (TQ2_0)"]
ax.barh(labels, [float_bytes / 1024, packed_bytes / 1024, file_ternary / 1024], color=["gray", "tab:blue", "tab:green"])
for i, b in enumerate([float_bytes, packed_bytes, file_ternary]):
    ax.text(b / 1024, i, f" {b / 1024:,.0f} KiB ({float_bytes / b:.1f}x)", va="center", fontsize=8)
ax.set_xlabel("KiB: the shared block's 4 ternary matrices (C 256, SwiGLU 768)")
ax.set_xlim(0, float_bytes / 1024 * 1.35)
fig.tight_layout()
fig.savefig(OUT / "21-packed-memory.png", dpi=120)
print(f"wall time {time.perf_counter() - t_start:.1f}s")
