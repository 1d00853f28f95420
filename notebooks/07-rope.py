# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 07 — Positions: RoPE and the sinusoidal table
#
# Attention by itself does not know word order: shuffle the tokens and each one gets the same
# output. The 2017 transformer *added* a table of sines and cosines to the embeddings. RoPE
# instead *rotates* q and k: pair i of each head turns by the angle p·θᵢ at position p, so q·k
# depends only on the distance between the two tokens. Which coordinates form a pair is a
# convention — "half" (HF) or "interleaved" (Meta, GGUF) — and mixing them up gives a model whose
# first token is right and whose later tokens are nonsense. We see why.
# Lesson: `lessons/07-rope.md`.

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
from litetorch import nn  # noqa: E402
from litetorch.nn.rope import rope_cos_sin, rope_frequencies  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)

try:
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
except ImportError:
    torch = None
    print("SKIP: PyTorch/transformers are not installed, so the cells comparing with HF and torch's "
          "complex numbers print a message and do nothing. (pip install torch==2.13.0 transformers)")

# %% [markdown]
# ## 1. A rotation per pair, a speed per pair
#
# θᵢ = base^(−2i/Dh): pair 0 turns by 1 radian per position, the last pair almost not at all.
# Below, one pair (a, b) at positions 0..40 for three of the 8 pairs of a 16-dim head (drawn on
# circles of different radii so they do not overlap; a rotation never changes the radius).

# %%
Dh, base = 16, 10000.0
theta = rope_frequencies(Dh, base, np.float64)
print("theta_i:", np.array2string(theta, precision=4))
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for radius, i in zip((1.0, 0.7, 0.4), (0, 2, 5)):
    ang = np.arange(41) * theta[i]
    axes[0].plot(radius * np.cos(ang), radius * np.sin(ang), "o-", ms=3, lw=0.6,
                 label=f"pair {i}: θ = {theta[i]:.3g} rad/position")
axes[0].set_aspect("equal")
axes[0].legend(fontsize=7, loc="lower left")
axes[0].set_title("a pair rotated to positions 0..40 (start: right)", fontsize=10)
cos_half, _ = rope_cos_sin(np.arange(64), theta, "half")
cos_int, _ = rope_cos_sin(np.arange(64), theta, "interleaved")
axes[1].imshow(np.concatenate([cos_half, np.full((64, 1), np.nan), cos_int], axis=1).T, aspect="auto",
               cmap="RdBu_r")
axes[1].set_xlabel("position p")
axes[1].set_ylabel("coordinate: half layout (top), interleaved (bottom)")
axes[1].set_title("cos(p·θ) laid out along the head dim", fontsize=10)
fig.tight_layout()
fig.savefig(OUT / "07-rope-rotation.png", dpi=110)
print("saved", OUT / "07-rope-rotation.png")

# %% [markdown]
# ## 2. Only the distance matters
#
# A rotation by p·θ for q and p'·θ for k leaves q·k = f(p − p'). Same q and k, placed at
# (p + 3, p) for several p: the score does not move. And a rotation keeps lengths.

# %%
rng = np.random.default_rng(0)
qv, kv = rng.standard_normal(Dh), rng.standard_normal(Dh)
rope = nn.RotaryEmbedding(Dh, base=base, dtype=np.float64)


def at(vec, p, r=rope):
    return r(lt.tensor(vec.reshape(1, 1, 1, Dh)), offset=p).data.ravel()


scores = [at(qv, p + 3) @ at(kv, p) for p in (0, 1, 10, 100, 1000)]
print("q_{p+3} . k_p for p = 0, 1, 10, 100, 1000:", np.round(scores, 12))
assert np.ptp(scores) < 1e-10
assert abs(np.linalg.norm(at(qv, 123)) - np.linalg.norm(qv)) < 1e-12

# %% [markdown]
# ## 3. Against HF (float32) and the complex-number form (float64)
#
# Meta's Llama writes RoPE with complex numbers: view each pair as a + ib, multiply by e^{ipθ}.

# %%
if torch is None:
    print("SKIP (no PyTorch/transformers): comparison with HF apply_rotary_pos_emb and torch complex")
