# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 24 — The gated delta rule in chunks, and Qwen3-Next's GatedDeltaNet layer
#
# The recurrence of lesson 23 is T small sequential steps. Unrolling it over a chunk of C tokens
# turns the dependence between the corrections u_i into one unit lower-triangular system per
# chunk (the UT transform), solved with matmuls; only T/C steps stay sequential. We check that
# the chunked form gives the recurrence's numbers for every chunk size, look inside one chunk,
# time both forms, and then run the full Qwen3-Next layer against HF's: projections, short
# causal conv, gates, the rule, the gated norm, and a decode cache whose size never grows.
# Lesson: `lessons/24-gated-deltanet-in-chunks.md`.

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
import litetorch.nn.functional as F  # noqa: E402
from litetorch import nn  # noqa: E402
from litetorch.nn.delta_rule import unit_lower_inverse  # noqa: E402
from litetorch.nn.gated_deltanet import softplus  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)

try:
    import torch
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next import modeling_qwen3_next as hf
except ImportError:
    torch = hf = None
    print("SKIP: PyTorch or a transformers with Qwen3-Next is not installed, so the cells comparing with HF "
          "print a message and do nothing. (pip install torch==2.13.0 transformers)")


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def inputs(B, T, Hk, Hv, Dk, Dv, dtype, seed):
    r = np.random.default_rng(seed)
    q, k = r.standard_normal((B, T, Hk, Dk)), r.standard_normal((B, T, Hk, Dk))
    v = r.standard_normal((B, T, Hv, Dv))
    g, beta = np.log(r.uniform(0.6, 1.0, (B, T, Hv))), r.uniform(0, 1, (B, T, Hv))
    return [a.astype(dtype) for a in (q, k, v, g, beta)]


# %% [markdown]
# ## 1. Every chunk size gives the recurrence's numbers
#
# T = 50 tokens, chunk sizes from 1 (one token per chunk) to 64 (> T: one chunk, shrunk to T).
# 50 is not a multiple of most of them: the last chunk is padded with tokens that do nothing.

# %%
q, k, v, g, beta = inputs(2, 50, 2, 4, 8, 6, np.float64, seed=0)
ref, ref_state = F.gated_delta_rule(q, k, v, g, beta, use_qk_l2norm=True)
worst = 0.0
for C in (1, 2, 3, 7, 16, 50, 64):
    out, state = F.gated_delta_rule(q, k, v, g, beta, chunk_size=C, use_qk_l2norm=True)
    e = max(np.abs(out.data - ref.data).max(), np.abs(state.data - ref_state.data).max())
    worst = max(worst, e)
    print(f"chunk {C:2d}: max abs difference from the recurrence {e:.1e} (float64)")
assert worst < 1e-10

if hf is None:
    print("SKIP: HF comparison")
else:
    q32, k32, v32, g32, b32 = inputs(2, 50, 2, 4, 8, 6, np.float32, seed=1)
    t_in = [torch.from_numpy(a) for a in (q32, k32, v32, g32, b32)]
    for C in (16, 64):
        ref_o, ref_s = hf.torch_chunk_gated_delta_rule(*t_in, chunk_size=C, output_final_state=True,
                                                       use_qk_l2norm_in_kernel=True)
        out, state = F.gated_delta_rule(q32, k32, v32, g32, b32, chunk_size=C, use_qk_l2norm=True)
        print(f"chunk {C}: vs HF torch_chunk_gated_delta_rule: output {rel(out.data, ref_o):.1e}, "
              f"state {rel(state.data, ref_s):.1e} relative (float32)")
        assert rel(out.data, ref_o) < 1e-5 and rel(state.data, ref_s) < 1e-5

# %% [markdown]
# ## 2. Inside one chunk
#
# Three C × C matrices do the work (C = 16, one head): the pairwise decays e^{G_i − G_j} (zero
# above the diagonal: the future), the strictly lower A = β_i (k_i·k_j) e^{G_i − G_j} that couples
# each correction to the earlier ones, and T = (I + A)⁻¹, which unrolls those couplings — the UT
# transform. T is lower-triangular too, and its off-diagonal mass decays away from the diagonal.

