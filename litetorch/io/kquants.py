"""ggml's K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K), read and written in NumPy.

The legacy formats (quants.py) give each block of 32 weights its own fp16 scale: 16 bits of
overhead per 32 weights. The K-quants cut a row into **super-blocks of 256 weights** and spend the
bits in two levels: one or two fp16 numbers per super-block (`d`, and `dmin` for the types that
have an offset), and per *sub-block* of 16 or 32 weights a small integer scale (4, 6 or 8 bits)
that multiplies them. Rows must therefore be a multiple of 256 weights long.

    type  bytes  sub-blocks    per sub-block            weight                         bits/weight
    Q2_K    84   16 x 16 w     4-bit scale, 4-bit min   w = d*sc*q - dmin*m, q 0..3        2.625
    Q3_K   110   16 x 16 w     6-bit scale              w = d*(sc - 32)*(q - 4), q 0..7    3.4375
    Q4_K   144    8 x 32 w     6-bit scale, 6-bit min   w = d*sc*q - dmin*m, q 0..15       4.5
    Q5_K   176    8 x 32 w     6-bit scale, 6-bit min   w = d*sc*q - dmin*m, q 0..31       5.5
    Q6_K   210   16 x 16 w     int8 scale               w = d*sc*(q - 32), q 0..63         6.5625
    Q8_K   292   (one scale)   float32 d, int8 q, 16 int16 sums of q    w = d*q              9.125

Q8_K is not a storage type: llama.cpp quantizes *activations* to it for its dot products. It is
here because it costs a few lines.

Each block layout is written below as a NumPy structured dtype, field for field the C struct of
ggml-common.h, so `raw.view(BLOCK_Q4_K)["scales"]` reads like `block->scales`. The dequantizers
work on all super-blocks at once and are bit-identical to `gguf.quants.dequantize` (and to
llama.cpp's `dequantize_row_q4_K` & co., which compute in the same float32 order). The quantizers
are ggml's reference algorithm (`quantize_row_q4_K_ref` & co. in ggml-quants.c, the path
`llama-quantize` takes without an importance matrix), vectorised across sub-blocks; see the
section header below for what "faithful" means there.

Shapes: a dequantizer takes `blocks` `[n, bytes_per_block]` uint8 and returns `[n, 256]` float32;
a quantizer takes float `[..., K]` (K a multiple of 256) and returns uint8 `[..., K // 256 * bytes]`.
"""
from __future__ import annotations

import numpy as np

from litetorch.errors import ShapeError

QK_K = 256               # weights per super-block (ggml's QK_K)

# ---------------------------------------------------------------------------------------------
# Block layouts: one record per super-block. "<f2" is a little-endian IEEE half (ggml_half).
# ---------------------------------------------------------------------------------------------
BLOCK_Q2_K = np.dtype([
    ("scales", "u1", (16,)),   # per 16 weights: low nibble = 4-bit scale, high nibble = 4-bit min
    ("qs", "u1", (64,)),       # 2-bit quants, four per byte
    ("d", "<f2"),              # super-block scale for the scales
    ("dmin", "<f2"),           # super-block scale for the mins
])
BLOCK_Q3_K = np.dtype([
    ("hmask", "u1", (32,)),    # the high (third) bit of every quant
    ("qs", "u1", (64,)),       # the low two bits, four quants per byte
    ("scales", "u1", (12,)),   # sixteen 6-bit scales, packed
    ("d", "<f2"),
])
# lesson 10: begin (Q4_K layout)
BLOCK_Q4_K = np.dtype([
    ("d", "<f2"),              # super-block scale for the 6-bit scales
    ("dmin", "<f2"),           # super-block scale for the 6-bit mins
    ("scales", "u1", (12,)),   # eight 6-bit scales and eight 6-bit mins, packed
    ("qs", "u1", (128,)),      # 4-bit quants, two per byte
])
# lesson 10: end (Q4_K layout)
BLOCK_Q5_K = np.dtype([
    ("d", "<f2"),
    ("dmin", "<f2"),
    ("scales", "u1", (12,)),   # packed exactly as in Q4_K
    ("qh", "u1", (32,)),       # the fifth bit of every quant
    ("qs", "u1", (128,)),      # the low four bits, two per byte
])
BLOCK_Q6_K = np.dtype([
    ("ql", "u1", (128,)),      # the low four bits of every quant
    ("qh", "u1", (64,)),       # the high two bits, four quants per byte
    ("scales", "i1", (16,)),   # one signed 8-bit scale per 16 weights
    ("d", "<f2"),
])
BLOCK_Q8_K = np.dtype([
    ("d", "<f4"),              # a float32 scale, not fp16
    ("qs", "i1", (256,)),
    ("bsums", "<i2", (16,)),   # sum of each 16 quants (saves work in dot products)
])
LAYOUTS = {"Q2_K": BLOCK_Q2_K, "Q3_K": BLOCK_Q3_K, "Q4_K": BLOCK_Q4_K,
           "Q5_K": BLOCK_Q5_K, "Q6_K": BLOCK_Q6_K, "Q8_K": BLOCK_Q8_K}


