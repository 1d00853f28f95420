# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · Loading a real model
#
# We fill litetorch's `Llama` with SmolLM2-135M-Instruct's weights from its GGUF file: map the
# names, tie the embeddings, un-permute Q and K. Then we check the result against Hugging Face
# transformers, layer by layer, and watch what happens when the un-permute is forgotten.
# Lesson: [lessons/11-loading-a-real-model.md](../lessons/11-loading-a-real-model.md).
# Code: [litetorch/models/loading.py](../litetorch/models/loading.py),
# [litetorch/models/llama.py](../litetorch/models/llama.py).
#
# The reference is `tests/fixtures/smollm2_reference.npz`: HF transformers loading the same file
# in float32 (made by `tests/fixtures/make_fixtures_llama.py`), so this notebook needs no torch.

# %%
import json
import os
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: use the repo next to this notebook
    sys.path.insert(0, str(ROOT))
import litetorch as lt  # noqa: E402
from litetorch.debug import capture, compare  # noqa: E402
from litetorch.generation import generate  # noqa: E402
from litetorch.models import load_model  # noqa: E402
from litetorch.models.loading import GGUF_TO_HF, gguf_name_to_hf, load_gguf  # noqa: E402
from litetorch.nn.rope import unpermute_qk  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)
FIXTURE = ROOT / "tests" / "fixtures" / "smollm2_reference"

MODEL = Path(os.environ.get("LITETORCH_MODEL") or
             Path(os.environ.get("LITETORCH_HOME") or Path.home() / ".cache" / "litetorch")
             / "SmolLM2-135M-Instruct.Q4_1.gguf")
if not MODEL.is_file():
    print(f"SKIP: model file not found at {MODEL}.\n"
          "Set LITETORCH_MODEL or run `litetorch generate` once to fetch it.")
    sys.exit(0)

# %% [markdown]
# ## Load it
# `load_model` reads the config from the file's metadata, builds an empty `Llama`, plans which
# tensors make each parameter (checking every name, shape and type: a missing or extra tensor is an
# error, not a silent random weight), then dequantizes them to float32 one parameter at a time,
# un-permuting Q/K.

# %%
t0 = time.perf_counter()
model, tok = load_model(MODEL)
print(f"loaded in {time.perf_counter() - t0:.1f} s")
print(model.config)
n_params = sum(p.data.size for p in model.parameters())
print(f"{n_params:,} parameters, dtype {model.dtype}")

# %% [markdown]
# ## 1. Names
# The same tensor, two names. The map is a dict with `{N}` for the layer number; litetorch's
# modules use HF's names, so an HF checkpoint needs no map at all.

# %%
for gguf_name in GGUF_TO_HF:
    name = gguf_name.replace("{N}", "0")
    if name in model.gguf.file.tensors:
        info = model.gguf.file.tensors[name]
        print(f"{name:26s} {info.type_name:5s} {str(info.shape):14s} -> {gguf_name_to_hf(name)}")
    else:
        print(f"{name:26s} (not in this file)")

# %% [markdown]
# ## 2. Tied embeddings
# There is no `output.weight`: the logits are computed with the embedding table itself,
# `logits = h @ E.T`. In litetorch that is one Parameter reachable under two names.

# %%
E = model.model.embed_tokens.weight
assert model.lm_head.weight is E
print(f"lm_head.weight is embed_tokens.weight: {model.lm_head.weight is E}; shape {E.shape}")
print(f"tying saves {E.data.size:,} parameters ({E.data.size / n_params:.0%} of the model)")
print("state_dict keys with it:", [k for k in model.state_dict() if k.endswith(("embed_tokens.weight", "lm_head.weight"))])

# %% [markdown]
# ## 3. The Q/K permutation
# llama.cpp rotates pairs of *neighbouring* coordinates (2i, 2i+1); HF and litetorch rotate
# coordinate i with i + Dh/2. So llama.cpp's converter reordered the rows of W_q and W_k inside
# each head, and the loader puts them back. Follow the row numbers of one head:

