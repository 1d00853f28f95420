# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 20 — KV caches for looped transformers
#
# A looped block runs R times per token, and each iteration's attention has its own keys and values.
# Three ways to cache them (lesson: `lessons/20-kv-caches-for-loops.md`):
#
# | policy | what is kept | exact? |
# |---|---|---|
# | `per_iteration` | one cache per (iteration, layer) | exact: prefill == decode |
# | `shared_first` | iteration 1's K/V only; iterations >= 2 read it | exact *for its own architecture* (training uses the same rule) |
# | `last_step` | each token's K/V from its last iteration | an approximation at decode time |
#
# We check prefill == decode for the exact ones, measure the drift of `last_step`, and tabulate bytes per token.

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
from litetorch.nn.looped import kv_bytes_per_token  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)
t_start = time.perf_counter()


# %% [markdown]
# ## Prefill vs token-by-token decode, per policy (float64)

# %%
def model(policy, R=4, seed=0):
    lt.manual_seed(seed)
    cfg = LoopConfig(vocab_size=50, d_model=32, n_heads=4, n_kv_heads=2, max_len=64, n_before=1, n_after=1,
                     loop_count=R, kv_policy=policy)
    return LoopLM(cfg).double()


ids = np.random.default_rng(0).integers(0, 50, (1, 24))
drift = {}
for policy in ("per_iteration", "shared_first", "last_step"):
    m = model(policy)
    with lt.no_grad():
        full = m(ids).data
        caches = m.new_caches(1)
        parts = [m(ids[:, :8], caches).data] + [m(ids[:, t:t + 1], caches).data for t in range(8, 24)]
    dec = np.concatenate(parts, axis=1)
    err = np.abs(dec - full).max(axis=-1)[0]  # per position
    drift[policy] = err
    print(f"{policy:14s} max |prefill - decode| = {err.max():.2e}   K/V rows held = {caches.rows()}"
          f"   bytes/token = {caches.bytes_per_token}")
assert drift["per_iteration"].max() <= 1e-10 and drift["shared_first"].max() <= 1e-10

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for policy, err in drift.items():
    ax.semilogy(np.arange(24), np.maximum(err, 1e-18), marker="o", ms=3, label=policy)
ax.axvline(7.5, color="gray", ls=":")
ax.text(8, 1e-16, "decode starts", fontsize=8)
ax.set_xlabel("position"), ax.set_ylabel("max |logit diff| vs full forward")
ax.set_title("last_step is an approximation; the others are exact")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "20-decode-drift.png", dpi=120)

# %% [markdown]
# The drift of `last_step` here is for a *random, untrained* model, where successive iterations'
# K/V differ a lot. Ouro (arXiv 2510.25741, Table 14) reports that on a trained looped model, reusing
# the last step's cache at decode loses little, while reusing only the first step's hurts more — we have
# not reproduced that; check the paper for the numbers.

# %% [markdown]
# ## Memory: bytes per token, computed and measured
# A stated config: SmolLM2-135M-like attention (Hkv = 3, Dh = 64), 2 local layers before and 2 after,
# float32, R = 1..8.

# %%
rows = []
for R in (1, 2, 4, 8):
    for policy in ("per_iteration", "shared_first", "last_step"):
        formula = kv_bytes_per_token(policy, R, 2, 2, n_kv_heads=3, head_dim=64)
        cfg = LoopConfig(vocab_size=10, d_model=192, n_heads=3, n_kv_heads=3, n_before=2, n_after=2,
                         loop_count=R, kv_policy=policy, max_len=8)
        measured = LoopLM(cfg).new_caches(1, max_len=8).nbytes // 8
        assert formula == measured
        rows.append((R, policy, formula))
print(f"{'R':>2}  {'policy':14s} {'bytes/token':>12}")
for R, policy, b in rows:
    print(f"{R:>2}  {policy:14s} {b:>12,}")

# %%
fig, ax = plt.subplots(figsize=(5, 3))
for policy in ("per_iteration", "shared_first"):
    ax.plot([r for r, p, _ in rows if p == policy], [b / 1024 for _, p, b in rows if p == policy], marker="o",
            label=policy if policy == "per_iteration" else "shared_first / last_step")
