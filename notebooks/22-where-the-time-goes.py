# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 22 — Where the time goes
#
# One decode step of SmolLM2-135M in NumPy: how long it *should* take (the memory-bandwidth
# bound), where the time actually goes (a profile), and what each speed trick buys (measured
# before/after, with the tokens checked identical every time).

# %%
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

ROOT = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path.cwd().parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "notebooks" / "_out"
OUT.mkdir(parents=True, exist_ok=True)

import litetorch as lt
from litetorch import threads
from litetorch.generation import PromptCache
from litetorch.nn import fused

MODEL = Path(os.environ.get("LITETORCH_MODEL") or Path.home() / ".cache/litetorch/SmolLM2-135M-Instruct.Q4_1.gguf")
if not MODEL.exists():
    print(f"SKIP: model file {MODEL} not found; run `litetorch generate hi` once to fetch it")
    sys.exit(0)

from litetorch.models.loading import load_llama

model = load_llama(MODEL)
PROMPT = list(range(1000, 1256))  # 256 arbitrary token ids: the context each step attends to
N = 16  # decode steps per measurement

# %% [markdown]
# ## 1. The bound, on paper
#
# Decoding one token multiplies one row vector by every weight matrix once. Each weight is read
# from memory once per token and used for one multiply-add, so the step is **memory-bound**:
#
#     time per token ≥ bytes of weights / memory bandwidth
#
# SmolLM2 has 30 layers × (Q, K, V, O, gate, up, down) plus the 49152 × 576 output matrix (tied
# to the embedding), all float32:

# %%
mats = [p.data for n, p in model.named_parameters() if p.data.ndim == 2]
weight_bytes = sum(m.nbytes for m in mats)
print(f"{len(mats)} matrices, {weight_bytes / 2**20:.0f} MiB of float32 weights read per token")

