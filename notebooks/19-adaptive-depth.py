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
from litetorch.models.looplm import LoopConfig, LoopLM  # noqa: E402
from litetorch.models.looplm_train import looplm_loss, penalty_weight  # noqa: E402
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

# %% [markdown]
# ## Stage 1: distillation from a teacher, and the annealed loop-scale penalty
# loss = sum_t p(t) [CE_t + w tau^2 KL(teacher_t || student_t)] - beta H(p) + lambda_step E_p[t], with
# lambda_step growing from 0 to its full value over training (`penalty_weight`). First the check: the same
# loss written in PyTorch (tests/reference/torch_looplm.py), value and every gradient, in float64.

# %%
lt.manual_seed(1)
sm = LoopLM(LoopConfig(vocab_size=V, d_model=16, n_heads=4, max_len=32, exit="gate", max_loops=3, n_before=1,
                       hyper="mhc", hyper_streams=2, layer_types=["deltanet", "attention"])).double()
ids2, tgt2 = batch(2)
teacher_z = np.random.default_rng(2).standard_normal(ids2.shape + (V,)) * 2
lam = penalty_weight(0.05, step=30, steps=100, schedule="cosine")
loss = looplm_loss(sm.run(ids2, steps=True), tgt2, beta=0.03, compute_penalty=lam, teacher_logits=teacher_z,
                   temperature=2.0, distill_weight=0.7)
loss.backward()
try:
    import torch

    from litetorch.testing import named_grads
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference") if "__file__" in globals()
                    else "../tests/reference")
    import torch_looplm as ref
    tw = ref.TorchLoopLM(sm.config).double()
    tw.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sm.state_dict(split_fused=True).items()})
    tl, _, tsteps, tprobs = tw(torch.from_numpy(ids2), steps=True)
    tloss = ref.looplm_loss(tl, tsteps, tprobs, torch.from_numpy(tgt2), beta=0.03, compute_penalty=lam,
                            teacher=torch.from_numpy(teacher_z), tau=2.0, distill_weight=0.7)
    tloss.backward()
    tgrads = dict(tw.named_parameters())
    e_grad = max(np.abs(g - tgrads[k].grad.numpy()).max() for k, g in named_grads(sm).items())
    print(f"distillation loss {loss.item():.6f}: |loss - torch| = {abs(loss.item() - tloss.item()):.1e}, "
          f"worst gradient error {e_grad:.1e}")
    assert abs(loss.item() - tloss.item()) <= 1e-10 and e_grad <= 1e-10
except ImportError:
    print("torch not installed: comparison skipped")
print("penalty weight at steps 0, 25, 50, 75, 99 of 100 (linear):",
      [round(penalty_weight(0.01, s, 100, "linear"), 5) for s in (0, 25, 50, 75, 99)])

# %% [markdown]
# ## The demo: a 6-layer d20 teacher distilled into d20_loop, on the stories
# `benchmarks/distill_d20.py` (about an hour on two busy cores) trains the teacher (preset d20: 6 layers of
# width 256) and two d20_loop students (1 local + 1 shared x 2..4 + 1 local, mHC-lite, Ouro's exit gate):
# one with the KL term (w = 1, tau = 2), one without, same seed, same batches, the same annealed penalty.
# Its results are committed (`benchmarks/results/distill_d20.json`); here we read and plot them.

# %%
import json  # noqa: E402

RESULT = (Path(__file__).resolve().parent.parent if "__file__" in globals() else Path.cwd().parent) \
    / "benchmarks" / "results" / "distill_d20.json"
if RESULT.exists():
    res = json.loads(RESULT.read_text())
    print(f"{'run':<18} {'params':>9} {'val CE':>8} {'accuracy':>9} {'loops/tok':>9} {'KL to teacher':>13} {'wall':>7}")
    for name, r in res["runs"].items():
        print(f"{name:<18} {r['parameters']:>9,} {r['val_ce']:>8.4f} {r['val_accuracy']:>9.4f} "
              f"{r['loops_per_token']:>9.2f} {r['kl_to_teacher']:>13.4f} {r['wall_seconds']:>6.0f}s")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = {"teacher": "black", "student_distilled": "tab:blue", "student_alone": "tab:orange"}
    for name, r in res["runs"].items():
        h = r["history"]
        a1.plot(h["eval_step"], h["val_loss"], "o-", color=colors[name], label=f"{name} ({r['parameters'] / 1e6:.2f}M)")
        if name != "teacher":
            a2.plot(h["eval_step"], h["val_kl_to_teacher"], "o-", color=colors[name], label=name)
    a1.set(xlabel="step", ylabel="validation CE (nats/char)", title="d20 teacher and two d20_loop students")
    a2.set(xlabel="step", ylabel="KL(teacher || student)", title="distance to the teacher")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "19-distillation.png", dpi=120)
    d, alone = res["runs"]["student_distilled"], res["runs"]["student_alone"]
    assert d["kl_to_teacher"] < alone["kl_to_teacher"], "distillation should bring the student closer to its teacher"
else:
    print(f"{RESULT} not found: run python benchmarks/distill_d20.py")
print(f"wall time {time.perf_counter() - t_start:.1f}s")
