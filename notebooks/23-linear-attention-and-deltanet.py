# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 23 — Linear attention, the delta rule and the gated delta rule
#
# Softmax attention keeps every past key and value. Drop the softmax and the sum over the past
# regroups into one matrix S, updated once per token: attention becomes an RNN whose state does
# not grow. We check that the recurrence equals the quadratic form, see what the fixed-size state
# costs against a KV cache, watch plain linear attention's memory fill up with interference, and
# fix it with the delta rule (write only the correction) and a decay gate (forget). Finally we
# compare `F.gated_delta_rule` with HF's Qwen3-Next reference.
# Lesson: `lessons/23-linear-attention-and-deltanet.md`.

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
from litetorch.nn.delta_rule import linear_attention_recurrent  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)

try:
    import torch
    from transformers.models.qwen3_next import modeling_qwen3_next as hf
except ImportError:
    torch = hf = None
    print("SKIP: PyTorch or a transformers with Qwen3-Next is not installed, so the cells comparing with HF "
          "print a message and do nothing. (pip install torch==2.13.0 transformers)")

# %% [markdown]
# ## 1. Linear attention is an RNN
#
# Without the softmax, o_t = Σ_{i≤t} (q_t·k_i) v_i. Computed all at once that is (Q Kᵀ ⊙ causal) V,
# T×T scores like softmax attention. Regrouped, o_t = (Σ_{i≤t} k_i v_iᵀ)ᵀ q_t = S_tᵀ q_t with
# S_t = S_{t−1} + k_t v_tᵀ: one [Dk, Dv] matrix carried from token to token.

# %%
rng = np.random.default_rng(0)
B, H, T, Dk, Dv = 1, 2, 12, 8, 8
q, k, v = (rng.standard_normal((B, H, T, d)) for d in (Dk, Dk, Dv))
out, S = linear_attention_recurrent(lt.tensor(q), lt.tensor(k), lt.tensor(v))
quadratic = (q @ np.swapaxes(k, -1, -2) * np.tril(np.ones((T, T)))) @ v  # (Q K^T * causal) V
err = np.abs(out.data - quadratic).max()
print(f"recurrence vs quadratic form: max abs error {err:.1e} (float64); final state S: {S.shape}")
assert err < 1e-12
assert np.abs(S.data - np.swapaxes(k, -1, -2) @ v).max() < 1e-12  # S_T = K^T V

# %% [markdown]
# ## 2. The state replaces the KV cache
#
# A softmax layer caches 2·Hkv·Dh numbers per token; a linear-attention layer keeps Hv·Dk·Dv
# numbers (plus, in Qwen3-Next, the last 3 inputs of a short convolution) whatever the length.
# The shapes below are the defaults of HF's `Qwen3NextConfig` (the 80B-A3B model): full attention
# with 2 KV heads of dim 256; linear attention with 32 value heads of 128 × 128.

# %%
kv_per_token = 2 * 2 * 256 * 4  # K and V, 2 KV heads, head dim 256, float32 bytes
conv_dim = 2 * 16 * 128 + 32 * 128  # q, k (16 heads of 128) and v (32 heads of 128) channels
state_bytes = (32 * 128 * 128 + conv_dim * 3) * 4  # recurrent state + conv state, float32
lengths = np.array([1_000, 4_000, 16_000, 64_000, 262_144])
print(f"full-attention layer: {kv_per_token:,} bytes per token; linear-attention layer: {state_bytes:,} bytes in all")
print(f"break-even at {state_bytes / kv_per_token:.0f} tokens; at 262,144 tokens the KV cache is "
      f"{kv_per_token * 262_144 / state_bytes:.0f}x the state")

fig, ax = plt.subplots(figsize=(6, 3.4))
ax.loglog(lengths, lengths * kv_per_token / 2**20, "o-", label="KV cache of one attention layer")
ax.loglog(lengths, np.full(len(lengths), state_bytes / 2**20), "s-", label="state of one Gated DeltaNet layer")
ax.set_xlabel("tokens in the context")
ax.set_ylabel("MiB (float32)")
ax.set_title("Qwen3-Next shapes: what one layer keeps between tokens", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "23-state-vs-kv-cache.png", dpi=110)
print("saved", OUT / "23-state-vs-kv-cache.png")

