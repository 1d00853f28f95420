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
from litetorch.nn.module import split_fused_names
from litetorch.runtime import Runtime

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
# to the embedding), all float32. (litetorch stores Q/K/V as one `qkv_proj` and gate/up as one
# `gate_up_proj`; the bound is taken over the checkpoint's seven matrices per layer, row views of those.)

# %%
mats = [w for w in split_fused_names(model, {n: p.data for n, p in model.named_parameters()}).values() if w.ndim == 2]
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
pc = PromptCache(model, len(PROMPT) + 64)  # the default runtime: blocked prefill attention, measured decode threads
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
layers = [(l.input_layernorm.weight.data, l.self_attn.qkv_proj.weight.data, l.self_attn.o_proj.weight.data,
           l.post_attention_layernorm.weight.data, l.mlp.gate_up_proj.weight.data, l.mlp.down_proj.weight.data)
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
for n in (1, 2):  # both pinned to the same BLAS thread count, compared with the bound at that count
    pc = PromptCache(model, len(PROMPT) + N + 1, runtime=Runtime(decode_threads=n))  # the runtime pins decode
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

# %% [markdown]
# ### The matmuls make the small ops slower
# Each weight matmul streams megabytes of weights through the caches, so the small ops after it
# find their data (and NumPy's and Python's) evicted. Put a stored output of the right shape in
# place of every weight matmul (no weights read; the logits become meaningless) and time the same
# steps: what is left is "everything else" with warm caches. Compare it with "everything else"
# inside real steps (step time minus the time inside the matmuls).

# %%
from litetorch.bench.decode_split import timing_weight_matmuls, without_weight_traffic  # noqa: E402

rest_real, rest_warm = [], []
with threads.blas_threads(1):
    for rep in range(3):
        for traffic in (True, False):
            pc = PromptCache(model, len(PROMPT) + N + 1, runtime=Runtime(decode_threads=1))
            pc.extend(PROMPT)
            with (timing_weight_matmuls() if traffic else without_weight_traffic()) as timer:
                t0 = time.perf_counter()
                for i in range(N):
                    pc.extend([100 + i])
                rest = (time.perf_counter() - t0 - timer.seconds) / N  # (no time in matmuls without traffic)
            (rest_real if traffic else rest_warm).append(rest)
print(f"everything but the weight matmuls, 1 thread, {len(PROMPT)} tokens of context (best of 3): "
      f"{1e3 * min(rest_real):.1f} ms inside real steps, {1e3 * min(rest_warm):.1f} ms with no weights read")

# %% [markdown]
# ## 3. Each trick, before and after
#
# **Decode, whole steps.** The runtime's choices and autograd: every row decodes the same N greedy
# tokens, checked identical to the baseline.

# %%
def decode(runtime=None, grad=False, n=N):
    """Greedy-decode n tokens after PROMPT; return (tokens, decode tokens/s). grad=True runs the model
    itself (its definition, no runtime) with the autograd graph recorded, on 1 BLAS thread, as training would."""
    with threads.blas_threads(1):  # the prompt (not timed) on one thread: two stall on a busy machine
        pc = PromptCache(model, len(PROMPT) + n + 1, runtime=runtime or Runtime(decode_threads=1))
        logits = pc.extend(PROMPT)[-1]
    out, t0 = [], time.perf_counter()
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        if grad:
            with lt.enable_grad(), threads.blas_threads(1):
                logits = model.logits(np.asarray([[out[-1]]]), pc.caches, 1).data[0, -1]
        else:
            logits = pc.extend([out[-1]])[-1]
    return out, n / (time.perf_counter() - t0)


variants = [("baseline: the default runtime (threads measured)", dict(runtime=Runtime())),
            ("decode pinned to 1 BLAS thread", dict(runtime=Runtime(decode_threads=1))),
            ("decode with the BLAS default (all threads)", dict(runtime=Runtime(decode_threads=None))),
            ("1 thread, autograd graph recorded", dict(grad=True))]
# One decode to warm up; then 5 rounds, each variant once per round (a slow minute hits all of them
# alike), and each variant's median over the rounds.
decode()
model.requires_grad_(True)  # (only the grad variant records a graph: the others run under no_grad)
rounds = [[(label, *decode(**kw)) for label, kw in variants] for _ in range(5)]
model.requires_grad_(False)
rows = [(label, rounds[0][i][1], float(np.median([r[i][2] for r in rounds])))
        for i, (label, _) in enumerate(variants)]
ref = rows[0][1]
print(f"{'variant':<50} {'tok/s':>8} {'vs baseline':>12}  tokens identical")
for i, (label, toks, tps) in enumerate(rows):
    same = all(r[i][1] == ref for r in rounds)
    print(f"{label:<50} {tps:8.1f} {tps / rows[0][2]:11.2f}x  {same}")
    assert same, f"{label}: tokens differ from the baseline"
print("(median of 5 rounds after a warm-up decode; the numbers vary by machine and with its load)")
print(f"baseline = {100 * rows[0][2] * gemv:.0f}% of the GEMV bound")

# %% [markdown]
# **Tricks that are definitions**, measured on their own (one BLAS thread, median of 7 after a warm-up):
# one matmul for Q/K/V and one for gate/up instead of five, and attention as one op instead of
# lesson 03's steps composed from Tensor ops (autograd would derive the backward), for one decode
# step's 30 layers at 256 tokens of context.

# %%
def median_ms(fn, runs=7):
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def sdpa_composed(q, k, v):
    """Decode attention (one query sees every key) as composed Tensor ops, GQA by broadcasting."""
    B, H, Tq, Dh = q.shape
    Hkv = k.shape[1]
    q = q.reshape(B, Hkv, H // Hkv, Tq, Dh) * Dh ** -0.5  # [B, Hkv, G, 1, Dh]
    scores = q @ k.unsqueeze(2).transpose(-2, -1)  # [B, Hkv, G, 1, Tk]
    e = (scores - scores.max(-1, keepdim=True)).exp()
    return ((e / e.sum(-1, keepdim=True)) @ v.unsqueeze(2)).reshape(B, H, Tq, Dh)


xr = np.random.default_rng(0).standard_normal((1, C)).astype(np.float32)
fused_w = [(l.self_attn.qkv_proj.weight.data, l.mlp.gate_up_proj.weight.data) for l in model.model.layers]
parts_w = [[w for n, w in split_fused_names(l, {n: p.data for n, p in l.named_parameters()}).items()
            if n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight"))]
           for l in model.model.layers]  # the row views of q, k, v, gate and up
assert all(len(p) == 5 for p in parts_w)
qd = lt.tensor(np.random.default_rng(1).standard_normal((1, H, 1, Dh)).astype(np.float32))
kd, vd = (lt.tensor(np.random.default_rng(s).standard_normal((1, Hkv, len(PROMPT), Dh)).astype(np.float32))
          for s in (2, 3))
with threads.blas_threads(1), lt.no_grad():
    t_fused = median_ms(lambda: [(xr @ a.T, xr @ b.T) for a, b in fused_w])
    t_parts = median_ms(lambda: [[xr @ w.T for w in ws] for ws in parts_w])
    t_one = median_ms(lambda: [lt.nn.functional.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True)
                               for _ in range(30)])
    t_composed = median_ms(lambda: [sdpa_composed(qd, kd, vd) for _ in range(30)])
one = lt.nn.functional.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True).data
assert np.abs(sdpa_composed(qd, kd, vd).data - one).max() <= 1e-5 * np.abs(one).max()
print(f"Q/K/V and gate/up per decode step: 2 fused matmuls per layer {t_fused:.2f} ms, 5 separate {t_parts:.2f} ms "
      f"({t_parts / t_fused:.2f}x)")
print(f"decode attention, 30 layers at {len(PROMPT)} tokens: one op {t_one:.2f} ms, composed Tensor ops "
      f"{t_composed:.2f} ms ({t_composed / t_one:.2f}x)")

# %% [markdown]
# **Prefill** (the runtime): a 512-token prompt through the definition as it is (one call, full
# [512, 512] scores per head), with the runtime's attention in blocks of 128 queries (the matmuls
# still see all 512 rows), and with the whole model in pieces of 256 tokens; one BLAS thread. The
# last position's logits must agree.

# %%
long_prompt = (PROMPT * 2)[:512]
prefill = {}
variants = {"definition (one call, full scores)": dict(attention_block=None),
            "attention in blocks of 128 (the default)": dict(attention_block=128),
            "model in pieces of 256 tokens, blocks of 128": dict(prefill_chunk=256)}
for name, kw in variants.items():
    def run(name=name, kw=kw):
        pc = PromptCache(model, 513, runtime=Runtime(decode_threads=1, **kw))
        prefill[name] = pc.extend(long_prompt)[-1]
    with threads.blas_threads(1):
        ms = median_ms(run, runs=3)
    print(f"prefill of 512 tokens, {name:44s} {ms:7.1f} ms ({512e3 / ms:5.0f} tok/s)")
reference = prefill["definition (one call, full scores)"]
for name in variants:
    err = np.abs(prefill[name] - reference).max() / np.abs(reference).max()
    assert err <= 1e-5, (name, err)
print("(median of 3 after a warm-up; the numbers vary by machine and with its load)")

# %% [markdown]
# Fewer steps per layer: count the tensor ops (graph nodes, each a few NumPy calls) one decode
# step makes. The fused projection gives Q/K/V in one matmul, one reshape splits it into all its
# heads, and one RoPE call rotates the q and k heads side by side.

# %%
made, plain = [0], lt.Tensor._make


def counting(*a):
    made[0] += 1
    return plain(*a)


caches = model.new_cache(1, len(PROMPT) + 2)
try:
    with lt.no_grad():
        model(np.asarray([PROMPT]), cache=caches, logits_to_keep=1)
        lt.Tensor._make = staticmethod(counting)
        model(np.asarray([[PROMPT[0]]]), cache=caches, logits_to_keep=1)
finally:
    lt.Tensor._make = staticmethod(plain)
n_layers = len(model.model.layers)
print(f"tensor ops per decode token: {made[0]} ({made[0] / n_layers:.1f} per layer)")

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
with threads.blas_threads(1):
    for L in (16, 64, 256, 1024):
        ctx = (PROMPT * 8)[:L]
        pc = PromptCache(model, L + 1, runtime=Runtime(decode_threads=1))
        pc.extend(ctx)
        cached = median_seconds(lambda: cached_step(pc, L, ctx[0]))
        with lt.no_grad():
            uncached = median_seconds(lambda: model(np.asarray([ctx]), logits_to_keep=1))
        sweep.append((L, cached, uncached))
        print(f"context {L:5d}: {1e3 * cached:7.1f} ms/token with the cache, {1e3 * sweep[-1][2]:8.1f} ms without")
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
