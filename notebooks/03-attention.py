# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 03 — Attention
#
# Each token asks a question (its query q), every token offers a label (its key k) and a
# content (its value v). A token's output is the average of the values, weighted by how well its
# query matches each key: `softmax(q kᵀ / √Dh + mask) v`. We build it in five NumPy lines, check
# it against `litetorch.nn.functional.scaled_dot_product_attention` and PyTorch, and look at the
# scores, the causal mask and the weights as pictures.
# Lesson: `lessons/03-attention.md`.

# %%
import math
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
from litetorch import nn  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)

try:
    import torch
except ImportError:
    torch = None
    print("SKIP: PyTorch is not installed, so the cells comparing with PyTorch print a message and do "
          "nothing. (pip install torch==2.13.0)")

# %% [markdown]
# ## 1. Attention in five lines
#
# One head, one sequence of T = 8 tokens, head dim Dh = 16. The shapes are the whole story:
# q, k, v are [T, Dh]; the scores are [T, T] (row i: how much query i likes each key).

# %%
rng = np.random.default_rng(0)
T, Dh = 8, 16
q, k, v = (rng.standard_normal((T, Dh)) for _ in range(3))

scores = q @ k.T / math.sqrt(Dh)                         # [T, Dh] @ [Dh, T] -> [T, T]
causal = np.tril(np.ones((T, T), dtype=bool))            # token i may look at tokens 0..i
masked = np.where(causal, scores, -np.inf)               # hidden keys: -inf, so exp(-inf) = 0
weights = np.exp(masked - masked.max(-1, keepdims=True))  # stable: subtract the row max
weights /= weights.sum(-1, keepdims=True)                # each row sums to 1
out = weights @ v                                        # [T, T] @ [T, Dh] -> [T, Dh]

ours = F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None], is_causal=True)
err = np.abs(ours.data[0, 0] - out).max()
print(f"five lines vs litetorch SDPA: max abs error {err:.1e}")
assert err < 1e-12
assert np.allclose(weights.sum(-1), 1.0) and np.all(weights[~causal] == 0)

# %% [markdown]
# ## 2. The pictures: scores, mask, weights

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
for ax, (title, m) in zip(axes, [("scores q kᵀ / √Dh", scores), ("causal mask (white = may attend)", causal),
                                 ("weights = softmax(masked scores)", weights)]):
    im = ax.imshow(m, cmap="viridis" if m.dtype != bool else "gray")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    if m.dtype != bool:
        fig.colorbar(im, ax=ax, fraction=0.046)
fig.tight_layout()
fig.savefig(OUT / "03-attention-heatmaps.png", dpi=110)
print("saved", OUT / "03-attention-heatmaps.png")

# %% [markdown]
# ## 3. Why divide by √Dh
#
# With q, k of unit-variance entries, q·k is a sum of Dh products, so its standard deviation
# grows like √Dh. Unscaled, large heads push softmax to a one-hot (entropy → 0): the gradient
# through a saturated softmax vanishes. Dividing by √Dh keeps the scores at unit variance.

# %%
dims = [4, 16, 64, 256, 1024]


def mean_entropy(scale_by_sqrt):
    ent = []
    for d in dims:
        qq, kk = rng.standard_normal((64, d)), rng.standard_normal((64, d))
        s = qq @ kk.T / (math.sqrt(d) if scale_by_sqrt else 1.0)
        p = F.softmax(lt.tensor(s), dim=-1).data
        ent.append(float(-(p * np.log(p + 1e-30)).sum(-1).mean()))
    return ent


plain, scaled = mean_entropy(False), mean_entropy(True)
fig, ax = plt.subplots(figsize=(5.5, 3.6))
ax.semilogx(dims, plain, "o-", label="q·k (unscaled)")
ax.semilogx(dims, scaled, "s-", label="q·k / √Dh")
ax.axhline(math.log(64), color="gray", ls=":", label="uniform over 64 keys")
ax.set_xlabel("head dim Dh")
ax.set_ylabel("softmax entropy (nats)")
ax.legend(fontsize=8)
ax.set_title("Scaling keeps softmax from saturating", fontsize=10)
fig.tight_layout()
fig.savefig(OUT / "03-scaling.png", dpi=110)
print("entropy unscaled:", np.round(plain, 2), " scaled:", np.round(scaled, 2))
assert plain[-1] < 0.5 * scaled[-1]

