# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 09 — The KV cache
#
# To generate token t, a causal model needs the keys and values of tokens 0..t−1 in every layer —
# and those never change once computed. So we keep them: prefill the prompt once, then feed one
# token per step, append its K/V rows to a preallocated buffer, and attend over everything cached.
# We check that cached decoding equals running the whole sequence at once, time both, and use
# `snapshot`/`restore` to reuse a prefilled system prompt.
# Lesson: `lessons/09-kv-cache.md`.

# %%
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: use the repo next to this notebook
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
import litetorch as lt  # noqa: E402
from litetorch import nn  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. A small Llama-shaped stack
#
# 4 blocks, d_model 128, 8 query heads sharing 2 K/V heads (GQA), RoPE. No embeddings here: the
# "tokens" are random vectors, which is all the blocks see anyway.

# %%
lt.manual_seed(0)
L, C, H, Hkv, Dh = 4, 128, 8, 2, 16
rope = nn.RotaryEmbedding(Dh, base=10000.0)
blocks = [nn.DecoderBlock(C, H, Hkv, hidden=344, rope=rope) for _ in range(L)]


def forward(x, caches=None):
    """x [B, T, C] through every block; with caches, positions continue from caches.length."""
    for i, blk in enumerate(blocks):
        x = blk(x, cache=None if caches is None else caches[i])
    return x


rng = np.random.default_rng(0)
T, prompt = 40, 12
x = rng.standard_normal((1, T, C)).astype(np.float32)

# %% [markdown]
# ## 2. Prefill + decode equals the full forward
#
# The full forward sees all 40 tokens at once with a causal mask. The cached run prefills 12, then
# feeds tokens 12..39 one at a time: each step's input is [1, 1, C], and the cache grows by one.

# %%
with lt.no_grad():
    full = forward(lt.tensor(x)).data
    caches = nn.make_caches(L, 1, Hkv, 64, Dh)
    buffers = [id(c.k) for c in caches]
    outs = [forward(lt.tensor(x[:, :prompt]), caches).data]
    for t in range(prompt, T):
        step = forward(lt.tensor(x[:, t:t + 1]), caches)
        assert step.shape == (1, 1, C) and caches.length == t + 1
        outs.append(step.data)
cached = np.concatenate(outs, axis=1)
rel = np.abs(cached - full).max() / np.abs(full).max()
print(f"cached vs full forward: max error relative to scale {rel:.1e} (float32)")
print(f"cache length {caches.length}, buffers reallocated: {[id(c.k) for c in caches] != buffers}")
assert rel < 1e-5 and [id(c.k) for c in caches] == buffers

# %% [markdown]
# ## 3. What it saves
#
# Without a cache, step t re-runs all t tokens (cost grows with t; the whole generation with t²);
# with a cache, step t runs one token against t cached keys (the projections and the MLP cost
# the same at every step; only the attention dot products grow, and they are cheap).
# Timings on this machine, whatever else is running on it — the shape of the curves is the point.
# Each point is a median over 21 rounds after a warm-up round: the first call of a shape pays for
# first-touch page faults and BLAS start-up, and a single run catches any hiccup of a busy machine.
# BLAS runs on one thread here: many small matmuls on two threads stall badly when another
# process is busy (docs/ARCHITECTURE.md §7).

# %%
try:
    from threadpoolctl import threadpool_limits
except ImportError:  # timings then use NumPy's default threads
    from contextlib import nullcontext as threadpool_limits


def time_ms(step):
    t0 = time.perf_counter()
    step()
    return 1e3 * (time.perf_counter() - t0)


def decode_one(caches, n):
    """Forget the token of the previous call (rows < n stay valid), then feed token n against n cached ones."""
    caches.crop(n)
    forward(lt.tensor(xs[:, n:n + 1]), caches)


