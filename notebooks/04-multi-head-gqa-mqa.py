# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 04 — Multi-head attention, GQA and MQA
#
# H heads attend in parallel, each in its own Dh-dim subspace. Keys and values may have fewer
# heads (Hkv) than queries: each K/V head is then shared by a group of H / Hkv query heads.
# MHA (Hkv = H), GQA (Hkv divides H), MQA (Hkv = 1) are one module with one number changed —
# and that number sets the size of the KV cache. We check `nn.MultiHeadAttention` against HF's
# LlamaAttention, show that grouping needs no copy of K/V, and tabulate cache bytes per token.
# Lesson: `lessons/04-multi-head-gqa-mqa.md`.

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
from litetorch import nn  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)

try:
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
except ImportError:
    torch = None
    print("SKIP: PyTorch/transformers are not installed, so the cells comparing with HF LlamaAttention "
          "print a message and do nothing. (pip install torch==2.13.0 transformers)")

# %% [markdown]
# ## 1. Three attentions, one class
#
# SmolLM2's shape: d_model 576, 9 query heads of 64, and 9, 3 or 1 K/V heads.

# %%
for name, hkv in (("MHA", 9), ("GQA", 3), ("MQA", 1)):
    m = nn.MultiHeadAttention(576, 9, hkv)
    parts = {n: rows for n, rows in m.fused_parts()["qkv_proj"]}  # qkv_proj's rows: q, then k, then v
    print(f"{name}: qkv_proj {m.qkv_proj.weight.shape} = q {parts['q_proj']} + k {parts['k_proj']} + "
          f"v {parts['v_proj']} rows  parameters {m.num_parameters():,}")

# %% [markdown]
# ## 2. Grouping without copying
#
# HF's `repeat_kv` copies each K/V head H/Hkv times so that plain multi-head attention can run.
# litetorch folds each group of query heads into the rows of one matrix instead:
# q [B, H, T, Dh] → [B, Hkv, G·T, Dh], one matmul per K/V head, no copy. Same numbers.

# %%
rng = np.random.default_rng(0)
B, H, Hkv, T, Dh = 1, 9, 3, 10, 64
q = rng.standard_normal((B, H, T, Dh))
k, v = (rng.standard_normal((B, Hkv, T, Dh)) for _ in range(2))
grouped = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).data
k_rep, v_rep = nn.repeat_kv(k, H // Hkv).data, nn.repeat_kv(v, H // Hkv).data
repeated = F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True).data
print(f"grouped vs repeat_kv: max abs diff {np.abs(grouped - repeated).max():.1e}; "
      f"repeat_kv allocated {k_rep.nbytes + v_rep.nbytes:,} extra bytes, grouping 0")
assert np.abs(grouped - repeated).max() < 1e-12

# %% [markdown]
# ## 3. Against HF LlamaAttention
#
# Same weights (copied through `state_dict`, the names are HF's), same RoPE, float32.

# %%
if torch is None:
    print("SKIP (no PyTorch/transformers): comparison with HF LlamaAttention")
else:
    for name, hkv in (("MHA", 8), ("GQA", 2), ("MQA", 1)):
        cfg = LlamaConfig(hidden_size=128, num_attention_heads=8, num_key_value_heads=hkv, rope_theta=10000.0)
        cfg._attn_implementation = "eager"
        torch.manual_seed(0)
        hf = LlamaAttention(cfg, layer_idx=0)
        ours = nn.MultiHeadAttention(128, 8, hkv, rope=nn.RotaryEmbedding(16, base=10000.0))
        ours.load_state_dict({n: p.detach().numpy() for n, p in hf.state_dict().items()})
        x = rng.standard_normal((2, 12, 128)).astype(np.float32)
        xt = torch.tensor(x)
        cos, sin = LlamaRotaryEmbedding(cfg)(xt, torch.arange(12)[None])
        with torch.no_grad():
            ref, _ = hf(xt, position_embeddings=(cos, sin),
                        attention_mask=torch.full((12, 12), float("-inf")).triu(1)[None, None])
        out = ours(lt.tensor(x))
        rel = np.abs(out.data - ref.numpy()).max() / np.abs(ref.numpy()).max()
        print(f"{name}: max error relative to scale {rel:.1e}")
        assert rel < 1e-5

# %% [markdown]
# ## 4. What n_kv_heads buys: KV-cache bytes per token
#
# Every layer stores one key and one value vector per K/V head per token:
# bytes per token = 2 · n_layers · n_kv_heads · head_dim · bytes per number.

# %%
models = {"SmolLM2-135M": dict(n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64),
          "TinyLlama-1.1B": dict(n_layers=22, n_heads=32, n_kv_heads=4, head_dim=64)}
dtypes = {"float32": 4, "float16": 2}
rows = []
print(f"{'model':15s} {'attention':10s} {'Hkv':>4s} {'float32 B/token':>16s} {'float16 B/token':>16s} "
      f"{'float32 @ 8k ctx':>17s}")
for mname, m in models.items():
    for kind, hkv in (("MHA", m["n_heads"]), ("GQA", m["n_kv_heads"]), ("MQA", 1)):
        per = {d: 2 * m["n_layers"] * hkv * m["head_dim"] * b for d, b in dtypes.items()}
        rows.append((mname, kind, hkv, per))
        print(f"{mname:15s} {kind:10s} {hkv:4d} {per['float32']:16,d} {per['float16']:16,d} "
              f"{per['float32'] * 8192 / 2**20:14.0f} MiB")
    # the formula is what a real cache allocates
    caches = nn.make_caches(m["n_layers"], 1, m["n_kv_heads"], 16, m["head_dim"])
    assert caches.bytes_per_token == 2 * m["n_layers"] * m["n_kv_heads"] * m["head_dim"] * 4

fig, ax = plt.subplots(figsize=(7, 3.6))
labels = [f"{r[0]}\n{r[1]} (Hkv={r[2]})" for r in rows]
vals = [r[3]["float32"] / 1024 for r in rows]
bars = ax.bar(range(len(rows)), vals, color=["#888", "#2a7", "#27a"] * 2)
ax.set_xticks(range(len(rows)), labels, fontsize=7)
ax.set_ylabel("KV cache, KiB per token (float32)")
ax.set_yscale("log")
for b, val in zip(bars, vals):
    ax.text(b.get_x() + b.get_width() / 2, val * 1.05, f"{val:.0f}", ha="center", fontsize=7)
ax.set_title("2 · layers · kv_heads · head_dim · 4 bytes", fontsize=10)
fig.tight_layout()
fig.savefig(OUT / "04-kv-bytes-per-token.png", dpi=110)
print("saved", OUT / "04-kv-bytes-per-token.png")
