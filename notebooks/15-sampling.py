# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 15 — Sampling: from logits to the next token
#
# The model's last layer gives one score (a *logit*) per vocabulary entry: 49,152 numbers for
# SmolLM2. Generation turns them into one token id. Greedy decoding takes the argmax; sampling
# draws from `softmax(logits)`, after a chain of small edits that reshape the distribution:
# repetition penalty, temperature, top-k, top-p, min-p. We apply each one to real SmolLM2 logits,
# plot what it does, and check every function against Hugging Face's implementation.
# Lesson: `lessons/15-sampling.md`. Code: `litetorch/sampling.py`.

# %%
import json
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

ROOT = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path.cwd().parent
try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: use the repo next to this notebook
    sys.path.insert(0, str(ROOT))
import litetorch as lt  # noqa: E402
from litetorch.sampling import (Sampler, apply_temperature, greedy, min_p_filter, repetition_penalty,  # noqa: E402
                                sample, softmax, top_k_filter, top_p_filter)

OUT = ROOT / "notebooks" / "_out"
OUT.mkdir(parents=True, exist_ok=True)
T0 = time.perf_counter()

# %% [markdown]
# ## 0. Real logits
#
# The logits come from the committed reference fixture `tests/fixtures/smollm2_reference.npz`: HF
# transformers ran SmolLM2-135M-Instruct (float32) on a few prompts and saved the logits at the
# last position, i.e. the scores for the *first* generated token. Loading them needs only NumPy.
# Three prompts with very different confidence:
#
# - `chat_france`: the chat template around "What is the capital of France?" — the reply's first word;
# - `chat_system`: a pirate system prompt + "Where do whales live?" — the model is sure ("Wh...");
# - `long`: the middle of a 300-token paragraph about whales — many plausible continuations.

# %%
FIX = ROOT / "tests" / "fixtures"
with np.load(FIX / "smollm2_reference.npz") as z:
    ref = {k: z[k] for k in z.files}
info = json.loads((FIX / "smollm2_reference.json").read_text(encoding="utf-8"))
prompts = {p["name"]: p for p in info["prompts"]}
NAMES = ["chat_france", "chat_system", "long"]
logits = {name: ref[f"{name}.last_logits"] for name in NAMES}          # each [V] float32
V = len(logits["chat_france"])

# token id -> text, for labels (the fixture stores the 20 best next tokens of each prompt)
piece = {i: s for p in prompts.values() for i, s, _ in p["top20_last"]}


def label(i):
    return repr(piece[i]) if i in piece else f"#{i}"      # repr shows spaces and newlines: ' The', '\\n'


print(f"V = {V}, dtype {logits['chat_france'].dtype}")
print(prompts["chat_france"]["rendered"])
for name in NAMES:
    p = softmax(logits[name], dtype=np.float64)
    top = np.argsort(-p)[:5]
    print(f"{name:12s} top-5: " + ", ".join(f"{label(i)} {p[i]:.3f}" for i in top))

# %% [markdown]
# ## 1. Softmax, and the two ways to pick
#
# $$p_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}}, \qquad m = \max_j x_j$$
#
# Subtracting the max changes nothing mathematically and keeps every exponent $\le 0$.
# `greedy` takes $\arg\max_i x_i$ — always the same answer. `sample` draws $i$ with probability
# $p_i$: lay the probabilities end to end on $[0, 1)$, draw $u \sim U[0,1)$, return the token
# whose interval holds $u$ (inverse-CDF sampling, in float64).

# %%
x = logits["chat_france"]
gen = lt.Generator(0)
print("greedy:", label(greedy(x)))
print("10 samples at T=1:", " ".join(label(sample(x, gen)) for _ in range(10)))


def top_bars(ax, x_before, x_after, title, n=25):
    """The n best tokens (ranked before): probability before (gray) and after (blue) a warper."""
    order = np.argsort(-x_before, kind="stable")[:n]
    p_before, p_after = softmax(x_before, dtype=np.float64), softmax(x_after, dtype=np.float64)
    ax.bar(range(n), p_before[order], color="lightgray", label="before")
    ax.bar(range(n), p_after[order], width=0.5, color="tab:blue", label="after")
    ax.set_xticks(range(n), [label(i) for i in order], rotation=90, fontsize=7)
    ax.set_title(f"{title}  ({np.isfinite(x_after).sum()} tokens kept)", fontsize=9)


# %% [markdown]
# ## 2. Temperature
#
# $$p_i(T) = \frac{e^{x_i / T}}{\sum_j e^{x_j / T}}$$
#
# $T < 1$ stretches the gaps between logits (sharper, toward greedy as $T \to 0$); $T > 1$ shrinks
# them (flatter, toward uniform as $T \to \infty$). Entropy $H = -\sum p_i \log p_i$ measures the
# spread: $H = 0$ is one certain token, $\log V \approx 10.8$ is uniform.

