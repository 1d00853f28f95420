# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 08 — The decoder block
#
# A block is attention then a feed-forward network, each wrapped in a residual connection and a
# normalization. Llama normalizes *before* each sublayer (pre-norm) and leaves the residual stream
# alone; the 2017 transformer normalizes *after* each addition (post-norm). We check the Llama
# block against HF's LlamaDecoderLayer submodule by submodule with `litetorch.debug`, the post-norm
# block against `torch.nn.TransformerEncoderLayer`, and watch the residual stream through a deep
# stack of each kind.
# Lesson: `lessons/08-decoder-block.md`.

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
from litetorch.debug import capture, compare  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)

try:
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
except ImportError:
    torch = None
    print("SKIP: PyTorch/transformers are not installed, so the cells comparing with HF and torch print a "
          "message and do nothing. (pip install torch==2.13.0 transformers)")

# %% [markdown]
# ## 1. A Llama block, with HF's names

# %%
C, H, Hkv, hidden = 64, 4, 2, 172
block = nn.DecoderBlock(C, H, Hkv, hidden, rope=nn.RotaryEmbedding(C // H, base=10000.0))
print(block)
print(list(block.state_dict()))

# %% [markdown]
# ## 2. Against HF LlamaDecoderLayer, submodule by submodule
#
# `capture` records each named submodule's output (on litetorch modules by wrapping `forward`, on
# torch modules with forward hooks); `compare` prints one line per name. The names are HF's, except
# that litetorch computes q, k, v in one `qkv_proj` and gate, up in one `gate_up_proj`: we join HF's
# separate outputs side by side to compare them.

# %%
names = ["input_layernorm", "self_attn.qkv_proj", "self_attn", "post_attention_layernorm", "mlp.gate_up_proj", "mlp"]
hf_names = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn",
            "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp"]
rng = np.random.default_rng(0)
T = 10
x = rng.standard_normal((2, T, C)).astype(np.float32)
if torch is None:
    print("SKIP (no PyTorch/transformers): comparison with HF LlamaDecoderLayer")
else:
    cfg = LlamaConfig(hidden_size=C, num_attention_heads=H, num_key_value_heads=Hkv, intermediate_size=hidden,
                      rms_norm_eps=1e-5, rope_theta=10000.0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = LlamaDecoderLayer(cfg, layer_idx=0)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn(p.shape))  # norm weights start at 1; make them matter
    block.load_state_dict({n: p.detach().numpy() for n, p in hf.state_dict().items()})

    def run_both():
        with capture(block, names) as ours:
            y = block(lt.tensor(x))
        xt = torch.tensor(x)
        with capture(hf, hf_names) as hf_out, torch.no_grad():
            yt = hf(xt, attention_mask=torch.full((T, T), float("-inf")).triu(1)[None, None],
                    position_embeddings=LlamaRotaryEmbedding(cfg)(xt, torch.arange(T)[None]))
        theirs = {n: hf_out[n] for n in names if n in hf_out}  # (capture's dict keeps the order it recorded)
        theirs["self_attn.qkv_proj"] = np.concatenate([hf_out[f"self_attn.{p}_proj"] for p in "qkv"], -1)
        theirs["mlp.gate_up_proj"] = np.concatenate([hf_out["mlp.gate_proj"], hf_out["mlp.up_proj"]], -1)
        ours["block"], theirs["block"] = y.data, yt.numpy()
        return compare(ours, {n: theirs[n] for n in ours})

    rows = run_both()
    assert all(r.status == "OK" for r in rows)
    print("\nNow break one weight (a single entry of the up half of gate_up_proj) and look for the first [DIFF]:")
    up_row = block.mlp.hidden + 3  # rows hidden.. are up_proj's
    block.mlp.gate_up_proj.weight.data[up_row, 5] += 0.5
    rows = run_both()
    print("first DIFF:", next(r.name for r in rows if r.status == "DIFF"))
    block.mlp.gate_up_proj.weight.data[up_row, 5] -= 0.5

# %% [markdown]
# ## 3. The post-norm block against torch.nn.TransformerEncoderLayer
#
# torch packs W_q, W_k, W_v into one `in_proj_weight` [3C, C], exactly as litetorch's `qkv_proj`:
# the weights copy over as they are. Causal mask, ReLU, dropout 0, float64.

# %%
post = nn.DecoderBlock(32, 4, hidden=64, norm="layer", prenorm=False, mlp="relu", bias=True).double()
if torch is None:
    print("SKIP (no PyTorch): comparison with torch.nn.TransformerEncoderLayer")
else:
    torch.manual_seed(0)
    enc = torch.nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, activation="relu",
                                           batch_first=True, norm_first=False, dtype=torch.float64)
    sd = {k: v.detach().numpy() for k, v in enc.state_dict().items()}
    post.load_state_dict({
        "self_attn.qkv_proj.weight": sd["self_attn.in_proj_weight"], "self_attn.qkv_proj.bias": sd["self_attn.in_proj_bias"],
        "self_attn.o_proj.weight": sd["self_attn.out_proj.weight"], "self_attn.o_proj.bias": sd["self_attn.out_proj.bias"],
        "mlp.fc1.weight": sd["linear1.weight"], "mlp.fc1.bias": sd["linear1.bias"],
        "mlp.fc2.weight": sd["linear2.weight"], "mlp.fc2.bias": sd["linear2.bias"],
        **{k: v for k, v in sd.items() if k.startswith("norm")}})
    x64 = rng.standard_normal((2, 9, 32))
    ref = enc(torch.tensor(x64), src_mask=torch.nn.Transformer.generate_square_subsequent_mask(9, dtype=torch.float64),
              is_causal=True).detach().numpy()
    err = np.abs(post(lt.tensor(x64)).data - ref).max()
    print(f"post-norm block vs TransformerEncoderLayer (float64): max abs error {err:.1e}")
    assert err < 1e-10