lengths = [16, 32, 64, 128, 256]
ROUNDS = 21  # each call takes milliseconds, so many rounds are cheap and make the medians steady
xs = rng.standard_normal((1, max(lengths) + 1, C)).astype(np.float32)
runs = {n: ([], []) for n in lengths}  # n -> (ms without the cache, ms with it), one entry per round
with lt.no_grad(), threadpool_limits(1):
    prefilled = {n: nn.make_caches(L, 1, Hkv, max(lengths) + 8, Dh) for n in lengths}
    for n, caches in prefilled.items():
        forward(lt.tensor(xs[:, :n]), caches)  # prefill (not timed)
    for r in range(1 + ROUNDS):  # round 0 warms up (first calls of each shape) and is dropped; each round
        for n in lengths:  # times every context length, so a slow moment of a busy machine hits all alike
            no_cache_ms = time_ms(lambda: forward(lt.tensor(xs[:, :n + 1])))  # recompute everything for token n
            cache_ms = time_ms(lambda: decode_one(prefilled[n], n))
            if r:
                runs[n][0].append(no_cache_ms)
                runs[n][1].append(cache_ms)
no_cache = [float(np.median(runs[n][0])) for n in lengths]
with_cache = [float(np.median(runs[n][1])) for n in lengths]
for n, a, b in zip(lengths, no_cache, with_cache):
    print(f"context {n:4d}: no cache {a:7.2f} ms/token   with cache {b:6.2f} ms/token")
print(f"(median of {ROUNDS} rounds after a warm-up round; the numbers vary by machine and with whatever else "
      f"runs on it)")

fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(lengths, no_cache, "o-", label="no cache: re-run all tokens")
ax.plot(lengths, with_cache, "s-", label="KV cache: one token")
ax.set_xlabel("tokens already in the context")
ax.set_ylabel("ms for the next token")
ax.set_title(f"{L} blocks, d_model {C}, GQA {H}/{Hkv}, NumPy, no_grad", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "09-cache-speed.png", dpi=110)
print("saved", OUT / "09-cache-speed.png")

# %% [markdown]
# ## 4. Prompt caching with snapshot / restore
#
# A chat starts every conversation with the same system prompt. Prefill it once, `snapshot()`;
# before each new conversation `restore()` — then only the new tokens are computed.

# %%
system = rng.standard_normal((1, 20, C)).astype(np.float32)
turns = [rng.standard_normal((1, 6, C)).astype(np.float32) for _ in range(2)]
with lt.no_grad():
    caches = nn.make_caches(L, 1, Hkv, 64, Dh)
    forward(lt.tensor(system), caches)
    snap = caches.snapshot()
    print(f"snapshot: {snap[0].length} positions, {sum(s.k.nbytes + s.v.nbytes for s in snap):,} bytes copied")
    for i, turn in enumerate(turns):
        caches.restore(snap)
        reused = forward(lt.tensor(turn), caches).data
        fresh = forward(lt.tensor(np.concatenate([system, turn], axis=1))).data[:, 20:]
        err = np.abs(reused - fresh).max() / np.abs(fresh).max()
        print(f"turn {i}: restored-cache output vs from scratch: {err:.1e}; cache length {caches.length}")
        assert err < 1e-5

# %% [markdown]
# ## 5. Errors leave the cache as it was
#
# A cache that would overflow, a tensor of the wrong shape or dtype, a mask of the wrong shape:
# each raises before anything is written.

# %%
attn = blocks[0].self_attn
cache = nn.KVCache(1, Hkv, 8, Dh)
with lt.no_grad():
    attn(lt.randn(1, 6, C), cache=cache)
before = cache.k.copy()
for what, call in (("overflow", lambda: attn(lt.randn(1, 3, C), cache=cache)),
                   ("bad mask", lambda: attn(lt.randn(1, 1, C), attn_mask=np.ones((1, 6), bool), cache=cache)),
                   ("dtype", lambda: cache.append(np.zeros((1, Hkv, 1, Dh)), np.zeros((1, Hkv, 1, Dh))))):
    try:
        with lt.no_grad():
            call()
    except lt.LitetorchError as e:
        print(f"{what:9s} -> {type(e).__name__}: {e}")
    assert len(cache) == 6 and np.array_equal(cache.k, before)