# %%
temps = np.geomspace(0.1, 10, 60)
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for name in NAMES:
    H = []
    for t in temps:
        p = softmax(apply_temperature(logits[name], t), dtype=np.float64)
        H.append(-(p[p > 0] * np.log(p[p > 0])).sum())
    axes[0].semilogx(temps, H, label=name)
axes[0].axhline(np.log(V), ls=":", c="gray", label="uniform: log V")
axes[0].axvline(1.0, ls="--", c="k", lw=0.8)
axes[0].set(xlabel="temperature T", ylabel="entropy (nats)", title="Temperature controls the spread")
axes[0].legend(fontsize=8)
order = np.argsort(-x)[:15]
for t, c in [(0.5, "tab:green"), (1.0, "tab:blue"), (1.5, "tab:red")]:
    p = softmax(apply_temperature(x, t), dtype=np.float64)
    axes[1].plot(range(15), p[order], "o-", c=c, label=f"T = {t}")
axes[1].set_xticks(range(15), [label(i) for i in order], rotation=90, fontsize=8)
axes[1].set(ylabel="probability", title="chat_france: first reply token")
axes[1].legend()
fig.tight_layout()
fig.savefig(OUT / "15-temperature.png", dpi=110)

# %% [markdown]
# ## 3. Top-k, top-p, min-p
#
# All three *remove* tokens by setting their logit to $-\infty$ (probability 0); softmax then
# renormalizes over the survivors.
#
# - **top-k**: keep $x_i \ge x_{(k)}$, the $k$-th largest logit (ties with it survive too).
# - **top-p** (nucleus): sort by probability, keep the smallest set of top tokens whose mass
#   reaches $p$: token $i$ survives if the tokens ranked above it hold less than $p$.
#   HF writes it from the other end: remove $i$ if $\sum_{j \preceq i} p_j \le 1 - p$ (its own
#   mass plus all less likely ones). The top token always survives.
# - **min-p**: keep $p_i \ge \text{min\_p} \cdot \max_j p_j$ — a cut relative to the best token.

# %%
warped = {
    "original (T = 1)": x,
    "temperature 0.7": apply_temperature(x, 0.7),
    "top-k = 10": top_k_filter(x, 10),
    "top-p = 0.9": top_p_filter(x, 0.9),
    "min-p = 0.1": min_p_filter(x, 0.1),
    "chain: T 0.7, top-k 40, top-p 0.9, min-p 0.05": Sampler(0.7, 40, 0.9, 0.05).process(x),
}
fig, axes = plt.subplots(2, 3, figsize=(15, 7), sharey=True)
for ax, (title, w) in zip(axes.flat, warped.items()):
    top_bars(ax, x, w, title)
axes[0, 0].legend()
fig.suptitle("chat_france, first reply token: probabilities before (gray) and after (blue) each warper")
fig.tight_layout()
fig.savefig(OUT / "15-warpers.png", dpi=110)
for title, w in warped.items():
    print(f"{title:48s} kept {np.isfinite(w).sum():6d}   top prob {softmax(w, np.float64).max():.3f}")

# %% [markdown]
# Top-p in one picture: the cumulative probability of the sorted tokens, and where it crosses $p$.

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
for name in NAMES:
    p = np.sort(softmax(logits[name], dtype=np.float64))[::-1]
    cum = np.cumsum(p)
    n_kept = np.isfinite(top_p_filter(logits[name], 0.9)).sum()
    ax.semilogx(np.arange(1, V + 1), cum, label=f"{name}: {n_kept} tokens reach 0.9")
ax.axhline(0.9, ls="--", c="k", lw=0.8)
ax.set(xlabel="number of top tokens", ylabel="cumulative probability",
       title="top-p = 0.9 keeps a varying number of tokens")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "15-top-p-cumulative.png", dpi=110)

# %% [markdown]
# The point of top-p and min-p: the number of survivors *adapts* to the model's confidence, while
# top-k keeps the same count whether the model is sure or not.

# %%
rules = {"top-k 50": lambda l: top_k_filter(l, 50), "top-p 0.9": lambda l: top_p_filter(l, 0.9),
         "top-p 0.95": lambda l: top_p_filter(l, 0.95), "min-p 0.05": lambda l: min_p_filter(l, 0.05),
         "min-p 0.1": lambda l: min_p_filter(l, 0.1)}
kept = {r: [int(np.isfinite(f(logits[n])).sum()) for n in NAMES] for r, f in rules.items()}
print(f"{'tokens kept':12s}" + "".join(f"{n:>14s}" for n in NAMES))
for r, ks in kept.items():
    print(f"{r:12s}" + "".join(f"{k:14d}" for k in ks))
fig, ax = plt.subplots(figsize=(8, 3.5))
w = 0.8 / len(rules)
for j, (r, ks) in enumerate(kept.items()):
    ax.bar(np.arange(len(NAMES)) + j * w, ks, w, label=r)
ax.set_xticks(np.arange(len(NAMES)) + 0.4 - w / 2, NAMES)
ax.set(yscale="log", ylabel="tokens kept", title="Survivors per rule: only top-k ignores confidence")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "15-kept-counts.png", dpi=110)

