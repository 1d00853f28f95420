"""ggml's quantized block formats, dequantized (and quantized) in NumPy.

A GGUF tensor is a flat run of bytes plus a *ggml type*. Plain types (F32, F16, BF16) store one
number per weight. Block types cut each row into blocks of 32 weights and store, per block, one or
two half-precision numbers (a scale, maybe a minimum) and 32 small integers:

    type   bytes/block   layout (little-endian)                           weight        bits/weight
    Q8_0   34            d: fp16 | qs: 32 x int8                          w = d * q        8.5
    Q4_0   18            d: fp16 | qs: 16 bytes, two 4-bit q per byte     w = d * (q - 8)  4.5
    Q4_1   20            d: fp16 | m: fp16 | qs: 16 bytes of nibbles      w = d * q + m    5.0
    Q5_0   22            d: fp16 | qh: 4 bytes | qs: 16 bytes of nibbles  w = d * (q - 16) 5.5
    Q5_1   24            d: fp16 | m: fp16 | qh: 4 bytes | qs: 16 bytes   w = d * q + m    6.0

In the 4-bit types, byte j of `qs` holds weight j in its LOW nibble and weight j + 16 in its
HIGH nibble (not j and j + 1): the low nibbles are elements 0..15, the high nibbles 16..31.
The 5-bit types add a fifth bit per weight: bit j of `qh`, read as a little-endian uint32.
The K-quants (Q2_K..Q6_K, super-blocks of 256 weights) live in kquants.py and the ternary TQ2_0 in
tquants.py; both are registered in the dispatch tables below.

Every function here works on all blocks at once (no Python loop over blocks). The dequantizers
are bit-identical to `gguf.quants.dequantize` (the reference used by llama.cpp's Python tools and
by HF transformers), and the quantizers byte-identical to ggml's reference quantizers
(`quantize_row_q8_0_ref` etc. in ggml-quants.c, mirrored by `gguf.quants.quantize`). The tests
in tests/test_gguf.py check both claims.

Shapes: `blocks` is `[n_blocks, bytes_per_block]` uint8; a dequantizer returns
`[n_blocks, 32]` float32. `dequantize(raw, ggml_type, shape)` glues that to a tensor of `shape`.
"""
from __future__ import annotations

import numpy as np

from litetorch.errors import ModelFormatError, ShapeError
from litetorch.io import kquants, tquants

# ggml type id -> (name, weights per block, bytes per block). The ids are part of the file
# format (ggml.h `enum ggml_type`); gaps are types that were removed from ggml long ago.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),      # fp16 d + 16 bytes of nibbles
    3: ("Q4_1", 32, 20),      # fp16 d + fp16 m + 16 bytes of nibbles
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),      # fp16 d + 32 int8
    9: ("Q8_1", 32, 36),      # fp16 d + fp16 s + 32 int8 (gguf-py still says 40: the old float d, s)
    10: ("Q2_K", 256, 84),    # the "K-quants": super-blocks of 256 weights
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}
GGML_TYPE_IDS: dict[str, int] = {name: type_id for type_id, (name, _, _) in GGML_TYPES.items()}

QK = 32  # weights per block in Q8_0 / Q4_0 / Q4_1 (QK8_0 = QK4_0 = QK4_1 = 32 in ggml)


def ggml_type_name(type_id: int) -> str:
    """'Q4_1' for 3, and so on; an id ggml does not know gives 'unknown ggml type 99'."""
    entry = GGML_TYPES.get(int(type_id))
    return entry[0] if entry else f"unknown ggml type {int(type_id)}"


def ggml_type_id(name: str) -> int:
    """3 for 'Q4_1' (case-insensitive); an unknown name raises ModelFormatError."""
    type_id = GGML_TYPE_IDS.get(str(name).upper())
    if type_id is None:
        raise ModelFormatError(f"unknown ggml type name {name!r}; known: {', '.join(GGML_TYPE_IDS)}")
    return type_id