# %% [markdown]
# ## 3. A memory that only adds cannot change its mind
#
# Read S as a key → value memory. Take 8 orthonormal keys (Dk = 16) and a stream of 300 writes:
# each token picks one of the keys and a fresh random value. At every step we ask the memory for
# each key that has been written and compare with the value written to it *last*. Linear attention
# returns S_tᵀk = the sum of every value ever written to k: the answer drifts further from the
# current one with every rewrite. The delta rule writes only the correction,
# u_t = β_t (v_t − S_{t−1}ᵀ k_t): with β = 1 the old value is replaced exactly; with β = 0.5 the
# memory moves half way, an average that favours recent writes.

# %%
Dk = Dv = 16
n_keys, T = 8, 300
r = np.random.default_rng(1)
keys = np.linalg.qr(r.standard_normal((Dk, Dk)))[0][:n_keys]  # [8, 16], orthonormal rows
which = r.integers(0, n_keys, T)  # the key each token writes to
vals = r.standard_normal((T, Dv))
latest = np.zeros((n_keys, Dv))
seen = np.zeros(n_keys, dtype=bool)
errors = {"linear attention": [], "delta rule, β = 1": [], "delta rule, β = 0.5": []}
states = {name: None for name in errors}
with lt.no_grad():
    for t in range(T):
        k_t = keys[which[t]][None, None, None, :]  # [B=1, T=1, H=1, Dk]
        v_t = vals[t][None, None, None, :]  # [1, 1, 1, Dv]
        latest[which[t]], seen[which[t]] = vals[t], True
        _, states["linear attention"] = linear_attention_recurrent(
            lt.tensor(k_t), lt.tensor(k_t), lt.tensor(v_t), initial_state=states["linear attention"])
        for name, b in (("delta rule, β = 1", 1.0), ("delta rule, β = 0.5", 0.5)):
            _, states[name] = F.gated_delta_rule(k_t, k_t, v_t, np.zeros((1, 1, 1)), np.full((1, 1, 1), b),
                                                 initial_state=states[name])
        for name, S_t in states.items():
            recalled = keys[seen] @ S_t.data[0, 0]  # ask for every key written so far
            errors[name].append(np.linalg.norm(recalled - latest[seen]) / np.linalg.norm(latest[seen]))
for name, e in errors.items():
    print(f"{name:22s} relative recall error after 10, 100, 300 writes: {e[9]:5.2f} {e[99]:5.2f} {e[-1]:5.2f}")
assert max(errors["delta rule, β = 1"]) < 1e-12  # orthonormal keys and β = 1: exact overwrite
assert errors["linear attention"][-1] > 2.0

fig, ax = plt.subplots(figsize=(6, 3.4))
for name, e in errors.items():
    ax.plot(np.arange(1, T + 1), e, label=name)
ax.set_xlabel("writes so far (8 keys, each rewritten ~37 times)")
ax.set_ylabel("relative error vs the latest values")
ax.set_title("Asking the memory for the value written last", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "23-recall.png", dpi=110)
print("saved", OUT / "23-recall.png")

# %% [markdown]
# ## 4. The state over a long stream: grow, stay bounded, or forget
#
# The state carried from token to token is all a decode step needs, so we feed a 600-token stream
# one token at a time, passing `final_state` back as `initial_state` (exactly what a cache does), and
# watch ‖S_t‖. Linear attention only adds: its norm grows like √t on random data (like t on
# correlated data). The delta rule with unit keys is a contraction plus a bounded write: it stays
# bounded. A decay gate a_t = e^{g_t} keeps it smaller still, and lets a head forget a topic fast.

# %%
T, Dk = 600, 16
r = np.random.default_rng(2)
kq = r.standard_normal((1, T, 1, Dk)).astype(np.float32)
vs = r.standard_normal((1, T, 1, Dk)).astype(np.float32)
beta = np.full((1, T, 1), 0.5, np.float32)
runs = {"linear attention": None, "delta rule (β = 0.5)": np.zeros((1, T, 1), np.float32),
        "gated delta rule (β = 0.5, a = 0.97)": np.full((1, T, 1), np.log(0.97), np.float32)}