ax.set_xlabel("loop count R"), ax.set_ylabel("KiB per token")
ax.set_title("KV cache per token (Hkv=3, Dh=64, 2+2 local layers)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "20-kv-bytes.png", dpi=120)

# %% [markdown]
# ## Mixed layer kinds: K/V rows and recurrent states, and hyper-connections
# A Gated DeltaNet layer keeps a fixed-size state instead of K/V rows; in the shared block, one state per
# iteration (the state after r iterations of the prefix is what iteration r of the next token reads).
# Hyper-connections add nothing to the cache: a mapping reads only its own token's streams. Prefill then
# decode, against one full forward, float64, for both exact policies, with an adaptive exit on top.

# %%
hybrid_cases = {
    "per_iteration, DeltaNet shared block, mHC, exit gate": dict(
        n_before=1, n_after=1, max_loops=4, exit="gate", exit_threshold=0.5, hyper="mhc", hyper_streams=2,
        layer_types=["attention", "deltanet", "attention"], mlp_types=["dense", "dense", "moe"]),
    "shared_first, DeltaNet local layer, mHC-lite": dict(
        n_before=1, n_after=1, loop_count=3, kv_policy="shared_first", hyper="mhc_lite", hyper_streams=2,
        layer_types=["deltanet", "attention", "attention"]),
}
for name, kw in hybrid_cases.items():
    lt.manual_seed(0)
    m = LoopLM(LoopConfig(vocab_size=50, d_model=32, n_heads=4, n_kv_heads=2, max_len=64, n_experts=4,
                          linear_num_value_heads=8, **kw)).double()
    with lt.no_grad():
        full = m.run(ids)
        caches = m.new_caches(1)
        parts = [m.run(ids[:, :8], caches)] + [m.run(ids[:, t:t + 1], caches) for t in range(8, 24)]
    err = np.abs(np.concatenate([o.logits.data for o in parts], axis=1) - full.logits.data).max()
    same_loops = np.array_equal(np.concatenate([o.loops for o in parts], axis=1), full.loops)
    print(f"{name}: max |prefill+decode - full| = {err:.1e}, same loops per token: {same_loops}; K/V "
          f"{caches.bytes_per_token} B/token + states {caches.state_bytes} B fixed; rewindable: {caches.rewindable}")
    assert err <= 1e-10 and same_loops
out = lt.generate(m, None, ids[0, :8].tolist(), max_new_tokens=8)
print("generation stats:", out.stats)

# %% [markdown]
# ## What a cached token costs at 4k context, per preset
# K/V rows of every attention layer run (the shared block's R times under per_iteration) plus the Gated
# DeltaNet states shared out over 4096 tokens, float32, from `presets.cost` (no weights allocated).

# %%
from litetorch.models import presets  # noqa: E402

names = ["tiny_cpu", "d20", "d20_loop", "nano_1b", "nano_7b", "moe_80b", "qwen3_coder_80b"]
kv_part, state_part = [], []
for name in names:
    c = presets.get(name)
    total = presets.cost(c, context=4096).cache_bytes_per_token
    attn_only = sum((c.n_iter if i == c.n_before and c.kv_policy == "per_iteration" else 1) * 2 * c.n_kv_heads
                    * c.head_dim * 4 for i in range(c.n_layers) if c.layer_kind(i)[0] == "attention")
    kv_part.append(attn_only / 1024)
    state_part.append((total - attn_only) / 1024)
    print(f"{name:16s} {total / 1024:9.1f} KiB/token  (K/V {attn_only / 1024:.1f}, "
          f"states {(total - attn_only) / 1024:.1f})")
fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(names, kv_part, label="K/V rows (attention)")
ax.barh(names, state_part, left=kv_part, label="Gated DeltaNet states / 4096")
for i, (kv_kib, st_kib) in enumerate(zip(kv_part, state_part)):
    ax.text(kv_kib + st_kib, i, f" {kv_kib + st_kib:,.1f}", va="center", fontsize=8)
ax.set_xlim(0, max(k + s_ for k, s_ in zip(kv_part, state_part)) * 1.15)
ax.set_xlabel("cache KiB per token at 4k context (float32)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "20-cache-per-preset.png", dpi=120)
print(f"wall time {time.perf_counter() - t_start:.1f}s")