def tensor_nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    """Bytes a tensor of NumPy `shape` takes when stored as `ggml_type` (rows split into blocks)."""
    _, block_size, type_size = GGML_TYPES[ggml_type]
    n_elements = 1
    for dim in shape:
        n_elements *= int(dim)
    return n_elements // block_size * type_size


def _fp16(two_bytes: np.ndarray) -> np.ndarray:
    """[n, 2] uint8 (little-endian IEEE half) -> [n, 1] float32, exactly."""
    return two_bytes.view("<f2").astype(np.float32)


# lesson 10: begin
# lesson 10: begin (Q8_0) exercise
def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """Q8_0: [n, 34] uint8 -> [n, 32] float32.   w = d * q

    bytes 0..1   d   fp16 scale (the block's largest |w| / 127)
    bytes 2..33  q   32 signed int8, one per weight, in order
    """
    d = _fp16(blocks[:, 0:2])                          # [n, 1]
    q = blocks[:, 2:34].view(np.int8)                  # [n, 32], reinterpret the bytes as signed
    return d * q.astype(np.float32)                    # [n, 1] * [n, 32] -> [n, 32]
# lesson 10: end (Q8_0) exercise


# lesson 10: begin (nibbles) exercise
def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] uint8 -> [n, 32] uint8 in 0..15: low nibbles are weights 0..15, high ones 16..31."""
    low = qs & 0x0F                                    # [n, 16] weights 0..15
    high = qs >> 4                                     # [n, 16] weights 16..31
    return np.concatenate([low, high], axis=1)         # [n, 32]
# lesson 10: end (nibbles) exercise


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0: [n, 18] uint8 -> [n, 32] float32.   w = d * (q - 8)

    bytes 0..1   d   fp16 scale (the block's largest-magnitude weight / -8)
    bytes 2..17  qs  16 bytes, each holding two unsigned 4-bit q (0..15); q - 8 is in -8..7
    """
    d = _fp16(blocks[:, 0:2])                                       # [n, 1]
    q = _unpack_nibbles(blocks[:, 2:18]).astype(np.int8) - 8        # [n, 32] in -8..7
    return d * q.astype(np.float32)                                 # [n, 32]