# %%
H, Hkv, Dh = model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim
rows = unpermute_qk(np.arange(H * Dh)[:, None], H)[:, 0]  # which file row lands at each position
print("head 0, loaded row <- file row:", rows[:6].tolist(), "...", rows[Dh // 2:Dh // 2 + 6].tolist(), "...")

raw_q = model.gguf.blk[3].attn_q.weight                   # as stored in the file
qkv = model.model.layers[3].self_attn.qkv_proj.weight.data  # as loaded: q's rows, then k's, then v's
q, k = qkv[:H * Dh], qkv[H * Dh:(H + Hkv) * Dh]
assert np.array_equal(unpermute_qk(raw_q, H), q)
assert np.array_equal(model.gguf.blk[3].attn_k.weight[rows[:Hkv * Dh]], k)
print("blk.3.attn_q: file rows 0, 2, 4, ... are loaded rows 0, 1, 2, ...:", np.array_equal(raw_q[0:Dh:2], q[:Dh // 2]))

# %% [markdown]
# ## 4. Is it right? Logits against HF
# Feed the fixture's token ids (litetorch's tokenizer and transformers' GGUF tokenizer disagree
# on a space before a digit, lesson 12) and compare the last position's logits.

# %%
meta = json.loads(FIXTURE.with_suffix(".json").read_text(encoding="utf-8"))
with np.load(FIXTURE.with_suffix(".npz")) as z:
    ref = {k: z[k] for k in z.files}


def logits_of(m, ids, keep=0):
    with lt.no_grad():
        return m(np.asarray(ids, dtype=np.int64)[None], logits_to_keep=keep).data[0]


worst = 0.0
for p in meta["prompts"]:
    name = p["name"]
    ours = logits_of(model, ref[f"{name}.input_ids"], keep=1)[-1]
    err = float(np.abs(ours - ref[f"{name}.last_logits"]).max())
    worst = max(worst, err)
    print(f"{name:12s} T={p['n_tokens']:4d}  max|logits - HF| = {err:.1e}  "
          f"argmax {'agrees' if ours.argmax() == ref[f'{name}.last_logits'].argmax() else 'DIFFERS'}")
assert worst <= 1e-3, worst
print(f"worst: {worst:.1e} (logits are of size ~20; float32 has 7 digits)")

# %% [markdown]
# ## 5. Layer by layer
# When the logits disagree, the question is *where*. `capture` records every named module's
# output; `compare` lines them up with the reference in data order. HF's hidden states are the
# embeddings, then each layer's output (the last one after the final norm; the fixture also keeps
# the raw one). Tolerance: 1e-5 of each layer's largest value (float32 over 30 layers).

# %%
L = model.config.num_hidden_layers
hs = ref["short.hidden_states"]                             # [L+1, T, C]
theirs = {"model.embed_tokens": hs[0]}
theirs.update({f"model.layers.{i}": hs[i + 1] for i in range(L - 1)})
theirs[f"model.layers.{L - 1}"] = ref["short.last_layer_output"]
theirs["model.norm"] = hs[L]
theirs = {k: v[None] for k, v in theirs.items()}            # [T, C] -> [1, T, C]
with capture(model, list(theirs)) as ours, lt.no_grad():
    model(ref["short.input_ids"][None].astype(np.int64))
rows = compare(ours, theirs, rtol=1e-5, atol=0.0)
assert all(r.status == "OK" for r in rows)
scale = np.array([np.abs(theirs[r.name]).max() for r in rows])
abs_err = np.array([r.max_abs for r in rows])
print(f"largest |hidden value|: {scale.max():,.0f} (layer {rows[int(scale.argmax())].name}); "
      f"largest relative error {np.max(abs_err / scale):.1e}")

# %% [markdown]
# Layer 11 onward carries one huge value (about 22,500) in a single channel of the residual
# stream, a "massive activation" many LLMs grow. The absolute error jumps with it; the error
# relative to the layer's scale stays at float32's few-ulp level throughout.
#
# ## 6. Forget the un-permute
# Same file, same code, `unpermute=False`:

# %%
raw = load_gguf(MODEL, unpermute=False)
right = np.abs(logits_of(model, ref["short.input_ids"]) - ref["short.all_logits"]).max(-1)   # [T]
wrong = np.abs(logits_of(raw, ref["short.input_ids"]) - ref["short.all_logits"]).max(-1)
print("max|logits - HF| per position, un-permuted:   ", np.array2string(right, precision=1))
print("max|logits - HF| per position, NOT un-permuted:", np.array2string(wrong, precision=1))
assert wrong[0] <= 1e-3 and wrong[1:].min() > 1.0

# %% [markdown]
# Position 0 is exact without the un-permute: its rotation angle is 0, and a rotation by 0 leaves
# any pairing alone. Every later position rotates the wrong pairs of coordinates by the wrong
# frequencies, so attention looks in the wrong places. Now the text:

# %%
prompts = [[{"role": "user", "content": "What is the capital of France?"}],
           "Once upon a time, in a small village by the sea,",
           "The capital of France is"]
for prompt in prompts:
    print("prompt:", repr(prompt if isinstance(prompt, str) else prompt[0]["content"]))
    for label, m in (("un-permuted", model), ("NOT un-permuted", raw)):
        out = generate(m, tok, prompt, max_new_tokens=30, temperature=0, raw=True)  # text as is, no template
        print(f"  {label:16s} {out.text!r}  ({len(out.token_ids)} tokens, {out.finish_reason})")

# %% [markdown]
# Without the un-permute the chat answer ends at once (its first token is `<|im_end|>`), the story
# repeats itself, and the one-fact prompt gets its first words right (nearby tokens barely
# rotate, so short-range attention half works) before it runs into newlines. Nothing crashes and
# every shape is right: only a comparison with a reference finds this bug.

# %% [markdown]
# ## A picture

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
x = np.arange(len(rows)) - 1  # -1: embeddings, 0..29: layers, 30: final norm
floor = 1e-9                  # the embeddings match exactly: draw 0 at the bottom of the log axis
ax1.semilogy(x, np.maximum(abs_err, floor), "o-", label="max |litetorch - HF|")
ax1.semilogy(x, np.maximum(abs_err / scale, floor), "s-", label="relative: max |litetorch - HF| / max |HF|")
ax1.axhline(1e-5, color="red", lw=0.8, ls="--", label="tolerance (relative 1e-5)")
ax1.set_xlabel("layer  (-1 = embeddings, 30 = final norm)")
ax1.set_ylim(floor / 2, 1)
ax1.set_title("hidden states vs HF (short prompt)")
ax1.legend(fontsize=8, loc="lower right")
twin = ax1.twinx()
twin.semilogy(x, scale, ":", color="gray")
twin.set_ylabel("max |HF hidden value| (dotted)", color="gray")
pos = np.arange(len(right))
ax2.semilogy(pos, np.maximum(right, 1e-7), "o-", label="un-permuted (correct)")
ax2.semilogy(pos, np.maximum(wrong, 1e-7), "s-", color="C3", label="Q/K left in GGUF order")
ax2.set_xlabel("position")
ax2.set_ylabel("max |logits - HF|")
ax2.set_title("logits error per position")
ax2.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "11-loading.png", dpi=110)
print("saved", OUT / "11-loading.png")


# %% [markdown]
# ## 6. Preloaded or on demand
# `weights="quantized"` keeps the file's blocks and expands each weight when a layer reads it
# (`litetorch/models/quantized.py`). The same `expand` runs in both modes, so the logits must be
# *identical*, not merely close. The price is time: every forward dequantizes every weight.
# (The lesson's picture of speed and memory comes from `benchmarks/weight_modes.py`, which runs each
# mode in its own process to measure its memory.)

# %%
on_demand, _ = load_model(MODEL, weights="quantized")
ids = np.array([tok.encode("The quick brown fox jumps over the lazy dog")])  # [1, T]
timings = {}
for name, m in (("float32", model), ("quantized", on_demand)):
    with lt.no_grad():
        m(ids)                                   # warm up (page faults, the scratch buffer)
        t0 = time.perf_counter()
        out = m(ids).data
        timings[name] = time.perf_counter() - t0
    print(f'weights="{name}": one forward of {ids.shape[1]} tokens in {1e3 * timings[name]:.0f} ms')
    if name == "float32":
        preloaded_logits = out
assert np.array_equal(out, preloaded_logits), "the two weights modes must compute the same numbers"
print("logits identical:", np.array_equal(out, preloaded_logits))
store = on_demand.lm_head.weight._weights
print(store, f"hits {store.hits}, expansions {store.misses}")
param_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
print(f"float32 weights: {param_mb:.0f} MiB in memory; quantized: the {MODEL.stat().st_size / 2**20:.0f} MiB file, "
      f"mapped, + a {store.cached_bytes / 2**20:.0f} MiB cache + a scratch buffer of the largest matrix")