norms = {}
with lt.no_grad():
    for name, g in runs.items():
        S, trace = None, []
        for t in range(T):
            if g is None:  # plain linear attention, with unit keys as the others (l2-normalized here)
                k_t = kq[:, t:t + 1] / np.linalg.norm(kq[:, t:t + 1], axis=-1, keepdims=True)  # [1, 1, 1, Dk]
                _, S = linear_attention_recurrent(lt.tensor(k_t), lt.tensor(k_t), lt.tensor(vs[:, t:t + 1]),
                                                  initial_state=S)
            else:
                _, S = F.gated_delta_rule(kq[:, t:t + 1], kq[:, t:t + 1], vs[:, t:t + 1], g[:, t:t + 1],
                                          beta[:, t:t + 1], initial_state=S, use_qk_l2norm=True)
            trace.append(np.linalg.norm(S.data))
        norms[name] = np.array(trace)
        print(f"{name:38s} |S| after 10, 100, 600 tokens: "
              f"{norms[name][9]:6.2f} {norms[name][99]:6.2f} {norms[name][-1]:6.2f}")
assert norms["linear attention"][-1] > 3 * norms["delta rule (β = 0.5)"][-1]

fig, ax = plt.subplots(figsize=(6, 3.4))
for name, n in norms.items():
    ax.plot(np.arange(1, T + 1), n, label=name)
ax.set_xlabel("tokens seen")
ax.set_ylabel("‖S_t‖ (Frobenius)")
ax.set_title("The state's size over a random stream (Dk = Dv = 16)", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "23-state-norm.png", dpi=110)
print("saved", OUT / "23-state-norm.png")

# %% [markdown]
# ## 5. Token by token equals the whole sequence at once
#
# The loop above passed the state along one token at a time. Running all 600 tokens in one call
# gives the same final state: the state *is* the cache.

# %%
g = runs["gated delta rule (β = 0.5, a = 0.97)"]
out_all, S_all = F.gated_delta_rule(kq, kq, vs, g, beta, use_qk_l2norm=True)
err = np.abs(S_all.data - S.data).max() / np.abs(S_all.data).max()
print(f"final state, one call vs 600 one-token calls: {err:.1e} relative (float32)")
assert err < 1e-5

# %% [markdown]
# ## 6. Against HF's Qwen3-Next reference
#
# `F.gated_delta_rule(q, k, v, g, beta, chunk_size=None)` runs litetorch's recurrence; HF's
# `torch_recurrent_gated_delta_rule` is the reference (float32 inside, q scaled by 1/√Dk, optional
# l2-normalization of q and k, value heads grouped over key heads).

# %%
if hf is None:
    print("SKIP: HF comparison (torch/transformers not installed)")
else:
    r = np.random.default_rng(3)
    Bq, Tq, Hk, Hv, Dk, Dv = 2, 40, 2, 4, 16, 12
    qq = r.standard_normal((Bq, Tq, Hk, Dk)).astype(np.float32)
    kk = r.standard_normal((Bq, Tq, Hk, Dk)).astype(np.float32)
    vv = r.standard_normal((Bq, Tq, Hv, Dv)).astype(np.float32)
    gg = np.log(r.uniform(0.8, 1.0, (Bq, Tq, Hv))).astype(np.float32)
    bb = r.uniform(0, 1, (Bq, Tq, Hv)).astype(np.float32)
    S0 = r.standard_normal((Bq, Hv, Dk, Dv)).astype(np.float32)
    ref_o, ref_s = hf.torch_recurrent_gated_delta_rule(*(torch.from_numpy(a) for a in (qq, kk, vv, gg, bb)),
                                                       initial_state=torch.from_numpy(S0), output_final_state=True,
                                                       use_qk_l2norm_in_kernel=True)
    o, s = F.gated_delta_rule(qq, kk, vv, gg, bb, initial_state=S0, use_qk_l2norm=True)
    e_o = np.abs(o.data - ref_o.numpy()).max() / np.abs(ref_o.numpy()).max()
    e_s = np.abs(s.data - ref_s.numpy()).max() / np.abs(ref_s.numpy()).max()
    print(f"vs HF torch_recurrent_gated_delta_rule: output {e_o:.1e}, final state {e_s:.1e} relative (float32)")
    assert e_o < 1e-5 and e_s < 1e-5