# lesson 10: begin (Q4_1) exercise
def dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Q4_1: [n, 20] uint8 -> [n, 32] float32.   w = d * q + m

    bytes 0..1   d   fp16 step  ((max - min) / 15)
    bytes 2..3   m   fp16 minimum of the block
    bytes 4..19  qs  16 bytes, two unsigned 4-bit q (0..15) each
    An offset m lets 16 levels cover [min, max] even when the weights are not centred on 0.
    """
    d = _fp16(blocks[:, 0:2])                                       # [n, 1]
    m = _fp16(blocks[:, 2:4])                                       # [n, 1]
    q = _unpack_nibbles(blocks[:, 4:20]).astype(np.float32)         # [n, 32] in 0..15
    return d * q + m                                                # [n, 32]
# lesson 10: end (Q4_1) exercise
# lesson 10: end


def _unpack_high_bits(qh: np.ndarray) -> np.ndarray:
    """[n, 4] uint8, a little-endian uint32 per block -> [n, 32] uint8 in 0..1: bit j for weight j."""
    return np.unpackbits(qh, axis=1, bitorder="little")


def dequantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    """Q5_0: [n, 22] uint8 -> [n, 32] float32.   w = d * (q - 16), q = low nibble | fifth bit << 4

    bytes 0..1   d   fp16 scale (the block's largest-magnitude weight / -16)
    bytes 2..5   qh  the fifth bit of each weight
    bytes 6..21  qs  the low four bits, packed like Q4_0's
    """
    d = _fp16(blocks[:, 0:2])                                                   # [n, 1]
    q = _unpack_nibbles(blocks[:, 6:22]) | (_unpack_high_bits(blocks[:, 2:6]) << 4)   # [n, 32] in 0..31
    return d * (q.astype(np.int8) - 16).astype(np.float32)                      # [n, 32]


def dequantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    """Q5_1: [n, 24] uint8 -> [n, 32] float32.   w = d * q + m, q = low nibble | fifth bit << 4

    bytes 0..1 d, 2..3 m (fp16), 4..7 qh, 8..23 qs: Q4_1 with a fifth bit, as in Q5_0.
    """
    d = _fp16(blocks[:, 0:2])                                                   # [n, 1]
    m = _fp16(blocks[:, 2:4])                                                   # [n, 1]
    q = _unpack_nibbles(blocks[:, 8:24]) | (_unpack_high_bits(blocks[:, 4:8]) << 4)   # [n, 32] in 0..31
    return d * q.astype(np.float32) + m                                         # [n, 32]


def dequantize_bf16(raw: np.ndarray) -> np.ndarray:
    """BF16: the top 16 bits of a float32 (same exponent range, 8 bits of mantissa). [n] uint16 -> float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


_BLOCK_DEQUANTIZERS = {"Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1,
                       "Q5_0": dequantize_q5_0, "Q5_1": dequantize_q5_1, **kquants.DEQUANTIZERS,
                       **tquants.DEQUANTIZERS}
SUPPORTED_DEQUANTIZE = ("F32", "F16", "BF16", "I8", *_BLOCK_DEQUANTIZERS)

# Weights dequantized per step of `dequantize`. A block dequantizer makes a few temporaries the size
# of its output; on 64k blocks they outgrow the CPU caches and every pass goes to memory. In steps of
# 256k weights (1 MB of float32) the same work measured 2-3x faster here (Q4_K: 70 -> 220 M weights/s),
# and the temporaries stay a few MB however large the tensor.
CHUNK_WEIGHTS = 1 << 18


def check_dequantizable(ggml_type: int, tensor: str = "<tensor>") -> str:
    """The type's name, or a ModelFormatError naming the tensor, the type and every supported type."""
    name = ggml_type_name(ggml_type)
    if name not in SUPPORTED_DEQUANTIZE:
        raise ModelFormatError(
            f"tensor {tensor!r} has ggml type {int(ggml_type)} ({name}), which litetorch cannot "
            f"dequantize; supported types: {', '.join(SUPPORTED_DEQUANTIZE)}")
    return name


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...], tensor: str = "<tensor>",
               out: np.ndarray | None = None) -> np.ndarray:
    """Turn a tensor's raw bytes into numbers.

    raw:   [n_bytes] uint8, exactly `tensor_nbytes(shape, ggml_type)` bytes
    shape: NumPy order (slowest dimension first; the last dimension is the one cut into blocks)
    out:   optional float32 or float64 array of `shape` to write into (float64 receives the float32
           values exactly); by default a fresh float32 array
    ->     `out`, or a fresh writable float32 array of `shape` (never a view of the file)
    """
    name = check_dequantizable(ggml_type, tensor)
    expected = tensor_nbytes(shape, ggml_type)
    if raw.size != expected:
        raise ModelFormatError(
            f"tensor {tensor!r} ({name}, shape {tuple(shape)}) needs {expected} bytes, got {raw.size}")
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != tuple(shape) or out.dtype not in (np.float32, np.float64) or not out.flags.c_contiguous:
        raise ShapeError(f"out must be a C-contiguous float32/float64 array of shape {tuple(shape)}, "
                         f"got {out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not contiguous)'}")
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    flat = out.reshape(-1)                                               # a view: out is C-contiguous
    if name == "F32":
        flat[...] = raw.view("<f4")
    elif name == "F16":
        flat[...] = raw.view("<f2")
    elif name == "BF16":
        flat[...] = dequantize_bf16(raw.view("<u2"))
    elif name == "I8":  # plain int8 values (litetorch's packed ternary bytes are read with GGUFFile.raw)
        flat[...] = raw.view(np.int8)
    else:
        _, per_block, type_size = GGML_TYPES[ggml_type]
        blocks = raw.reshape(-1, type_size)                              # [n_blocks, type_size]
        values = flat.reshape(-1, per_block)                             # [n_blocks, weights per block]
        step = max(1, CHUNK_WEIGHTS // per_block)
        for i in range(0, len(blocks), step):                            # same numbers as one call, faster
            values[i:i + step] = _BLOCK_DEQUANTIZERS[name](blocks[i:i + step])
    return out


# ---------------------------------------------------------------------------------------------
# Quantizers: float32 [..., K] -> uint8 [..., K // 32 * bytes_per_block], with K a multiple of 32.
# They follow ggml's reference quantizers operation by operation, all in float32, so the bytes
# match llama.cpp's exactly (including the -0.0 scale of an all-zero Q4_0 block).
# ---------------------------------------------------------------------------------------------

def _to_blocks(x: np.ndarray, type_name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """[..., K] float -> ([n_blocks, 32] float32, leading shape)."""
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] % QK != 0:
        raise ShapeError(
            f"{type_name} quantizes rows in blocks of {QK}; the last dimension must be a multiple "
            f"of {QK}, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK), x.shape[:-1]


def _inverse(d: np.ndarray) -> np.ndarray:
    """1 / d, and 0 where d == 0 (ggml: `id = d ? 1.0f/d : 0.0f`), in float32."""
    return np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0)


def _round_half_away_from_zero(x: np.ndarray) -> np.ndarray:
    """C's roundf: 2.5 -> 3, -2.5 -> -3 (np.round would give 2, -2: round half to even)."""
    a = np.abs(x)
    r = np.floor(a)
    r += (a - r) >= 0.5        # a - floor(a) is exact in float32, so the tie test is exact too
    return np.copysign(r, x)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """[n, 32] uint8 in 0..15 -> [n, 16] uint8: weight j in the low nibble, j + 16 in the high one."""
    return q[:, :16] | (q[:, 16:] << 4)


def _half_bytes(v: np.ndarray) -> np.ndarray:
    """[n, 1] float32 -> [n, 2] uint8: round to IEEE half (nearest-even, like ggml's FP32_TO_FP16)."""
    return v.astype("<f2").view(np.uint8)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q8_0 bytes [..., K // 32 * 34]. d = max|w| / 127, q = roundf(w / d)."""
    blocks, lead = _to_blocks(x, "Q8_0")                               # [n, 32]
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)    # [n, 1]
    q = _round_half_away_from_zero(blocks * _inverse(d)).astype(np.int8)
    out = np.concatenate([_half_bytes(d), q.view(np.uint8)], axis=1)   # [n, 34]
    return out.reshape(*lead, -1)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q4_0 bytes [..., K // 32 * 18]. d = (weight of largest |w|) / -8.

    Dividing by -8 (not 7) maps the extreme weight exactly to q - 8 = -8, the one level the
    asymmetric range -8..7 has on that side; the other side gets at most 7 levels.
    """
    blocks, lead = _to_blocks(x, "Q4_0")                               # [n, 32]
    i_max = np.abs(blocks).argmax(axis=1)[:, None]                     # first index of max |w|
    d = np.take_along_axis(blocks, i_max, axis=1) / np.float32(-8)     # [n, 1], signed
    # (int8_t)(w * id + 8.5f) truncates toward zero; the result is in 0..16, clamp to 15.
    q = np.minimum(np.trunc(blocks * _inverse(d) + np.float32(8.5)), 15).astype(np.uint8)
    out = np.concatenate([_half_bytes(d), _pack_nibbles(q)], axis=1)   # [n, 18]
    return out.reshape(*lead, -1)


def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q4_1 bytes [..., K // 32 * 20]. d = (max - min) / 15, m = min."""
    blocks, lead = _to_blocks(x, "Q4_1")                               # [n, 32]
    w_min = blocks.min(axis=1, keepdims=True)                          # [n, 1]
    w_max = blocks.max(axis=1, keepdims=True)
    d = (w_max - w_min) / np.float32(15)
    q = np.minimum(np.trunc((blocks - w_min) * _inverse(d) + np.float32(0.5)), 15).astype(np.uint8)
    out = np.concatenate([_half_bytes(d), _half_bytes(w_min), _pack_nibbles(q)], axis=1)  # [n, 20]
    return out.reshape(*lead, -1)


def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q5_0 bytes [..., K // 32 * 22]. d = (weight of largest |w|) / -16, like Q4_0."""
    blocks, lead = _to_blocks(x, "Q5_0")                               # [n, 32]
    i_max = np.abs(blocks).argmax(axis=1)[:, None]                     # first index of max |w|
    d = np.take_along_axis(blocks, i_max, axis=1) / np.float32(-16)    # [n, 1], signed
    # (int8_t)(w * id + 16.5f) truncates toward zero; the result is in 0..32, clamp to 31.
    q = np.minimum(np.trunc(blocks * _inverse(d) + np.float32(16.5)), 31).astype(np.uint8)
    qh = np.packbits(q >> 4, axis=1, bitorder="little")                # [n, 4]: bit j = weight j's fifth bit
    out = np.concatenate([_half_bytes(d), qh, _pack_nibbles(q & 0x0F)], axis=1)   # [n, 22]
    return out.reshape(*lead, -1)


def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    """float [..., K] -> Q5_1 bytes [..., K // 32 * 24]. d = (max - min) / 31, m = min."""
    blocks, lead = _to_blocks(x, "Q5_1")                               # [n, 32]
    w_min = blocks.min(axis=1, keepdims=True)                          # [n, 1]
    w_max = blocks.max(axis=1, keepdims=True)
    d = (w_max - w_min) / np.float32(31)
    # C writes (uint8_t)(v + 0.5f) unclamped; v exceeds 31 by a rounding at most, so the clamp
    # (gguf-py's) never changes a byte.
    q = np.minimum(np.trunc((blocks - w_min) * _inverse(d) + np.float32(0.5)), 31).astype(np.uint8)
    qh = np.packbits(q >> 4, axis=1, bitorder="little")                # [n, 4]
    out = np.concatenate([_half_bytes(d), _half_bytes(w_min), qh, _pack_nibbles(q & 0x0F)], axis=1)  # [n, 24]
    return out.reshape(*lead, -1)


def quantize_bf16(x: np.ndarray) -> np.ndarray:
    """float [...] -> BF16 bit patterns [...] uint16 (round to nearest even; NaN stays a quiet NaN)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16
    quiet_nan = (bits >> 16) | 0x40
    return np.where(is_nan, quiet_nan, rounded).astype(np.uint16)


_QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1,
               "Q5_0": quantize_q5_0, "Q5_1": quantize_q5_1, **kquants.QUANTIZERS, **tquants.QUANTIZERS}
SUPPORTED_QUANTIZE = ("F32", "F16", "BF16", "I8", *_QUANTIZERS)


def quantize(x: np.ndarray, type_name: str) -> np.ndarray:
    """float array -> the bytes GGUF stores for it as `type_name`, as a flat uint8 array."""
    type_name = str(type_name).upper()
    if type_name == "F32":
        data = np.asarray(x, dtype="<f4")
    elif type_name == "F16":
        data = np.asarray(x, dtype="<f2")
    elif type_name == "BF16":
        data = quantize_bf16(x).astype("<u2")
    elif type_name == "I8":  # int8 values, stored as they are
        data = np.asarray(x, dtype=np.int8)
    elif type_name in _QUANTIZERS:
        data = _QUANTIZERS[type_name](x)
    else:
        raise ModelFormatError(
            f"litetorch cannot write ggml type {type_name!r}; supported: {', '.join(SUPPORTED_QUANTIZE)}")
    return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