# %%
C = 16
q1, k1, v1, g1, b1 = inputs(1, C, 1, 1, 8, 8, np.float64, seed=2)
kn = k1[0, :, 0] / np.linalg.norm(k1[0, :, 0], axis=-1, keepdims=True)  # [C, Dk], l2-normalized
G = np.cumsum(g1[0, :, 0])  # [C]
decay = np.where(np.tril(np.ones((C, C))) > 0, np.exp(G[:, None] - G[None, :]), 0.0)
A = np.tril(b1[0, :, 0][:, None] * (kn @ kn.T) * decay, -1)
T_inv = unit_lower_inverse(lt.tensor(A)).data
assert np.abs(T_inv - np.linalg.inv(np.eye(C) + A)).max() < 1e-12

fig, axes = plt.subplots(1, 3, figsize=(9.5, 3.2))
for ax, M, title in zip(axes, (decay, A, T_inv), ("decay e^(G_i − G_j)", "A (strictly lower)", "T = (I + A)⁻¹")):
    lim = np.abs(M).max()
    im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("j (earlier token)", fontsize=8)
    ax.set_ylabel("i", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
fig.suptitle("One chunk of 16 tokens, one head", fontsize=10)
fig.tight_layout()
fig.savefig(OUT / "24-inside-a-chunk.png", dpi=110)
print("saved", OUT / "24-inside-a-chunk.png")

# %% [markdown]
# ## 3. Recurrent vs chunked: time against T
#
# One head group of Qwen3-Next's shape cut down (4 value heads, Dk = Dv = 64), float32, no_grad,
# one BLAS thread (many small matmuls on two threads stall when another process is busy).
# The recurrence runs T Python-level steps; the chunked form T/C steps of bigger matmuls.
# Timings are this machine's, whatever else is running on it: the slopes are the point.

# %%
try:
    from threadpoolctl import threadpool_limits
except ImportError:  # timings then use NumPy's default threads
    from contextlib import nullcontext as threadpool_limits

Ts = [16, 64, 256, 1024]
forms = {"recurrent (token by token)": None, "chunked, C = 16": 16, "chunked, C = 64": 64}
times = {name: [] for name in forms}
with lt.no_grad(), threadpool_limits(1):
    for T in Ts:
        x = inputs(1, T, 4, 4, 64, 64, np.float32, seed=T)
        for name, C in forms.items():
            best = np.inf
            for _ in range(2):
                t0 = time.perf_counter()
                F.gated_delta_rule(*x, chunk_size=C, use_qk_l2norm=True)
                best = min(best, time.perf_counter() - t0)
            times[name].append(best * 1e3)
        print(f"T = {T:5d}: " + "   ".join(f"{name} {times[name][-1]:7.1f} ms" for name in forms))

fig, ax = plt.subplots(figsize=(6, 3.4))
for name, ms in times.items():
    ax.loglog(Ts, ms, "o-", label=name)
ax.set_xlabel("tokens T")
ax.set_ylabel("ms (best of 2)")
ax.set_title("gated_delta_rule, 4 heads of 64 x 64, float32, 1 thread", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "24-recurrent-vs-chunked.png", dpi=110)
print("saved", OUT / "24-recurrent-vs-chunked.png")

# %% [markdown]
# ## 4. The full layer against HF's `Qwen3NextGatedDeltaNet`
#
# A tiny random `Qwen3NextConfig` (hidden 64, 2 key heads and 8 value heads of dim 16, conv kernel
# 4). Its `state_dict()` loads into `nn.GatedDeltaNet` as it is. Then: prefill in one call, and the
# same tokens as a 7-token prompt followed by one-token decode steps with a `DeltaNetCache`.

# %%
Cm, Hk, Hv, Dk, Dv, K = 64, 2, 8, 16, 16, 4
layer = nn.GatedDeltaNet(Cm, Hk, Hv, Dk, Dv, conv_kernel_size=K, eps=1e-6, chunk_size=64,
                         generator=lt.Generator(0))
x = np.random.default_rng(3).standard_normal((1, 40, Cm)).astype(np.float32)
if hf is None:
    print("SKIP: HF comparison (the layer keeps its own random weights)")
else:
    config = Qwen3NextConfig(hidden_size=Cm, linear_num_key_heads=Hk, linear_num_value_heads=Hv,
                             linear_key_head_dim=Dk, linear_value_head_dim=Dv, linear_conv_kernel_dim=K,
                             num_hidden_layers=1, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    hf_layer = hf.Qwen3NextGatedDeltaNet(config, layer_idx=0)
    layer.load_state_dict(hf_layer.state_dict())
    ref = hf_layer(torch.from_numpy(x)).detach().numpy()
    e = rel(layer(lt.tensor(x)).data, ref)
    print(f"GatedDeltaNet vs HF, 40 tokens at once: {e:.1e} relative (float32)")
    assert e < 1e-5

with lt.no_grad():
    full = layer(lt.tensor(x)).data
    cache = layer.make_cache(1)
    outs = [layer(lt.tensor(x[:, :7]), cache).data]
    for t in range(7, 40):
        outs.append(layer(lt.tensor(x[:, t:t + 1]), cache).data)  # the same lines, T = 1
e = rel(np.concatenate(outs, axis=1), full)
print(f"prompt of 7 + 33 decode steps vs one call: {e:.1e} relative (float32); cache: {cache}")
assert e < 1e-5

# %% [markdown]
# ## 5. Decay per head
#
# g = −exp(A_log) · softplus(a + dt_bias) is Mamba2's discretization: A > 0 a decay rate per head,
# Δ = softplus(a + dt_bias) > 0 a step that depends on the token, a_t = exp(−A Δ). A head's
# memory half-life is ln 2 / |g| tokens. HF initializes A uniformly in [0.01, 16] and dt_bias = 1,
# so Δ ≈ softplus(1) = 1.31 at a = 0: the half-life is ln 2 / (1.31 A), from ~53 tokens at
# A = 0.01 down to a fraction of a token at A = 16. Most heads of a fresh layer forget within a
# token or two; training moves A and dt_bias (and a gives every token its own step).

# %%
with lt.no_grad():
    ba = layer.in_proj_ba(lt.tensor(x)).reshape(1, 40, Hk, 2 * (Hv // Hk))  # HF's layout: [b | a] per key head
    a = ba[..., Hv // Hk:].reshape(1, 40, Hv)  # [1, 40, Hv]
    g = (-layer.A_log.exp() * softplus(a + layer.dt_bias)).data[0]  # [40, Hv]
A = np.exp(layer.A_log.data)
half_life = np.log(2.0) / -g.mean(axis=0)
for h in np.argsort(A):
    print(f"value head {h}: A = {A[h]:6.2f}   mean decay a_t = {np.exp(g[:, h]).mean():.3f}   "
          f"half-life {half_life[h]:6.2f} tokens")
assert (g <= 0).all()

A_grid = np.logspace(-2, np.log10(16), 100)
fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4))
axes[0].loglog(A_grid, np.log(2.0) / (A_grid * np.log1p(np.e)), label="a = 0, dt_bias = 1")
axes[0].loglog(A, half_life, "o", label="this layer's heads (mean over 40 tokens)")
axes[0].set_xlabel("A = exp(A_log)  (HF init: uniform in [0.01, 16])")
axes[0].set_ylabel("half-life (tokens)")
axes[0].legend(fontsize=8)
order = np.argsort(A)
axes[1].boxplot([np.exp(g[:, h]) for h in order])
axes[1].set_xticks(range(1, Hv + 1), [f"{A[h]:.2g}" for h in order], fontsize=7)
axes[1].set_xlabel("value head, by its A")
axes[1].set_ylabel("per-token decay a_t = exp(g_t)")
fig.suptitle("How fast each head forgets (random init)", fontsize=10)
fig.tight_layout()
fig.savefig(OUT / "24-decay-per-head.png", dpi=110)
print("saved", OUT / "24-decay-per-head.png")

# %% [markdown]
# ## 6. The cache does not grow
#
# A DeltaNetCache after 10 tokens and after 2,000 tokens: the same two arrays. A softmax layer of
# the same width (8 heads of 16, no GQA) would cache 2 · 8 · 16 floats per token.

# %%
long_x = np.random.default_rng(4).standard_normal((1, 2000, Cm)).astype(np.float32)
with lt.no_grad():
    short, long = layer.make_cache(1), layer.make_cache(1)
    layer(lt.tensor(long_x[:, :10]), short)
    layer(lt.tensor(long_x), long)
kv_bytes = 2 * 8 * 16 * 4
print(f"after {short.length} tokens: {short.nbytes:,} bytes; after {long.length}: {long.nbytes:,} bytes "
      f"(a KV cache of the same width: {10 * kv_bytes:,} and {2000 * kv_bytes:,} bytes)")
assert short.nbytes == long.nbytes and np.isfinite(long.recurrent_state).all()