# %% [markdown]
# ## 4. Which corner does the causal mask start from?
#
# When there are fewer queries than keys (Tq < Tk) — a decode step with a KV cache has 1 new
# query and Tk cached keys — the queries are the *last* Tq positions. litetorch aligns the
# triangle bottom-right (query i sees keys 0 .. i + Tk − Tq). PyTorch's `is_causal` aligns it
# top-left, which would let the newest token see only the first key.

# %%
Tq, Tk = 3, 8
fig, axes = plt.subplots(1, 2, figsize=(8, 2.6))
axes[0].imshow(nn.causal_mask(Tq, Tk), cmap="gray")
axes[0].set_title("litetorch: bottom-right (decoding)", fontsize=10)
axes[1].imshow(np.tril(np.ones((Tq, Tk), dtype=bool)), cmap="gray")
axes[1].set_title("torch is_causal when Tq != Tk: top-left", fontsize=10)
for ax in axes:
    ax.set_xlabel("key")
    ax.set_ylabel("query")
fig.tight_layout()
fig.savefig(OUT / "03-causal-alignment.png", dpi=110)
print(nn.causal_mask(Tq, Tk).astype(int))

# %% [markdown]
# ## 5. The same numbers from PyTorch
#
# A batch of 2 sequences, 4 heads, float32 and float64, forward and backward. For Tq < Tk we hand
# torch our bottom-right mask explicitly.

# %%
if torch is None:
    print("SKIP (no PyTorch): comparison with torch.nn.functional.scaled_dot_product_attention")
else:
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        for Tq, Tk in ((12, 12), (4, 12)):
            Q = rng.standard_normal((2, 4, Tq, 16)).astype(dtype)
            K, V = (rng.standard_normal((2, 4, Tk, 16)).astype(dtype) for _ in range(2))
            G = rng.standard_normal((2, 4, Tq, 16)).astype(dtype)
            lq, lk, lv = (lt.tensor(a, requires_grad=True) for a in (Q, K, V))
            o = F.scaled_dot_product_attention(lq, lk, lv, is_causal=True)
            o.backward(G)
            tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (Q, K, V))
            ref = torch.nn.functional.scaled_dot_product_attention(
                tq, tk, tv, attn_mask=torch.tensor(nn.causal_mask(Tq, Tk)))
            ref.backward(torch.tensor(G))
            errs = [np.abs(a - b.detach().numpy()).max() / max(np.abs(b.detach().numpy()).max(), 1.0)
                    for a, b in ((o.data, ref), (lq.grad, tq.grad), (lk.grad, tk.grad), (lv.grad, tv.grad))]
            print(f"{np.dtype(dtype).name} Tq={Tq:2d} Tk={Tk}: out {errs[0]:.1e}  dq {errs[1]:.1e}  "
                  f"dk {errs[2]:.1e}  dv {errs[3]:.1e}")
            assert max(errs) <= tol

# %% [markdown]
# ## 6. A query that may see nothing
#
# If a mask hides every key from a query, softmax would compute 0/0. litetorch returns a zero
# row (and zero gradient), as PyTorch 2.13 does.

# %%
keep = np.ones((4, 4), dtype=bool)
keep[2] = False
o = F.scaled_dot_product_attention(rng.standard_normal((1, 1, 4, 8)), rng.standard_normal((1, 1, 4, 8)),
                                   rng.standard_normal((1, 1, 4, 8)), attn_mask=keep)
print("row 2:", o.data[0, 0, 2])
assert np.all(o.data[0, 0, 2] == 0) and np.all(np.isfinite(o.data))