else:
    cfg = LlamaConfig(hidden_size=128, num_attention_heads=2, rope_theta=100000.0)
    hf_rope = LlamaRotaryEmbedding(cfg)
    ours_inv = rope_frequencies(64, 100000.0)  # float32: the nearest float32 to base^(-2i/Dh)
    # ulps apart = how many float32 values lie between them (positive floats order like their bit patterns)
    ulps = np.abs(ours_inv.view(np.int32).astype(np.int64) - hf_rope.inv_freq.numpy().view(np.int32))
    print(f"theta_i: litetorch vs HF's float32 pow, largest difference {ulps.max():.0f} ulp "
          f"({int((ulps > 0).sum())} of 32 differ; how HF's last bit falls depends on the CPU)")
    assert ulps.max() <= 1
    x = rng.standard_normal((1, 2, 16, 64)).astype(np.float32)

    def max_error_vs_hf(offset):
        cos, sin = hf_rope(torch.tensor(x), torch.arange(offset, offset + 16)[None])
        ref, _ = apply_rotary_pos_emb(torch.tensor(x), torch.tensor(x), cos, sin)
        ours = nn.RotaryEmbedding(64, base=100000.0)(lt.tensor(x), offset=offset)
        return np.abs(ours.data - ref.numpy()).max()

    # One ulp of theta_i moves the angle of position p by about p ulps: nothing at p = 0, visible at 4000.
    err = max_error_vs_hf(0)
    print(f"half vs HF, float32, positions 0..15: max abs error {err:.1e}")
    assert err < 1e-5
    print(f"half vs HF, float32, positions 4000..4015, HF's own theta_i: {max_error_vs_hf(4000):.1e}")
    hf_rope.inv_freq.copy_(torch.from_numpy(ours_inv))  # the same frequencies: only the angles' math is left
    err = max_error_vs_hf(4000)
    print(f"half vs HF, float32, positions 4000..4015, the same theta_i: max abs error {err:.1e}")
    assert err < 1e-5

    x64 = rng.standard_normal((1, 2, 16, 64))
    inv = torch.tensor(rope_frequencies(64, 10000.0, np.float64))
    pos = torch.arange(100, 116, dtype=torch.float64)
    cis = torch.polar(torch.ones(16, 32, dtype=torch.float64), pos[:, None] * inv)
    z = torch.view_as_complex(torch.tensor(x64).reshape(1, 2, 16, 32, 2))
    ref_i = torch.view_as_real(z * cis).flatten(-2).numpy()
    zh = torch.complex(torch.tensor(x64[..., :32]), torch.tensor(x64[..., 32:]))
    ref_h = torch.cat([(zh * cis).real, (zh * cis).imag], -1).numpy()
    for pairing, ref in (("interleaved", ref_i), ("half", ref_h)):
        ours = nn.RotaryEmbedding(64, pairing=pairing)(lt.tensor(x64), offset=100).data
        err = np.abs(ours - ref).max()
        print(f"{pairing:11s} vs complex form, float64: max abs error {err:.1e}")
        assert err < 1e-10

# %% [markdown]
# ## 4. The permutation between the layouts
#
# A GGUF file stores W_q, W_k with rows ordered for interleaved pairs. `unpermute_qk` reorders the
# rows inside each head (evens first, then odds), turning pairs (2i, 2i+1) into (i, i + Dh/2).
# Then half-RoPE on the unpermuted weights computes the *same rotation* as interleaved RoPE on the
# GGUF weights, with the coordinates renamed — and q·k, all attention uses, is identical.

# %%
H, Dh2, C, T = 3, 16, 24, 12
W_hf_q, W_hf_k = rng.standard_normal((H * Dh2, C)), rng.standard_normal((H * Dh2, C))
W_gguf_q, W_gguf_k = nn.permute_qk_to_interleaved(W_hf_q, H), nn.permute_qk_to_interleaved(W_hf_k, H)
assert np.array_equal(nn.unpermute_qk(W_gguf_q, H), W_hf_q)
xs = rng.standard_normal((T, C))


def qk_scores(Wq, Wk, pairing):
    r = nn.RotaryEmbedding(Dh2, pairing=pairing)
    heads = lambda y: lt.tensor(y.reshape(T, H, Dh2).transpose(1, 0, 2)[None].copy())  # [1, H, T, Dh]
    q, k = r(heads(xs @ Wq.T)).data, r(heads(xs @ Wk.T)).data
    return q @ k.transpose(0, 1, 3, 2)


