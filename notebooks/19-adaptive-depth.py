# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 19 — Adaptive depth: how many loops does each token get?
#
# Three exit rules, all deterministic and per token, clamped to [min_loops, max_loops]
# (lesson: `lessons/19-adaptive-depth.md`; code: `litetorch/nn/looped.py`, `litetorch/models/looplm.py`):
#
# - Ouro's exit gate: lambda_t = sigmoid(w . h_t + b), p(t) = lambda_t prod_{j<t}(1 - lambda_j), the rest on the
#   last step; exit at the first t with CDF >= q.
# - Huginn's KL: exit when KL(p_t || p_{t-1}) between successive next-token distributions is small.
# - entropy: exit when the next-token distribution is confident.

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
from litetorch.models.looplm import LoopConfig, LoopLM, looplm_loss  # noqa: E402
from litetorch.nn.looped import exit_distribution, q_exit_step  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)
t_start = time.perf_counter()

# %% [markdown]
# ## The exit distribution by hand
# lambda = [0.5, 0.5, 0.5] with T_max = 4 gives p = [0.5, 0.25, 0.125, 0.125]; with q = 0.8 the CDF
# [0.5, 0.75, 0.875, 1] first reaches q at step 3.

# %%
p = exit_distribution([0.5, 0.5, 0.5, 0.5])
print("p =", p, " CDF =", np.cumsum(p), " exit step (q=0.8):", q_exit_step([0.5, 0.5, 0.5, 0.5], 0.8))
assert np.allclose(p, [0.5, 0.25, 0.125, 0.125]) and q_exit_step([0.5] * 4, 0.8) == 3

# %% [markdown]
# ## A small exit-gated model, trained briefly with Ouro's objective
# Task: next-token prediction on a toy stream where some tokens are predictable from the previous one and
# others are noise. Loss = sum_t p(t) CE_t - beta H(p) (the entropy term keeps the exit distribution
# from collapsing onto one step early in training).

# %%
SEED = 0
lt.manual_seed(SEED)
rng = np.random.default_rng(SEED)
V, T = 16, 24


def batch(B=32):
    x = rng.integers(0, V, (B, T))
    x[:, 1::2] = (x[:, 0::2] * 3 + 1) % V  # every odd position is a function of the one before it
    return x[:, :-1], x[:, 1:]


cfg = LoopConfig(vocab_size=V, d_model=32, n_heads=4, max_len=32, exit="gate", max_loops=4, exit_threshold=0.6)
m = LoopLM(cfg)
from litetorch.optim import AdamW  # noqa: E402

opt = AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
for step in range(150):
    ids, tgt = batch()
    loss = looplm_loss(m.run(ids, steps=True), tgt, beta=0.05)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0 or step == 149:
        print(f"step {step:3d} loss {loss.item():.3f}")
print(f"seed {SEED}")

# %% [markdown]
# ## The exit distribution, per token

# %%
ids, _ = batch(1)
with lt.no_grad():
    out_steps = m.run(ids, steps=True)
    out = m.run(ids)
P = out_steps.exit_probs.data[0]  # [T, R]
fig, ax = plt.subplots(1, 2, figsize=(10, 3), gridspec_kw={"width_ratios": [3, 1]})
im = ax[0].imshow(P.T, aspect="auto", origin="lower", extent=(-0.5, P.shape[0] - 0.5, 0.5, P.shape[1] + 0.5))
ax[0].plot(np.arange(P.shape[0]), out.loops[0], "w.", label="exit step (q=0.6)")
ax[0].set_xlabel("token position"), ax[0].set_ylabel("step t")
ax[0].set_title("p(t) per token (Ouro exit distribution)")
ax[0].legend(fontsize=8, loc="upper right")
fig.colorbar(im, ax=ax[0])
ax[1].hist(out.loops[0], bins=np.arange(0.5, 5.5), rwidth=0.8)
ax[1].set_xlabel("loops used"), ax[1].set_title("histogram")
fig.tight_layout()
fig.savefig(OUT / "19-exit-distribution.png", dpi=120)
print("loops used per token:", out.loops[0].tolist())

# %% [markdown]
# ## KL and entropy exits on the same kind of model
# Threshold sweeps: lower thresholds -> more loops. The KL rule can never exit at step 1 (it needs two steps).

# %%
for kind, thresholds in (("kl", [1e-1, 1e-2, 1e-3, 1e-4]), ("entropy", [2.7, 2.6, 2.5, 2.0])):
    for th in thresholds:
        lt.manual_seed(SEED)
        mk = LoopLM(LoopConfig(vocab_size=V, d_model=32, n_heads=4, max_len=32, exit=kind, max_loops=6,
                               exit_threshold=th))
        with lt.no_grad():
            used = mk.run(ids).loops
        print(f"{kind:8s} threshold {th:<7g} mean loops {used.mean():.2f}  (min {used.min()}, max {used.max()})")
print(f"wall time {time.perf_counter() - t_start:.1f}s")
