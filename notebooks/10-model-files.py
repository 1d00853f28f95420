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
# # 10 · What is inside a model file
#
# We open SmolLM2-135M-Instruct as llama.cpp ships it (a GGUF file), look at its header,
# metadata and tensor table, decode one 4-bit block of weights by hand, and measure what each
# quantized format costs in accuracy for what it saves in bytes.
# Lesson: [lessons/10-model-files.md](../lessons/10-model-files.md).
# Code: [litetorch/io/gguf.py](../litetorch/io/gguf.py), [litetorch/io/quants.py](../litetorch/io/quants.py).

# %%
import os
import sys
from pathlib import Path

import numpy as np

# Run from a source checkout without installing litetorch (from the repo root or notebooks/).
for root in (Path.cwd(), Path.cwd().parent):
    if (root / "litetorch" / "io" / "gguf.py").exists():
        sys.path.insert(0, str(root))
        break

from litetorch.io import quants
from litetorch.io.gguf import GGUFFile

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")   # plots (git-ignored)

try:
    import gguf as gguf_py          # llama.cpp's own Python package: the reference
except ImportError:
    gguf_py = None
    print("the `gguf` package is not installed: comparisons with llama.cpp's gguf-py are skipped")

path = Path(os.environ.get("LITETORCH_MODEL",
                           Path.home() / ".cache" / "litetorch" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
if not path.exists():
    print(f"SKIP: model file not found at {path}; run `litetorch generate` once to fetch it "
          f"(or set LITETORCH_MODEL). Skipping the rest of this notebook.")

# %% [markdown]
# ## The header and the metadata
# Opening parses the header, the metadata and the tensor table; the weights stay on disk
# (memory-mapped) until we ask for one.

# %%
if path.exists():
    f = GGUFFile(path)
    print(f)
    source = "from general.alignment" if "general.alignment" in f else "the default: no general.alignment key"
    print(f"file size {path.stat().st_size:,} bytes; GGUF version {f.version}; alignment {f.alignment} ({source})")
    print(f"data section starts at byte {f.data_offset:,}\n")
    for key, value in f.metadata.items():
        if isinstance(value, (list, np.ndarray)):
            first = value[:3].tolist() if isinstance(value, np.ndarray) else value[:3]
            shown = f"{len(value)} items, first {first}"
        else:
            shown = repr(value) if len(repr(value)) < 70 else repr(value)[:67] + "..."
        print(f"{key:40s} {f.metadata_types[key]:15s} {shown}")

# %% [markdown]
# ## The tensor table
# `shape` is in NumPy order: the file lists dimensions fastest-first, so `ffn_up` is stored as
# dims `[576, 1536]` and reads as a `(1536, 576)` matrix, `[out_features, in_features]` like
# `nn.Linear.weight`.

# %%
if path.exists():
    print(f"{'name':28s} {'type':5s} {'shape':14s} {'offset':>12s} {'bytes':>10s} {'bits/weight':>11s}")
    for name, info in list(f.tensors.items())[:11]:
        bpw = 8 * info.n_bytes / info.n_elements
        print(f"{name:28s} {info.type_name:5s} {str(info.shape):14s} {info.offset:12,d} {info.n_bytes:10,d} {bpw:11.2f}")
    print(f"... {len(f.tensors)} tensors in all")
    totals = {}
    for info in f.tensors.values():
        n, b = totals.get(info.type_name, (0, 0))
        totals[info.type_name] = (n + info.n_elements, b + info.n_bytes)
    for type_name, (n, b) in totals.items():
        print(f"{type_name:5s}: {n:12,d} weights in {b:12,d} bytes = {8 * b / n:.2f} bits/weight")
    n_weights = sum(n for n, _ in totals.values())
    print(f"as float32 the same {n_weights:,} weights would take {4 * n_weights:,} bytes")

# %% [markdown]
# ## One Q4_1 block, by hand
# A Q4_1 block is 20 bytes: an fp16 step `d`, an fp16 minimum `m`, then 16 bytes of 4-bit codes.
# Byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
# Each weight is `w = d * q + m`.

# %%
if path.exists():
    name = "blk.0.attn_q.weight"
    block = np.asarray(f.raw(name)[:20])                    # the first 20 bytes of the tensor
    print("bytes:", " ".join(f"{b:02x}" for b in block))
    d = block[0:2].view("<f2").astype(np.float32)[0]        # little-endian IEEE half
    m = block[2:4].view("<f2").astype(np.float32)[0]
    low, high = block[4:20] & 0x0F, block[4:20] >> 4
    q = np.concatenate([low, high])                         # weights 0..15, then 16..31
    by_hand = d * q.astype(np.float32) + m
    print(f"d = {d:.8f}  m = {m:.8f}")
    print("q =", q.tolist())

    ours = f.dequantize(name)[0, :32]                       # row 0 starts with block 0
    err = np.abs(by_hand - ours).max()
    print(f"max |by hand - litetorch| = {err}")
    assert err == 0
    if gguf_py is not None:
        ref = gguf_py.quants.dequantize(block.reshape(1, 20), gguf_py.GGMLQuantizationType.Q4_1).reshape(-1)
        err = np.abs(by_hand - ref).max()
        print(f"max |by hand - gguf.quants| = {err}")
        assert err == 0
    print(f"q = 0 gives exactly m = {m:.6f} (the block minimum), q = 15 gives m + 15 d = {m + 15 * d:.6f}")

# %% [markdown]
# ## Bits against error
# Re-quantize a real matrix (the token embedding, one row in six) to each format and measure the
# RMS error relative to the matrix's RMS. The embedding is stored as Q8_0, so its numbers already
# sit on a Q8_0 grid: re-quantizing it to Q8_0 is exact. A Gaussian matrix of the same spread shows
# the error Q8_0 costs on fresh data.

# %%
if path.exists():
    embedding = f.dequantize("token_embd.weight")[::6]                      # [8192, 576]
    rng = np.random.default_rng(0)
    gaussian = rng.standard_normal(embedding.shape, dtype=np.float32) * np.float32(embedding.std())

    def relative_rms_error(x, type_name):
        back = quants.dequantize(quants.quantize(x, type_name), quants.ggml_type_id(type_name), x.shape)
        return float(np.sqrt(np.mean((back - x) ** 2) / np.mean(x ** 2)))

    formats = ["F16", "BF16", "Q8_0", "Q4_1", "Q4_0"]
    bits = {t: 8 * quants.tensor_nbytes((32,), quants.ggml_type_id(t)) / 32 for t in formats}
    results = {label: {t: relative_rms_error(x, t) for t in formats}
               for label, x in [("token_embd (already Q8_0)", embedding), ("Gaussian, same std", gaussian)]}
    print(f"{'format':6s} {'bits/weight':>11s}   " + "   ".join(f"{label:>26s}" for label in results))
    for t in formats:
        print(f"{t:6s} {bits[t]:11.1f}   " + "   ".join(f"{results[label][t]:26.2e}" for label in results))
    assert results["token_embd (already Q8_0)"]["Q8_0"] == 0.0
    assert results["Gaussian, same std"]["Q8_0"] < results["Gaussian, same std"]["Q4_1"] < results["Gaussian, same std"]["Q4_0"]

# %%
if path.exists():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, errors), marker in zip(results.items(), ["o", "s"]):
        shown = [t for t in formats if errors[t] > 0]           # 0 cannot sit on a log axis
        ax.plot([bits[t] for t in shown], [errors[t] for t in shown], marker, label=label, alpha=0.8)
    for t in formats:                                           # label each format once
        ax.annotate(t, (bits[t], results["Gaussian, same std"][t]), textcoords="offset points",
                    xytext=(6, -3), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("RMS error / RMS of the weights")
    ax.set_title("token_embd re-quantized to Q8_0: error exactly 0 (not shown)", fontsize=9)
    ax.legend()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(OUT / "10-bits-vs-error.png", dpi=120)
    print("saved", OUT / "10-bits-vs-error.png")
    f.close()