def _superblocks(blocks: np.ndarray, layout: np.dtype) -> np.ndarray:
    """[n, layout.itemsize] uint8 -> [n] records of `layout` (a view when `blocks` is contiguous)."""
    return np.ascontiguousarray(blocks, dtype=np.uint8).view(layout).reshape(-1)


def _fields(packed: np.ndarray, width: int) -> np.ndarray:
    """[..., B] uint8 -> [..., 8 // width, B]: every byte's `width`-bit fields, lowest bits first.

    ggml packs small quants *across* a run of bytes, not within one: with 2-bit quants, byte l of
    a 32-byte run holds weights l, l + 32, l + 64, l + 96 in bits 0-1, 2-3, 4-5, 6-7. So field k
    of the whole run is a contiguous stretch of weights, and this returns the stretches in order.
    """
    shifts = np.arange(0, 8, width, dtype=np.uint8)[:, None]                 # [8 // width, 1]
    return (packed[..., None, :] >> shifts) & np.uint8((1 << width) - 1)     # [..., 8 // width, B]


# ---------------------------------------------------------------------------------------------
# Dequantization
# ---------------------------------------------------------------------------------------------

# lesson 10: begin (6-bit scales)
def unpack_scales_q4_k(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: [n, 12] uint8 -> (sc, m), each [n, 8] uint8 in 0..63 (ggml's get_scale_min_k4).

    Eight 6-bit scales and eight 6-bit mins are 96 bits = 12 bytes:
        bytes 0..3    bits 0-5: sc[0..3]      bits 6-7: high two bits of sc[4..7]
        bytes 4..7    bits 0-5: m[0..3]       bits 6-7: high two bits of m[4..7]
        bytes 8..11   bits 0-3: low four bits of sc[4..7]   bits 4-7: low four bits of m[4..7]
    """
    a, b, c = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]               # [n, 4] each
    sc = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)     # [n, 8]
    m = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)        # [n, 8]
    return sc, m
# lesson 10: end (6-bit scales)


# lesson 10: begin (Q4_K)
def dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """Q4_K: [n, 144] uint8 -> [n, 256] float32.   w = (d * sc) * q - (dmin * m)

    Eight sub-blocks of 32 weights, each with a 6-bit scale sc and a 6-bit min m. The 128 bytes of
    qs are four runs of 32: run r holds sub-block 2r in its low nibbles, 2r + 1 in its high ones.
    """
    b = _superblocks(blocks, BLOCK_Q4_K)                                    # [n] records
    n = len(b)
    sc, m = unpack_scales_q4_k(b["scales"])                                 # [n, 8] each
    d = b["d"].astype(np.float32)[:, None] * sc                             # [n, 8] sub-block scales
    dmin = b["dmin"].astype(np.float32)[:, None] * m                        # [n, 8] sub-block offsets
    q = _fields(b["qs"].reshape(n, 4, 32), 4).reshape(n, 8, 32)             # [n, 4, 2, 32] -> [n, 8, 32]
    w = d[:, :, None] * q - dmin[:, :, None]                                # [n, 8, 32]; only the - rounds
    return w.reshape(n, QK_K)
# lesson 10: end (Q4_K)


def dequantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    """Q5_K: [n, 176] uint8 -> [n, 256] float32.   w = (d * sc) * q - (dmin * m), q = low | high << 4

    Q4_K plus a fifth bit per weight: bit k of qh[l] belongs to weight l of sub-block k.
    """
    b = _superblocks(blocks, BLOCK_Q5_K)
    n = len(b)
    sc, m = unpack_scales_q4_k(b["scales"])                                 # [n, 8] each
    d = b["d"].astype(np.float32)[:, None] * sc                             # [n, 8]
    dmin = b["dmin"].astype(np.float32)[:, None] * m                        # [n, 8]
    low = _fields(b["qs"].reshape(n, 4, 32), 4).reshape(n, 8, 32)           # [n, 8, 32] in 0..15
    high = _fields(b["qh"], 1)                                              # [n, 8, 32] in 0..1
    q = low | (high << 4)                                                   # [n, 8, 32] in 0..31
    return (d[:, :, None] * q - dmin[:, :, None]).reshape(n, QK_K)


def dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Q6_K: [n, 210] uint8 -> [n, 256] float32.   w = (d * sc) * (q - 32), q = low | high << 4

    Two halves of 128 weights, each four groups of 32. In half h, group g takes its low nibbles
    from ql[64h + 32 (g % 2) + l] (low nibble for g < 2, high for g >= 2) and its high two bits
    from bits 2g, 2g + 1 of qh[32h + l]. Sub-block j (16 weights) has the int8 scale sc[j].
    """
    b = _superblocks(blocks, BLOCK_Q6_K)
    n = len(b)
    low = _fields(b["ql"].reshape(n, 2, 64), 4).reshape(n, 2, 4, 32)        # [n, 2, 2, 64] -> [n, 2, 4, 32]
    high = _fields(b["qh"].reshape(n, 2, 32), 2)                            # [n, 2, 4, 32]
    q = (low | (high << 4)).astype(np.int8) - np.int8(32)                   # [n, 2, 4, 32] in -32..31
    d = b["d"].astype(np.float32)[:, None] * b["scales"]                    # [n, 16]
    return (d[:, :, None] * q.reshape(n, 16, 16)).reshape(n, QK_K)          # [n, 16, 16] -> [n, 256]


def unpack_scales_q3_k(scales: np.ndarray) -> np.ndarray:
    """Q3_K: [n, 12] uint8 -> [n, 16] int8, the sixteen 6-bit scales minus 32 (so in -32..31).

        bytes 0..7    low nibbles: low four bits of scales 0..7;  high nibbles: of scales 8..15
        bytes 8..11   bits 2k, 2k + 1 of byte 8 + i: the high two bits of scale 4k + i
    """
    low = np.concatenate([scales[:, 0:8] & 0x0F, scales[:, 0:8] >> 4], axis=1)    # [n, 16]
    high = _fields(scales[:, 8:12], 2).reshape(-1, 16)                            # [n, 4, 4] -> [n, 16]
    return (low | (high << 4)).astype(np.int8) - np.int8(32)                      # [n, 16]


def dequantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    """Q3_K: [n, 110] uint8 -> [n, 256] float32.   w = (d * sc) * q, q = low - (4 if high bit clear)

    The low two bits are packed like Q2_K's; weight j's high bit is bit j // 32 of hmask[j % 32].
    The high bit is stored inverted: set means q = low (0..3), clear means q = low - 4 (-4..-1).
    """
    b = _superblocks(blocks, BLOCK_Q3_K)
    n = len(b)
    low = _fields(b["qs"].reshape(n, 2, 32), 2).reshape(n, QK_K)             # [n, 2, 4, 32] -> [n, 256]
    high = _fields(b["hmask"], 1).reshape(n, QK_K)                           # [n, 8, 32] -> [n, 256]
    q = low.astype(np.int8) - ((high ^ 1) << 2).astype(np.int8)              # [n, 256] in -4..3
    d = b["d"].astype(np.float32)[:, None] * unpack_scales_q3_k(b["scales"])  # [n, 16]
    return (d[:, :, None] * q.reshape(n, 16, 16)).reshape(n, QK_K)


def dequantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    """Q2_K: [n, 84] uint8 -> [n, 256] float32.   w = (d * sc) * q - (dmin * m), q in 0..3

    Two halves of 128 weights; in half h, byte qs[32h + l] holds weights 128h + l + 32k in bits
    2k, 2k + 1. scales[j] holds sub-block j's 4-bit scale (low nibble) and 4-bit min (high).
    """
    b = _superblocks(blocks, BLOCK_Q2_K)
    n = len(b)
    q = _fields(b["qs"].reshape(n, 2, 32), 2).reshape(n, 16, 16)             # [n, 2, 4, 32] -> [n, 16, 16]
    d = b["d"].astype(np.float32)[:, None] * (b["scales"] & 0x0F)            # [n, 16]
    dmin = b["dmin"].astype(np.float32)[:, None] * (b["scales"] >> 4)        # [n, 16]
    return (d[:, :, None] * q - dmin[:, :, None]).reshape(n, QK_K)


def dequantize_q8_k(blocks: np.ndarray) -> np.ndarray:
    """Q8_K: [n, 292] uint8 -> [n, 256] float32.   w = d * q (bsums are not needed to dequantize)."""
    b = _superblocks(blocks, BLOCK_Q8_K)
    return b["d"].astype(np.float32)[:, None] * b["qs"]                     # [n, 256]


DEQUANTIZERS = {"Q2_K": dequantize_q2_k, "Q3_K": dequantize_q3_k, "Q4_K": dequantize_q4_k,
                "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k, "Q8_K": dequantize_q8_k}


# ---------------------------------------------------------------------------------------------
# Quantization: ggml's reference algorithm, vectorised across sub-blocks.
#
# Each function below follows its C counterpart in ggml-quants.c statement by statement, in
# float32, with C's evaluation order: products and sums are rounded where C rounds them, sums
# over a sub-block run left to right (`_sum_in_order`; np.sum's pairwise tree rounds
# differently), searches keep the first best candidate, and per-block `if`/`continue` become
# masks. Compared once, outside the test suite, with a transcription of ggml-quants.c compiled
# by GCC with -ffp-contract=off, the bytes were identical on all 10,752 super-blocks per type
# tried (Gaussian, heavy-tailed, constant, zero and SmolLM2 weights). What is not reproduced is a
# compiler's liberty to fuse `a * b + c` into one FMA instruction: the same C built with
# -O3 -march=native (GNU C fuses by default) wrote different bytes in 0-92% of the blocks,
# depending on type and data. Current x86-64 llama.cpp builds compile ggml-quants.c without
# CPU-specific flags, so they do not fuse. No C runs in the test suite: the tests check the
# round trip through gguf-py's dequantizer, the nearest-level property and the error bounds.
# ---------------------------------------------------------------------------------------------

GROUP_MAX_EPS = np.float32(1e-15)   # ggml: a group whose largest |x| is below this is all zero


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, literally: float32 -> int32, round half to even, for |x| <= 2**22.

    Adding 1.5 * 2**23 leaves a float32 whose last ulp is 1, so the FPU's rounding of the sum
    is the rounding to an integer, which then sits in the low 23 bits of the bit pattern. Out
    of range (or NaN) it returns what the C code returns, garbage included.
    """
    shifted = np.asarray(x, dtype=np.float32) + np.float32(12582912.0)     # 1.5 * 2**23
    return (shifted.view(np.int32) & 0x007FFFFF) - 0x00400000


def _sum_in_order(terms: np.ndarray) -> np.ndarray:
    """[G, n] float32 -> [G]: 0 + t[0] + t[1] + ... left to right, like C's `s += t[i]` loop."""
    total = np.zeros(terms.shape[0], dtype=np.float32)
    for i in range(terms.shape[1]):
        total += terms[:, i]
    return total


def _first_absmax(x: np.ndarray) -> np.ndarray:
    """[G, n] -> [G]: the x of largest |x|, the first one on ties (C: `if (ax > amax) max = x`)."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)[:, 0]


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit w ~ scale * L - min with L in 0..nmax, for every group at once (ggml's make_qkx2_quants).

    x, weights: [G, n] float32 (n = 16 or 32). Returns (scale [G], min [G] >= 0, L [G, n] uint8).
    Start from the grid spanning [min(x, 0), max(x)], then try nstep + 1 stretched grids
    ((nmax + rmin + rdelta * i) steps over the range); for each, solve the weighted least-squares
    scale and offset for those L, and keep it if its weighted error (|.| or squared) is lower.
    """
    f32 = np.float32
    x_max = x.max(axis=1)
    x_min = np.minimum(x.min(axis=1), f32(0))              # C: if (min > 0) min = 0
    flat = x_max == x_min                                  # C returns L = 0, scale 0 for these
    sum_w = weights[:, 0].copy()                           # C starts these sums at element 0
    sum_x = sum_w * x[:, 0]
    for i in range(1, x.shape[1]):
        sum_w += weights[:, i]
        sum_x += weights[:, i] * x[:, i]

    def weighted_error(scale, offset, L):                  # sum of w * |scale * L + offset - x|  (or ^2)
        diff = (scale[:, None] * L + offset[:, None]) - x
        return _sum_in_order(weights * (np.abs(diff) if use_mad else diff * diff))

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f32(nmax) / (x_max - x_min)
        scale = f32(1) / iscale
        L = np.clip(nearest_int(iscale[:, None] * (x - x_min[:, None])), 0, nmax)
        best_error = weighted_error(scale, x_min, L.astype(f32))
        for step in range(nstep + 1 if nstep >= 1 else 0):
            # C updates `min` when a candidate wins, and the next grids start from it.
            iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (x_max - x_min)
            L_try = np.clip(nearest_int(iscale[:, None] * (x - x_min[:, None])), 0, nmax).astype(f32)
            wl = weights * L_try
            sum_l, sum_l2, sum_xl = _sum_in_order(wl), _sum_in_order(wl * L_try), _sum_in_order(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            positive = this_min > 0                        # the offset may only lower the weights
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            this_min = np.where(positive, f32(0), this_min)
            error = weighted_error(this_scale, this_min, L_try)
            better = ~flat & (D > 0) & (error < best_error)
            L = np.where(better[:, None], L_try.astype(L.dtype), L)
            best_error = np.where(better, error, best_error)
            scale = np.where(better, this_scale, scale)
            x_min = np.where(better, this_min, x_min)
    L[flat] = 0
    return np.where(flat, f32(0), scale), -x_min, L.astype(np.uint8)


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit x ~ scale * (L - nmax) with L in 0..2 nmax - 1 (ggml's make_qx_quants, rmse_type 1, no qw).

    x: [G, n] float32 -> (scale [G], L [G, n] uint8). The grid puts the largest-|x| weight on
    -nmax; then 18 slightly stretched grids are tried, each scored by the x**2-weighted
    least-squares fit sum(w x l)**2 / sum(w l l), and the best one's least-squares scale is kept.
    """
    f32 = np.float32
    x_absmax = _first_absmax(x)
    zero = np.abs(x_absmax) < GROUP_MAX_EPS
    w = x * x                                              # rmse_type 1: weight each x by x**2

    def fit(iscale):
        l = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1).astype(f32)
        return l, _sum_in_order(w * x * l), _sum_in_order(w * l * l)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        l, sumlx, suml2 = fit(f32(-nmax) / x_absmax)
        L = l + f32(nmax)
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0))
        best = scale * sumlx
        for step in (*range(-9, 0), *range(1, 10)):
            l, sumlx, suml2 = fit(-(f32(nmax) + f32(0.1) * f32(step)) / x_absmax)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better[:, None], l + f32(nmax), L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    L[zero] = 0
    return np.where(zero, f32(0), scale), L.astype(np.uint8)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit x ~ scale * (L - nmax), L in 0..2 nmax - 1, by coordinate descent (make_q3_quants, do_rmse).

    x: [G, n] float32 -> (scale [G], L [G, n] uint8). From the grid that puts the largest-|x|
    weight on -nmax, up to five sweeps move one L at a time to the level that best fits it given
    the others, keeping a move only if it raises sum(w x l)**2 / sum(w l l) (w = x**2).
    """
    f32 = np.float32
    x_absmax = _first_absmax(x)
    zero = np.abs(x_absmax) < GROUP_MAX_EPS
    w = x * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        L = np.clip(nearest_int((f32(-nmax) / x_absmax)[:, None] * x), -nmax, nmax - 1).astype(f32)
        sumlx, suml2 = _sum_in_order(w * x * L), _sum_in_order(w * L * L)
        active = ~zero                                     # groups whose last sweep changed something
        for _ in range(5):
            changed = np.zeros_like(active)
            for i in range(x.shape[1]):                    # one weight at a time, as in C
                wi, xi, li = w[:, i], x[:, i], L[:, i]
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                new_l = np.clip(nearest_int(xi * sl2 / slx), -nmax, nmax - 1).astype(f32)
                slx_new = slx + wi * xi * new_l
                sl2_new = sl2 + wi * new_l * new_l
                take = (active & (slx > 0) & (new_l != li) & (sl2_new > 0)
                        & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new))
                L[:, i] = np.where(take, new_l, li)
                sumlx = np.where(take, slx_new, sumlx)
                suml2 = np.where(take, sl2_new, suml2)
                changed |= take
            active &= changed
            if not active.any():
                break
        scale = np.where(suml2 > 0, sumlx / suml2, f32(0))
    L[zero] = 0
    return np.where(zero, f32(0), scale), np.where(zero[:, None], f32(0), L + f32(nmax)).astype(np.uint8)


def _to_superblocks(x: np.ndarray, type_name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """float [..., K] -> ([N, 256] float32, leading shape), K a multiple of 256."""
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] % QK_K != 0:
        raise ShapeError(
            f"{type_name} quantizes rows in super-blocks of {QK_K}; the last dimension must be a "
            f"multiple of {QK_K}, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK_K), x.shape[:-1]


def _as_bytes(records: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
    """[N] records -> uint8 [*lead, K // 256 * bytes_per_block]."""
    return records.view(np.uint8).reshape(*lead, -1)


def _pack_crumbs(L: np.ndarray) -> np.ndarray:
    """[N, 256] uint8 in 0..3 -> [N, 64]: the inverse of Q2_K/Q3_K's `_fields(qs, 2)` layout."""
    L = L.reshape(-1, 2, 4, 32)                                             # [N, half, field, l]
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def pack_scales_q4_k(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """([N, 8], [N, 8]) uint8 in 0..63 -> [N, 12] uint8: the inverse of unpack_scales_q4_k."""
    return np.concatenate([sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
                           m[:, :4] | ((m[:, 4:] >> 4) << 6),
                           (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)], axis=1)


def pack_scales_q3_k(ls: np.ndarray) -> np.ndarray:
    """[N, 16] uint8 in 0..63 (scale + 32) -> [N, 12] uint8: the inverse of unpack_scales_q3_k."""
    low = (ls[:, :8] & 0x0F) | ((ls[:, 8:] & 0x0F) << 4)                   # [N, 8]
    high = (ls >> 4).reshape(-1, 4, 4)                                      # [N, k, i]: scale 4k + i
    return np.concatenate([low, high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)], axis=1)


def _quantize_scale_min_k(x: np.ndarray, type_name: str, nmax: int, rmin: float, nstep: int):
    """The shared body of quantize_row_q4_K_ref and quantize_row_q5_K_ref.

    -> (records with d, dmin, scales filled; L [N, 8, 32] uint8 in 0..nmax; leading shape)
    """
    f32 = np.float32
    xb, lead = _to_superblocks(x, type_name)                                # [N, 256]
    n = len(xb)
    sub = xb.reshape(n * 8, 32)                                             # [N*8, 32] sub-blocks
    av_x = np.sqrt(_sum_in_order(sub * sub) / f32(32))                      # RMS of each sub-block
    weights = av_x[:, None] + np.abs(sub)                                   # favour large weights
    scales, mins, L = make_qkx2_quants(sub, weights, nmax, rmin, 0.1, nstep, use_mad=False)
    scales, mins, L = scales.reshape(n, 8), mins.reshape(n, 8), L.reshape(n, 8, 32)

    # Second level: the 8 float scales (and mins) become 6-bit multiples of d (and dmin).
    max_scale = np.maximum(scales.max(axis=1), f32(0))                      # [N]
    max_min = np.maximum(mins.max(axis=1), f32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, f32(63) / max_scale, f32(0))
        inv_min = np.where(max_min > 0, f32(63) / max_min, f32(0))
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)   # uint8_t wraps
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    out = np.zeros(n, LAYOUTS[type_name])
    out["scales"] = pack_scales_q4_k(ls, lm)
    out["d"] = max_scale / f32(63)                                          # rounded to fp16 on store
    out["dmin"] = max_min / f32(63)

    # Re-quantize each weight against the scales as stored (rounded), not as computed.
    d = out["d"].astype(f32)[:, None] * ls                                  # [N, 8]
    dm = out["dmin"].astype(f32)[:, None] * lm
    with np.errstate(divide="ignore", invalid="ignore"):
        L_new = np.clip(nearest_int((xb.reshape(n, 8, 32) + dm[:, :, None]) / d[:, :, None]), 0, nmax)
    L = np.where(d[:, :, None] != 0, L_new, L).astype(np.uint8)            # C: if (!d) continue
    return out, L, lead


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q4_K bytes [..., K // 256 * 144] (ggml's quantize_row_q4_K_ref)."""
    out, L, lead = _quantize_scale_min_k(x, "Q4_K", nmax=15, rmin=-1.0, nstep=20)
    L = L.reshape(-1, 4, 2, 32)                                             # [N, run, nibble, l]
    out["qs"] = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return _as_bytes(out, lead)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q5_K bytes [..., K // 256 * 176] (ggml's quantize_row_q5_K_ref)."""
    out, L, lead = _quantize_scale_min_k(x, "Q5_K", nmax=31, rmin=-0.5, nstep=15)
    low = (L & 0x0F).reshape(-1, 4, 2, 32)                                  # [N, run, nibble, l]
    out["qs"] = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    high = (L >> 4).astype(np.uint8)                                        # [N, 8, 32] in 0..1
    out["qh"] = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[:, None], axis=1)   # [N, 32]
    return _as_bytes(out, lead)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q6_K bytes [..., K // 256 * 210] (ggml's quantize_row_q6_K_ref)."""
    f32 = np.float32
    xb, lead = _to_superblocks(x, "Q6_K")                                   # [N, 256]
    n = len(xb)
    scales, L = make_qx_quants(xb.reshape(n * 16, 16), nmax=32)
    scales, L = scales.reshape(n, 16), L.reshape(n, 16, 16)
    max_scale = _first_absmax(scales)                                       # [N], signed
    zero = np.abs(max_scale) < GROUP_MAX_EPS                                # C: the whole block is 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f32(-128) / max_scale
        out = np.zeros(n, BLOCK_Q6_K)
        out["d"] = f32(1) / iscale
        out["scales"] = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
        d = out["d"].astype(f32)[:, None] * out["scales"]                  # [N, 16]
        L_new = np.clip(nearest_int(xb.reshape(n, 16, 16) / d[:, :, None]), -32, 31) + 32
    L = np.where(d[:, :, None] != 0, L_new, L).astype(np.uint8).reshape(n, 2, 4, 32)   # [N, half, g, l]
    low, high = L & 0x0F, L >> 4
    out["ql"] = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4),
                                low[:, :, 1] | (low[:, :, 3] << 4)], axis=2).reshape(n, 128)
    out["qh"] = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(n, 64)
    out[zero] = np.zeros(1, BLOCK_Q6_K)                                     # memset(&y[i], 0, ...)
    return _as_bytes(out, lead)


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q3_K bytes [..., K // 256 * 110] (ggml's quantize_row_q3_K_ref)."""
    f32 = np.float32
    xb, lead = _to_superblocks(x, "Q3_K")
    n = len(xb)
    scales, L = make_q3_quants(xb.reshape(n * 16, 16), nmax=4)
    scales, L = scales.reshape(n, 16), L.reshape(n, 16, 16)
    max_scale = _first_absmax(scales)                                       # [N], signed
    nonzero = max_scale != 0
    out = np.zeros(n, BLOCK_Q3_K)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f32(-32) / max_scale
        ls = np.clip(nearest_int(iscale[:, None] * scales).astype(np.int8), -32, 31) + 32   # int8_t l
        out["scales"] = np.where(nonzero[:, None], pack_scales_q3_k(ls.astype(np.uint8)), 0)
        out["d"] = np.where(nonzero, f32(1) / iscale, f32(0))
        d = out["d"].astype(f32)[:, None] * unpack_scales_q3_k(out["scales"])   # [N, 16]
        L_new = np.clip(nearest_int(xb.reshape(n, 16, 16) / d[:, :, None]), -4, 3) + 4
    L = np.where(d[:, :, None] != 0, L_new, L).astype(np.uint8).reshape(n, QK_K)   # in 0..7
    high = L >> 2                                                           # the bit hmask stores
    out["hmask"] = np.bitwise_or.reduce(high.reshape(n, 8, 32) << np.arange(8, dtype=np.uint8)[:, None], axis=1)
    out["qs"] = _pack_crumbs(L & 3)
    return _as_bytes(out, lead)


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q2_K bytes [..., K // 256 * 84] (ggml's quantize_row_q2_K_ref)."""
    f32 = np.float32
    xb, lead = _to_superblocks(x, "Q2_K")
    n = len(xb)
    sub = xb.reshape(n * 16, 16)
    scales, mins, L = make_qkx2_quants(sub, np.abs(sub), 3, -0.5, 0.1, 15, use_mad=True)
    scales, mins, L = scales.reshape(n, 16), mins.reshape(n, 16), L.reshape(n, 16, 16)
    max_scale = np.maximum(scales.max(axis=1), f32(0))
    max_min = np.maximum(mins.max(axis=1), f32(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(max_scale[:, None] > 0, nearest_int((f32(15) / max_scale)[:, None] * scales), 0)
        lm = np.where(max_min[:, None] > 0, nearest_int((f32(15) / max_min)[:, None] * mins), 0)
    out = np.zeros(n, BLOCK_Q2_K)
    out["scales"] = (ls | (lm << 4)) & 0xFF                                 # uint8_t wraps
    out["d"] = np.where(max_scale > 0, max_scale / f32(15), f32(0))
    out["dmin"] = np.where(max_min > 0, max_min / f32(15), f32(0))
    d = out["d"].astype(f32)[:, None] * (out["scales"] & 0x0F)              # [N, 16]
    dm = out["dmin"].astype(f32)[:, None] * (out["scales"] >> 4)
    with np.errstate(divide="ignore", invalid="ignore"):
        L_new = np.clip(nearest_int((xb.reshape(n, 16, 16) + dm[:, :, None]) / d[:, :, None]), 0, 3)
    L = np.where(d[:, :, None] != 0, L_new, L).astype(np.uint8)
    out["qs"] = _pack_crumbs(L.reshape(n, QK_K))
    return _as_bytes(out, lead)


def quantize_q8_k(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q8_K bytes [..., K // 256 * 292] (ggml's quantize_row_q8_K_ref).

    d = max / -127 for the weight of largest |w|, q = nearest_int(w / d) capped at 127. For an
    all-zero block ggml leaves `bsums` unwritten; here they are 0, which is their value anyway.
    """
    f32 = np.float32
    xb, lead = _to_superblocks(x, "Q8_K")
    x_absmax = _first_absmax(xb)
    zero = x_absmax == 0
    out = np.zeros(len(xb), BLOCK_Q8_K)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f32(-127) / x_absmax
        q = np.minimum(nearest_int(iscale[:, None] * xb), 127).astype(np.int8)
        out["d"] = np.where(zero, f32(0), f32(1) / iscale)
    out["qs"] = np.where(zero[:, None], 0, q)
    out["bsums"] = out["qs"].reshape(-1, 16, 16).sum(axis=2, dtype=np.int16)
    return _as_bytes(out, lead)


QUANTIZERS = {"Q2_K": quantize_q2_k, "Q3_K": quantize_q3_k, "Q4_K": quantize_q4_k,
              "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k, "Q8_K": quantize_q8_k}