# %% [markdown]
# ## 4. The residual stream through 24 blocks
#
# Pre-norm: each block *adds* an update to x, so the stream's RMS grows with depth; going back,
# the gradient arrives at each block's input through the identity path *plus* the sublayers'
# contributions, so it never shrinks on its way down. Post-norm: the stream is re-normalized
# after every sublayer (its RMS is pinned at 1), and the gradient must pass through all 48 norms
# (here, at initialization, it shrinks a little; in a trained deep post-norm stack it is what
# made warm-up schedules necessary).

# %%
def deep(prenorm, n_layers=24, d=64):
    lt.manual_seed(1)
    kw = dict(norm="rms", mlp="swiglu") if prenorm else dict(norm="layer", prenorm=False, mlp="gelu", bias=True)
    return [nn.DecoderBlock(d, 4, hidden=128, rope=nn.RotaryEmbedding(16) if prenorm else None, **kw)
            for _ in range(n_layers)]


stats = {}
for prenorm in (True, False):
    blocks = deep(prenorm)
    x0 = lt.tensor(rng.standard_normal((1, 16, 64)).astype(np.float32))
    h, inputs, rms = x0, [], []
    for b in blocks:
        h = h.retain_grad() if h.requires_grad else h
        inputs.append(h)
        h = b(h)
        rms.append(float(np.sqrt((h.data ** 2).mean())))
    (h * lt.tensor(rng.standard_normal(h.shape).astype(np.float32))).sum().backward()
    grad = [float(np.sqrt((t.grad ** 2).mean())) if t.grad is not None else np.nan for t in inputs[1:]]
    stats["pre-norm (Llama)" if prenorm else "post-norm (2017)"] = (rms, grad)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name, (rms, grad) in stats.items():
    axes[0].plot(range(1, 25), rms, "o-", ms=3, label=name)
    axes[1].semilogy(range(1, 24), grad, "o-", ms=3, label=name)
axes[0].set_xlabel("after block")
axes[0].set_ylabel("RMS of the residual stream")
axes[0].legend(fontsize=8)
axes[1].set_xlabel("input of block")
axes[1].set_ylabel("RMS of d(loss)/d(input)")
axes[1].legend(fontsize=8)
axes[0].set_title("forward: the stream", fontsize=10)
axes[1].set_title("backward: the gradient reaching each block", fontsize=10)
fig.tight_layout()
fig.savefig(OUT / "08-residual-stream.png", dpi=110)
print("saved", OUT / "08-residual-stream.png")
for name, (rms, grad) in stats.items():
    print(f"{name:17s} stream RMS after block 1 / 24: {rms[0]:.2f} / {rms[-1]:.2f};  "
          f"gradient RMS at block 2 / 24: {grad[0]:.3g} / {grad[-1]:.3g}")