# %% [markdown]
# ## 4. Repetition penalty
#
# For every token id already in the context (each id once):
# $$x_i \leftarrow \begin{cases} x_i / r & x_i > 0 \\ x_i \cdot r & x_i < 0 \end{cases}$$
# With $r > 1$ both branches lower the logit. Note that it penalizes by *presence*, not by
# count, and that for a decoder-only model the prompt counts too. On the whale paragraph:

# %%
xl = logits["long"]
context = ref["long.input_ids"]
penalized = repetition_penalty(xl, context, 1.3)
before, after = softmax(xl, dtype=np.float64), softmax(penalized, dtype=np.float64)
for i in np.argsort(-xl)[:8]:
    seen = "seen" if i in set(context.tolist()) else "new "
    print(f"{label(i):14s} {seen}  logit {xl[i]:7.3f} -> {penalized[i]:7.3f}   p {before[i]:.3f} -> {after[i]:.3f}")

# %% [markdown]
# ## 5. The whole chain, and the draw
#
# `Sampler` applies the steps in the order HF `generate` builds them
# (`GenerationMixin._get_logits_processor`): repetition penalty → temperature → top-k → top-p →
# min-p, then draws. Order matters: top-p after temperature measures mass in the *sharpened*
# distribution. Draw 20,000 first tokens and compare the frequencies with the processed
# probabilities. (Removed tokens have probability 0, so drawing among the survivors only is the
# same draw; it lets 20,000 draws run as one small `[n, kept]` batch instead of `[n, 49152]`.)

# %%
sampler = Sampler(temperature=0.7, top_p=0.9, seed=0)
processed = sampler.process(x)                                          # [V], -inf outside the nucleus
expected = softmax(processed, dtype=np.float64)
survivors = np.flatnonzero(np.isfinite(processed))                     # [kept] token ids
n = 20000
draws = survivors[sample(np.tile(processed[survivors], (n, 1)), lt.Generator(0))]   # [n] token ids
counts = np.bincount(draws, minlength=V)
order = np.argsort(-expected)[:12]
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.bar(np.arange(12) - 0.2, expected[order], 0.4, label="softmax of processed logits")
ax.bar(np.arange(12) + 0.2, counts[order] / n, 0.4, label=f"frequency in {n} draws")
ax.set_xticks(range(12), [label(i) for i in order], rotation=90)
ax.set(title="Sampler(temperature=0.7, top_p=0.9) on chat_france", ylabel="probability")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "15-sampler-draws.png", dpi=110)
assert counts[expected == 0].sum() == 0, "a removed token was drawn"
print("max |frequency - probability|:", np.abs(counts / n - expected).max())
assert np.abs(counts / n - expected).max() < 0.01
print("first tokens of 8 seeded replies:", " ".join(label(Sampler(0.7, top_p=0.9, seed=s)(x)) for s in range(8)))

# %% [markdown]
# ## 6. Check against Hugging Face
#
# Each function should equal the same-named HF processor: identical removed positions, equal
# kept values. (One honest caveat: when tokens *tied* in logit straddle the top-p cut, HF drops
# tied members in torch.sort's order and litetorch by token id — the same number either way.)

# %%
try:
    import torch
    from transformers.generation import logits_process as lp
except ImportError:
    torch = None
    print("SKIP: torch/transformers are not installed, so the comparison with HF is skipped. "
          "(pip install -e '.[reference]')")

if torch is not None:
    cases = [("temperature 0.7", lambda l: apply_temperature(l, 0.7), lp.TemperatureLogitsWarper(0.7)),
             ("top-k 50", lambda l: top_k_filter(l, 50), lp.TopKLogitsWarper(50)),
             ("top-p 0.9", lambda l: top_p_filter(l, 0.9), lp.TopPLogitsWarper(0.9)),
             ("min-p 0.05", lambda l: min_p_filter(l, 0.05), lp.MinPLogitsWarper(0.05)),
             ("repetition 1.3", lambda l: repetition_penalty(l, context, 1.3),
              lp.RepetitionPenaltyLogitsProcessor(1.3))]
    ids = torch.from_numpy(context.astype(np.int64))[None]               # [1, T]
    for title, ours_fn, hf_proc in cases:
        worst = 0.0
        for name in NAMES:
            ours = ours_fn(logits[name])
            hf = hf_proc(ids, torch.from_numpy(logits[name].copy())[None])[0].numpy()
            assert (np.isneginf(ours) == np.isneginf(hf)).all(), f"{title} on {name}: removed tokens differ"
            keep = np.isfinite(hf)
            worst = max(worst, float(np.abs(ours[keep] - hf[keep]).max() / np.abs(hf[keep]).max()))
        print(f"{title:16s} same removed tokens on {len(NAMES)} prompts; max relative error {worst:.1e}")
        assert worst <= 1e-6

# %%
print(f"notebook ran in {time.perf_counter() - T0:.1f} s; figures in {OUT}")