big = np.ones(64 * 2**20 // 4, dtype=np.float32)  # 64 MiB, larger than any cache
best = min((lambda t0: (big.sum(), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
bandwidth = big.nbytes / best
print(f"streaming read bandwidth ≈ {bandwidth / 1e9:.1f} GB/s  ->  bound ≈ {bandwidth / weight_bytes:.1f} tok/s")

x = {m.shape[1]: np.ones((1, m.shape[1]), np.float32) for m in mats}
gemv_at = {}  # BLAS threads -> seconds for one single-row matmul with every matrix (best of 5)
for n in (1, 2):
    with threads.blas_threads(n):
        gemv_at[n] = min((lambda t0: ([x[m.shape[1]] @ m.T for m in mats], time.perf_counter() - t0)[1])(
            time.perf_counter()) for _ in range(5))
gemv = min(gemv_at.values())  # the bound is the best NumPy can do with either thread count
print("GEMV-only pass over every matrix: " + ", ".join(f"{n} thread(s) {1e3 * t:.1f} ms" for n, t in gemv_at.items())
      + f"  ->  {1 / gemv:.1f} tok/s (the NumPy bound)")

# %% [markdown]
# ## 2. Where one step goes (profile)

# %%
pc = PromptCache(model, len(PROMPT) + 64)
pc.extend(PROMPT)
prof = cProfile.Profile()
prof.enable()
for i in range(N):
    pc.extend([100 + i])
prof.disable()
stats = pstats.Stats(prof)
groups = {"weight matmuls (linear)": 0.0, "attention over the cache (sdpa)": 0.0,
          "everything else (Python, small ops)": 0.0}
total = 0.0
for (file, line, fn), (cc, nc, tt, ct, callers) in stats.stats.items():
    total += tt
    if file.endswith("ops/matmul.py") and fn == "linear":
        groups["weight matmuls (linear)"] += tt
    elif file.endswith("nn/sdpa.py"):  # its NumPy matmuls/exp count as its own time
        groups["attention over the cache (sdpa)"] += tt
    else:
        groups["everything else (Python, small ops)"] += tt
for k, v in groups.items():
    print(f"{k:<40} {1e3 * v / N:7.2f} ms/token  ({100 * v / total:4.1f}%)")
print("(cProfile inflates the Python share: it adds a cost to every function call)")


# %% [markdown]
# ### The framework's cost
# The same decode step written as bare NumPy: no Tensor, no Module, no checks, the weights and
# the RoPE table taken from the model. Its logits must match litetorch's; the time difference is
# what the framework (graph nodes, modules, validation) costs per token. It is the floor for any
# NumPy decode loop, and the reason the GEMV bound cannot be reached: the attention and the small
# ops sit on top of it even with no framework at all.

# %%
cfg = model.config
H, Hkv, Dh, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
with lt.no_grad():
    model(np.asarray([[1]]))  # builds the fused [q;k;v] and [gate;up] stacks
layers = [(l.input_layernorm.weight.data, l.self_attn._qkv._weight(), l.self_attn.o_proj.weight.data,
           l.post_attention_layernorm.weight.data, l.mlp._gate_up._weight(), l.mlp.down_proj.weight.data)
          for l in model.model.layers]
rope = model.model.layers[0].self_attn.rope


def bare_rms(x, w):
    return x * (1.0 / np.sqrt(np.add.reduce(x * x, axis=-1, keepdims=True) / C + cfg.rms_norm_eps)) * w


def bare_rope(x, cos, sin):
    d = Dh // 2
    return x * cos + np.concatenate([-x[..., d:], x[..., :d]], axis=-1) * sin


def bare_step(tok, K, V, pos):
    """One decode step in bare NumPy: token id -> logits [V]; K, V: per-layer [Hkv, T_max, Dh]."""
    cos, sin = rope.cos_sin(1, pos, dtype=np.float32)
    x = model.model.embed_tokens.weight.data[tok][None]  # [1, C]
    for i, (w1, Wqkv, Wo, w2, Wgu, Wd) in enumerate(layers):
        qkv = bare_rms(x, w1) @ Wqkv.T
        q = bare_rope(qkv[:, :H * Dh].reshape(H, 1, Dh), cos, sin)
        K[i][:, pos] = bare_rope(qkv[:, H * Dh:(H + Hkv) * Dh].reshape(Hkv, 1, Dh), cos, sin)[:, 0]
        V[i][:, pos] = qkv[:, (H + Hkv) * Dh:].reshape(Hkv, Dh)
        s = (q.reshape(Hkv, H // Hkv, 1, Dh) * Dh ** -0.5) @ K[i][:, None, :pos + 1].swapaxes(-1, -2)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + (s @ V[i][:, None, :pos + 1]).reshape(1, H * Dh) @ Wo.T
        gate, up = np.split(bare_rms(x, w2) @ Wgu.T, 2, axis=-1)
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ Wd.T
    return (bare_rms(x, model.model.norm.weight.data) @ model.model.embed_tokens.weight.data.T)[0]


rows_fw = []
threads_setting = threads.DECODE_BLAS_THREADS
for n in (1, 2):  # both pinned to the same BLAS thread count, compared with the bound at that count
    threads.DECODE_BLAS_THREADS = n  # (PromptCache.extend applies it around each decode step)
    pc = PromptCache(model, len(PROMPT) + N + 1)
    pc.extend(PROMPT)
    K = [c.k[0].copy() for c in pc.caches]  # the prompt's keys and values, from litetorch's cache
    V = [c.v[0].copy() for c in pc.caches]
    t_ours = t_bare = worst = 0.0
    with threads.blas_threads(n):
        for i in range(N):
            t0 = time.perf_counter()
            ours = pc.extend([100 + i])[-1]
            t1 = time.perf_counter()
            bare = bare_step(100 + i, K, V, len(PROMPT) + i)
            t_ours, t_bare = t_ours + t1 - t0, t_bare + time.perf_counter() - t1
            worst = max(worst, float(np.abs(bare - ours).max() / np.abs(ours).max()))
    assert worst <= 1e-5, worst
    rows_fw.append((n, t_ours / N, t_bare / N))
    print(f"{n} thread(s): litetorch {1e3 * t_ours / N:5.1f} ms/token ({100 * N * gemv_at[n] / t_ours:3.0f}% of the "
          f"{n}-thread bound), bare NumPy {1e3 * t_bare / N:5.1f} ms ({100 * N * gemv_at[n] / t_bare:3.0f}%); "
          f"framework cost {1e3 * (t_ours - t_bare) / N:4.1f} ms/token; logits agree to {worst:.0e}")
threads.DECODE_BLAS_THREADS = threads_setting

# %% [markdown]
# ### The matmuls make the small ops slower
# Each weight matmul streams megabytes of weights through the caches, so the small ops after it
# find their data (and NumPy's and Python's) evicted. Put a stored output of the right shape in
# place of every weight matmul (no weights read; the logits become meaningless) and time the same
# steps: what is left is "everything else" with warm caches. Compare it with "everything else"
# inside real steps (step time minus the time inside the matmuls).

# %%
sys.path.insert(0, str(ROOT / "benchmarks"))
from decode_split import timing_weight_matmuls, without_weight_traffic  # noqa: E402

rest_real, rest_warm = [], []
with threads.blas_threads(1):
    threads_setting, threads.DECODE_BLAS_THREADS = threads.DECODE_BLAS_THREADS, 1
    for rep in range(3):
        for traffic in (True, False):
            pc = PromptCache(model, len(PROMPT) + N + 1)
            pc.extend(PROMPT)
            with (timing_weight_matmuls() if traffic else without_weight_traffic()) as timer:
                t0 = time.perf_counter()
                for i in range(N):
                    pc.extend([100 + i])
                rest = (time.perf_counter() - t0 - timer.seconds) / N  # (no time in matmuls without traffic)
            (rest_real if traffic else rest_warm).append(rest)
    threads.DECODE_BLAS_THREADS = threads_setting
print(f"everything but the weight matmuls, 1 thread, {len(PROMPT)} tokens of context (best of 3): "
      f"{1e3 * min(rest_real):.1f} ms inside real steps, {1e3 * min(rest_warm):.1f} ms with no weights read")

# %% [markdown]
# ## 3. Each trick, before and after
#
# Every row decodes the same N greedy tokens and checks they are identical to the baseline.

# %%
def decode(n=N, grad=False):
    """Greedy-decode n tokens after PROMPT; return (tokens, decode tokens/s)."""
    caches = model.new_cache(1, len(PROMPT) + n + 1)
    mode = lt.enable_grad() if grad else lt.no_grad()  # grad: build the autograd graph, as in training
    with mode, threads.blas_threads(1):  # the prompt (not timed) on one thread: two stall on a busy machine
        logits = model(np.asarray([PROMPT]), cache=caches, logits_to_keep=1).numpy()[0, -1]
    with mode:
        out = []
        t0 = time.perf_counter()
        for _ in range(n):
            tok = int(np.argmax(logits))
            out.append(tok)
            with threads.decode_threads():
                logits = model(np.asarray([[tok]]), cache=caches, logits_to_keep=1).numpy()[0, -1]
    return out, n / (time.perf_counter() - t0)


def sdpa_composed(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, enable_gqa=False):
    """Lesson 03's five steps as composed Tensor ops (autograd would derive the backward): the
    "before" of attention-as-one-op. Decode only (one query sees every key), GQA by broadcasting."""
    B, H, Tq, Dh = q.shape
    if Tq > 1 or attn_mask is not None:  # the prompt (not timed): the library's version
        return lt.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal,
                                                             enable_gqa=enable_gqa)
    Hkv = k.shape[1]
    q = q.reshape(B, Hkv, H // Hkv, Tq, Dh) * Dh ** -0.5  # [B, Hkv, G, 1, Dh]
    scores = q @ k.unsqueeze(2).transpose(-2, -1)  # [B, Hkv, G, 1, Tk]
    e = (scores - scores.max(-1, keepdim=True)).exp()
    weights = e / e.sum(-1, keepdim=True)
    return (weights @ v.unsqueeze(2)).reshape(B, H, Tq, Dh)


def measure(label, fused_on=True, n_threads="auto", grad=False, sdpa=None):
    from litetorch.nn import attention
    old = (fused.ENABLED, threads.DECODE_BLAS_THREADS, attention.scaled_dot_product_attention)
    fused.ENABLED, threads.DECODE_BLAS_THREADS = fused_on, n_threads
    attention.scaled_dot_product_attention = sdpa or old[2]
    model.requires_grad_(grad)
    try:
        toks, tps = decode(grad=grad)
    finally:
        fused.ENABLED, threads.DECODE_BLAS_THREADS, attention.scaled_dot_product_attention = old
        model.requires_grad_(False)
    return label, toks, tps


model.requires_grad_(False)
variants = [("baseline: no_grad, fused, threads measured (auto)", {}),
            ("unfused Q/K/V and gate/up", dict(fused_on=False)),
            ("attention as composed Tensor ops", dict(sdpa=sdpa_composed)),
            ("decode pinned to 1 BLAS thread", dict(n_threads=1)),
            ("decode with the BLAS default (all threads)", dict(n_threads=None)),
            ("autograd graph recorded (requires_grad)", dict(grad=True))]
# One decode to warm up; then 5 rounds, each variant once per round (a slow minute hits all of them
# alike), and each variant's median over the rounds.
measure(*variants[0])
rounds = [[measure(label, **kw) for label, kw in variants] for _ in range(5)]
rows = [(label, rounds[0][i][1], float(np.median([r[i][2] for r in rounds])))
        for i, (label, _) in enumerate(variants)]
ref = rows[0][1]
print(f"{'variant':<45} {'tok/s':>8} {'vs baseline':>12}  tokens identical")
for i, (label, toks, tps) in enumerate(rows):
    same = all(r[i][1] == ref for r in rounds)
    print(f"{label:<45} {tps:8.1f} {tps / rows[0][2]:11.2f}x  {same}")
    assert same, f"{label}: tokens differ from the baseline"
print("(median of 5 rounds after a warm-up decode; the numbers vary by machine and with its load)")
print(f"baseline = {100 * rows[0][2] * gemv:.0f}% of the GEMV bound")

# %% [markdown]
# Fewer steps per layer: count the tensor ops (graph nodes, each a few NumPy calls) one decode
# step makes. The fused path runs Q/K/V as one matmul, splits it into all its heads with one
# reshape and rotates the q and k heads with one RoPE call; the unfused path is the definition.

# %%
def ops_per_step(fused_on: bool) -> int:
    made, plain = [0], lt.Tensor._make

    def counting(*a):
        made[0] += 1
        return plain(*a)

    old, fused.ENABLED = fused.ENABLED, fused_on
    caches = model.new_cache(1, len(PROMPT) + 2)
    try:
        with lt.no_grad():
            model(np.asarray([PROMPT]), cache=caches, logits_to_keep=1)
            lt.Tensor._make = staticmethod(counting)
            model(np.asarray([[PROMPT[0]]]), cache=caches, logits_to_keep=1)
    finally:
        lt.Tensor._make, fused.ENABLED = staticmethod(plain), old
    return made[0]


n_fused, n_plain = ops_per_step(True), ops_per_step(False)
layers = len(model.model.layers)
print(f"tensor ops per decode token: fused {n_fused} ({n_fused / layers:.1f} per layer), "
      f"unfused {n_plain} ({n_plain / layers:.1f} per layer)")
assert n_fused < n_plain

# %% [markdown]
# ## 4. The KV cache: cost per token against context length

# %%
def median_seconds(step, runs=5):
    """step() once to warm up, then the median of `runs` timed calls."""
    step()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cached_step(pc, L, token):
    pc.crop(L)  # forget the previous call's token: every timed step sees L cached positions
    pc.extend([token])


sweep = []
# One BLAS thread for both: on a busy machine two threads stretched the recomputed 1024-token forward
# to 25 s (4 s on one thread, same machine); the curves' shapes are the point, not the threads.
threads_setting, threads.DECODE_BLAS_THREADS = threads.DECODE_BLAS_THREADS, 1
with threads.blas_threads(1):
    for L in (16, 64, 256, 1024):
        ctx = (PROMPT * 8)[:L]
        pc = PromptCache(model, L + 1)
        pc.extend(ctx)
        cached = median_seconds(lambda: cached_step(pc, L, ctx[0]))
        with lt.no_grad():
            uncached = median_seconds(lambda: model(np.asarray([ctx]), logits_to_keep=1))
        sweep.append((L, cached, uncached))
        print(f"context {L:5d}: {1e3 * cached:7.1f} ms/token with the cache, {1e3 * sweep[-1][2]:8.1f} ms without")
threads.DECODE_BLAS_THREADS = threads_setting
# A measurement, not an assertion (no test asserts a time: a busy machine would make it flaky).
print("(1 BLAS thread; median of 5 after a warm-up; the numbers vary by machine and with its load)")
print(f"with the cache, a step at {sweep[-1][0]} tokens costs {sweep[-1][1] / sweep[0][1]:.2f}x a step at {sweep[0][0]}")

fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
a.barh([r[0] for r in rows][::-1], [r[2] for r in rows][::-1], color="tab:blue")
a.axvline(1 / gemv, color="k", ls="--", label="GEMV bound")
a.set_xlabel("decode tokens/s")
a.legend()
a.set_title("each trick, measured")
Ls = [s[0] for s in sweep]
b.plot(Ls, [1e3 * s[1] for s in sweep], "o-", label="KV cache")
b.plot(Ls, [1e3 * s[2] for s in sweep], "s--", label="no cache (recompute all)")
b.set_xscale("log", base=2)
b.set_yscale("log")
b.set_xlabel("context length")
b.set_ylabel("ms per new token")
b.legend()
b.set_title("decode cost vs context")
fig.tight_layout()
fig.savefig(OUT / "22-where-the-time-goes.png", dpi=110)
print("saved", OUT / "22-where-the-time-goes.png")