s_gguf = qk_scores(W_gguf_q, W_gguf_k, "interleaved")
s_hf = qk_scores(nn.unpermute_qk(W_gguf_q, H), nn.unpermute_qk(W_gguf_k, H), "half")
s_wrong = qk_scores(W_hf_q, W_hf_k, "interleaved")  # HF weights with the GGUF pairing: the bug
print(f"interleaved(GGUF W) vs half(unpermute(W)): max score diff {np.abs(s_gguf - s_hf).max():.1e}")
print(f"wrong pairing: max score diff {np.abs(s_wrong - s_hf).max():.2f}")
assert np.abs(s_gguf - s_hf).max() < 1e-10

# %% [markdown]
# ## 5. Why a wrong pairing fails *late*
#
# Any pairing is a rotation by position, so scores still depend only on the distance p − p'. At
# distance 0 every rotation cancels: the first token (which sees only itself) is computed
# exactly, and early tokens, which mostly look at near neighbours, are only slightly off. The
# error grows with distance, so the longer the text the more attention goes to the wrong places.

# %%
T2, Dh3, H2 = 256, 64, 2
Wq2, Wk2 = rng.standard_normal((H2 * Dh3, C)), rng.standard_normal((H2 * Dh3, C))
x2 = rng.standard_normal((T2, C))


def scores_for(pairing):
    r = nn.RotaryEmbedding(Dh3, pairing=pairing)
    heads = lambda y: lt.tensor(y.reshape(T2, H2, Dh3).transpose(1, 0, 2)[None].copy())
    q, k = r(heads(x2 @ Wq2.T)).data, r(heads(x2 @ Wk2.T)).data
    return (q @ k.transpose(0, 1, 3, 2))[0]


good, bad = scores_for("half"), scores_for("interleaved")
err = np.abs(good - bad).mean(0) / np.abs(good).mean()
dist = np.subtract.outer(np.arange(T2), np.arange(T2))
by_distance = np.array([err[dist == d].mean() for d in range(T2)])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].plot(by_distance, ".-", ms=3)
axes[0].set_xscale("symlog", linthresh=1)
axes[0].set_xlabel("distance between query and key (p − p')")
axes[0].set_ylabel("mean |score error| / mean |score|")
axes[0].set_title("wrong pairing: exact at distance 0, worse with distance", fontsize=10)
im = axes[1].imshow(np.where(dist >= 0, err, np.nan)[:64, :64], cmap="magma")
axes[1].set_xlabel("key position")
axes[1].set_ylabel("query position")
axes[1].set_title("relative score error (causal part, first 64 tokens)", fontsize=10)
fig.colorbar(im, ax=axes[1], fraction=0.046)
fig.tight_layout()
fig.savefig(OUT / "07-wrong-pairing.png", dpi=110)
print("saved", OUT / "07-wrong-pairing.png")
print("relative error at distance 0, 1, 4, 32, 128:", np.round(by_distance[[0, 1, 4, 32, 128]], 3))
assert by_distance[0] < 1e-12 and by_distance[1] < by_distance[32]

# %% [markdown]
# ## 6. Before RoPE: the sinusoidal table
#
# PE[p, 2i] = sin(p / 10000^(2i/C)), PE[p, 2i+1] = cos(same): the same clocks as RoPE, but added
# to the embedding once, at the bottom of the network.

# %%
pe = nn.sinusoidal_positional_encoding(128, 64)
fig, ax = plt.subplots(figsize=(8, 3.4))
im = ax.imshow(pe.T, aspect="auto", cmap="RdBu_r")
ax.set_xlabel("position p")
ax.set_ylabel("dimension")
ax.set_title("sinusoidal positional encoding (Attention Is All You Need)", fontsize=10)
fig.colorbar(im, ax=ax, fraction=0.03)
fig.tight_layout()
fig.savefig(OUT / "07-sinusoidal.png", dpi=110)
print("saved", OUT / "07-sinusoidal.png")
# PE[p + k] is a rotation of PE[p] in every (sin, cos) pair: its norm per pair is always 1
assert np.allclose(pe[:, 0::2] ** 2 + pe[:, 1::2] ** 2, 1.0, atol=1e-6)
