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

# %% [markdown]
# ## K-quants: one Q4_K super-block, by hand
# The K-quants cut a row into super-blocks of 256 weights. Q4_K stores, per super-block, two fp16
# numbers `d` and `dmin`, then twelve bytes holding eight 6-bit scales `sc[j]` and eight 6-bit
# mins `m[j]` (one pair per sub-block of 32 weights), then 128 bytes of 4-bit quants.
# Weight i of sub-block j is `w = d * sc[j] * q - dmin * m[j]`.
#
# SmolLM2's file has no K-quants (its rows of 576 weights are not a multiple of 256), so we make
# one: the first 256 weights of row 0 of `blk.0.ffn_down.weight` (rows of 1536 = 6 x 256),
# quantized to Q4_K with litetorch's port of llama.cpp's reference quantizer.

# %%
if path.exists():
    x = f.dequantize("blk.0.ffn_down.weight")[0, :256]      # one super-block of real weights
    block = quants.quantize(x, "Q4_K")                       # [144] uint8
    print("d, dmin :", " ".join(f"{b:02x}" for b in block[0:4]))
    print("scales  :", " ".join(f"{b:02x}" for b in block[4:16]))
    print("qs[0:8] :", " ".join(f"{b:02x}" for b in block[16:24]), "...")

    d = block[0:2].view("<f2").astype(np.float32)[0]        # little-endian IEEE halves
    dmin = block[2:4].view("<f2").astype(np.float32)[0]
    s = [int(b) for b in block[4:16]]                        # the 12 scale bytes as Python ints
    sc, m = [], []
    for j in range(8):
        if j < 4:                                            # low 6 bits of bytes 0..3 and 4..7
            sc.append(s[j] & 63)
            m.append(s[j + 4] & 63)
        else:                                                # 4 bits from bytes 8..11, 2 from bits 6-7 above
            sc.append((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4))
            m.append((s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    print(f"d = {float(d)!r}  dmin = {float(dmin)!r}   (fp16 0x{block[0:2].view('<u2')[0]:04x}, "
          f"0x{block[2:4].view('<u2')[0]:04x})\nsc = {sc}\nm  = {m}")

    qs = block[16:144]
    by_hand = np.zeros(256, np.float32)
    for i in range(256):
        j = i // 32                                          # sub-block
        byte = qs[32 * (j // 2) + i % 32]                    # run j // 2 holds sub-blocks 2r and 2r + 1
        q = (byte >> 4) if j % 2 else (byte & 0x0F)          # ... in its low and high nibbles
        by_hand[i] = np.float32(d * np.float32(sc[j])) * np.float32(q) - np.float32(dmin * np.float32(m[j]))
    for i in (0, 32, 200):
        j = i // 32
        print(f"w[{i:3d}]: sub-block {j}, q = {int(round((by_hand[i] + dmin * m[j]) / (d * sc[j])))}, "
              f"d*sc = {float(d * np.float32(sc[j])):.8g}, dmin*m = {float(dmin * np.float32(m[j])):.8g}, "
              f"w = {float(by_hand[i]):.8g}  (the weight was {float(x[i]):.8g})")

    ours = quants.dequantize(block, quants.ggml_type_id("Q4_K"), (256,))
    assert np.array_equal(by_hand.view(np.uint32), ours.view(np.uint32))
    print("by hand == litetorch, bit for bit")
    if gguf_py is not None:
        ref = gguf_py.quants.dequantize(block.reshape(1, 144), gguf_py.GGMLQuantizationType.Q4_K).reshape(-1)
        assert np.array_equal(by_hand.view(np.uint32), ref.view(np.uint32))
        print("by hand == gguf.quants (llama.cpp's Python package), bit for bit")
    print(f"max |w - x| = {np.abs(by_hand - x).max():.4f} for weights up to |x| = {np.abs(x).max():.3f}")

# %% [markdown]
# Each sub-block gets its own step `d * sc[j]` and offset `dmin * m[j]`, so the 16 levels of a
# sub-block cover only that sub-block's range, and the scales themselves cost 12 bits per 32
# weights instead of Q4_1's 32.

# %%
if path.exists():
    steps = d * np.array(sc, np.float32)
    offsets = dmin * np.array(m, np.float32)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), height_ratios=[3, 2])
    for j in range(8):
        lo, hi = -offsets[j], -offsets[j] + 15 * steps[j]             # the 16 levels span [lo, hi]
        top.add_patch(plt.Rectangle((32 * j, lo), 32, hi - lo, color=f"C{j % 2}", alpha=0.12, lw=0))
        top.hlines(-offsets[j] + steps[j] * np.arange(16), 32 * j, 32 * j + 32, color=f"C{j % 2}", lw=0.3, alpha=0.5)
    top.plot(np.arange(256), x, ".", ms=3, color="k", label="weight")
    top.plot(np.arange(256), by_hand, "_", ms=5, color="C3", label="Q4_K value")
    top.set_xlim(0, 256)
    top.set_xticks(range(0, 257, 32))
    top.set_ylabel("weight")
    top.set_title("one Q4_K super-block: each 32-weight sub-block has its own 16 levels", fontsize=9)
    top.legend(fontsize=8, loc="lower right")
    width = 0.4
    bottom.bar(np.arange(8) - width / 2, sc, width, label="scale code sc[j] (step = d * sc[j])")
    bottom.bar(np.arange(8) + width / 2, m, width, label="min code m[j] (offset = dmin * m[j])")
    bottom.set_xticks(range(8))
    bottom.set_xlabel("sub-block j")
    bottom.set_ylim(0, 80)
    bottom.axhline(63, color="gray", lw=0.5, ls=":")
    bottom.set_ylabel("6-bit code (0..63)")
    bottom.legend(fontsize=8, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(OUT / "10-kquant-superblock.png", dpi=120)
    print("saved", OUT / "10-kquant-superblock.png")

# %% [markdown]
# ## K-quants against the 32-weight formats
# Rows of 1536 weights (a multiple of 256): Gaussian weights, and SmolLM2's `blk.0.ffn_down`.
# Q4_K costs 4.5 bits per weight like Q4_0, and has Q4_1's offset on top.

# %%
if path.exists():
    ffn_down = f.dequantize("blk.0.ffn_down.weight")[::2]                       # [288, 1536]
    gaussian = rng.standard_normal((256, 1536), dtype=np.float32)
    k_formats = ["Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q4_1", "Q5_K", "Q6_K", "Q8_0"]
    k_bits = {t: 8 * quants.tensor_nbytes((256,), quants.ggml_type_id(t)) / 256 for t in k_formats}
    k_results = {label: {t: relative_rms_error(x, t) for t in k_formats}
                 for label, x in [("Gaussian", gaussian), ("blk.0.ffn_down (stored as Q4_1)", ffn_down)]}
    print(f"{'format':6s} {'bits/weight':>11s}   " + "   ".join(f"{label:>32s}" for label in k_results))
    for t in k_formats:
        print(f"{t:6s} {k_bits[t]:11.4g}   " + "   ".join(f"{k_results[label][t]:32.2e}" for label in k_results))
    g = k_results["Gaussian"]
    assert g["Q2_K"] > g["Q3_K"] > g["Q4_K"] > g["Q5_K"] > g["Q6_K"] > g["Q8_0"]
    assert g["Q4_K"] < g["Q4_1"] < g["Q4_0"]                # fewer bits than Q4_1, and less error

# %% [markdown]
# ## Q4_K_M: mostly Q4_K, some Q6_K
# `llama-quantize ... Q4_K_M` does not store every matrix the same way. The output matrix (or a
# tied embedding) gets Q6_K, and so do `attn_v` and `ffn_down` in the layers where errors hurt
# most: the first eighth, the last eighth, and every third layer in between. Everything else is
# Q4_K. For a 30-layer model like SmolLM2:

# %%
def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule (llama-quant.cpp) for which layers' attn_v/ffn_down get Q6_K in Q4_K_M."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


more_bits = [i for i in range(30) if use_more_bits(i, 30)]
print(f"Q6_K attn_v and ffn_down in layers {more_bits} ({len(more_bits)} of 30)")
if path.exists():
    eligible = sorted({name.split(".", 2)[-1] for name, info in f.tensors.items()
                       if len(info.shape) == 2 and info.shape[1] % 256 == 0})
    print(f"SmolLM2 matrices whose rows are a multiple of 256 (can be K-quants): {eligible}")
    print("every other matrix has rows of 576; llama.cpp falls back to Q5_0 for Q4_K, Q8_0 for Q6_K")
    f.close()
