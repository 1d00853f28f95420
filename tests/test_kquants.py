"""K-quants (Q2_K..Q6_K, Q8_K): litetorch's NumPy code against llama.cpp's own Python package.

The reference is `gguf.quants` (gguf-py, from the llama.cpp repository). It dequantizes every
K-quant but quantizes none, so the quantizers are checked through it: gguf-py must read our bytes
exactly as we do, every weight must sit on the level nearest to it given the scales stored in
its block, and the round-trip error must stay within the per-type bounds stated below.
"""
from pathlib import Path

import numpy as np
import pytest

from litetorch.errors import ModelFormatError, ShapeError
from litetorch.io import kquants, quants
from litetorch.io.gguf import GGUFFile, write_gguf

ROOT = Path(__file__).resolve().parent.parent
STORAGE_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]       # what gguf-py can dequantize
ALL_TYPES = STORAGE_TYPES + ["Q8_K"]

# fp16 bit patterns a scale can take that stress the conversion: zeros, subnormals, the
# smallest normal, one, the largest finite value, and their negatives.
SPECIAL_HALVES = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x83FF, 0x0400, 0x8400,
                           0x3C00, 0xBC00, 0x7BFF, 0xFBFF], dtype=np.uint16)


@pytest.fixture(scope="module")
def gguf_py():
    return pytest.importorskip("gguf")


def bits(a: np.ndarray) -> np.ndarray:
    """float32 -> uint32 bit patterns: equality that tells -0.0 from 0.0 and matches NaN payloads."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def reference_dequantize(gguf_py, data: np.ndarray, type_name: str) -> np.ndarray:
    """Any uint8 array of whole blocks -> [n_blocks, 256] float32, by gguf-py."""
    blocks = data.reshape(-1, kquants.LAYOUTS[type_name].itemsize)
    return gguf_py.quants.dequantize(blocks, gguf_py.GGMLQuantizationType[type_name]).reshape(len(blocks), -1)


def valid_blocks(type_name: str, n: int, seed: int) -> np.ndarray:
    """[n, bytes_per_block] uint8: random blocks whose fp16 scales are finite (never inf or NaN).

    Block 0 is all zero bytes and block 1 all 0xFF (before its scales are made finite), so the
    extreme codes of every field appear; blocks 2..145 take each special fp16 value of
    SPECIAL_HALVES in d (and, shifted, in dmin), the rest random finite halves.
    """
    layout = kquants.LAYOUTS[type_name]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, layout.itemsize), dtype=np.uint8)
    raw[0], raw[1] = 0x00, 0xFF
    records = raw.view(layout).reshape(-1)
    for k, field in enumerate(name for name in ("d", "dmin") if layout.fields.get(name, [None])[0] == "<f2"):
        halves = records[field].view(np.uint16)                       # a view: writes go to raw
        special = halves[2:146]
        special[:] = np.resize(np.roll(SPECIAL_HALVES, k), special.size)
        halves[(halves & 0x7C00) == 0x7C00] &= np.uint16(0xFBFF)      # exponent 31 (inf/NaN) -> 30
    return raw


N_CODES = {"Q2_K": 16, "Q3_K": 64, "Q4_K": 64, "Q5_K": 64, "Q6_K": 256}   # 4-, 6-, 6-, 6-, 8-bit scales


def scale_codes(type_name: str, raw: np.ndarray) -> list[np.ndarray]:
    """The integer scale (and min) codes of every block: [n, sub-blocks] arrays."""
    records = raw.view(kquants.LAYOUTS[type_name]).reshape(-1)
    if type_name in ("Q4_K", "Q5_K"):
        return list(kquants.unpack_scales_q4_k(records["scales"]))
    if type_name == "Q3_K":
        return [kquants.unpack_scales_q3_k(records["scales"])]
    if type_name == "Q2_K":
        return [records["scales"] & 0x0F, records["scales"] >> 4]
    return [records["scales"]]                                        # Q6_K: int8


# --- the block layouts -----------------------------------------------------------------------

@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_block_layouts_have_ggml_sizes(type_name, gguf_py):
    _, block_size, type_size = quants.GGML_TYPES[quants.ggml_type_id(type_name)]
    assert (block_size, kquants.LAYOUTS[type_name].itemsize) == (kquants.QK_K, type_size)
    qtype = gguf_py.GGMLQuantizationType[type_name]
    assert gguf_py.constants.GGML_QUANT_SIZES[qtype] == (block_size, type_size)


# --- dequantization, bit for bit -----------------------------------------------------------------

@pytest.mark.parametrize("type_name", STORAGE_TYPES)
def test_dequantize_is_bit_identical_to_gguf_py_on_valid_blocks(type_name, gguf_py):
    n = 4096 if type_name == "Q6_K" else 2048          # Q6_K's 8-bit scales have 256 codes to cover
    raw = valid_blocks(type_name, n, seed=STORAGE_TYPES.index(type_name))
    # The claim covers every code of every scale/min field, at every sub-block position:
    for codes in scale_codes(type_name, raw):
        for position in codes.T:
            assert len(np.unique(position)) == N_CODES[type_name]
    halves = {int(v) for f in ("d", "dmin") if f in kquants.LAYOUTS[type_name].names
              for v in raw.view(kquants.LAYOUTS[type_name])[f].view(np.uint16).ravel()}
    assert set(SPECIAL_HALVES.tolist()) <= halves

    ours = kquants.DEQUANTIZERS[type_name](raw)
    assert ours.dtype == np.float32 and ours.shape == (n, 256)
    assert np.array_equal(bits(ours), bits(reference_dequantize(gguf_py, raw, type_name)))


@pytest.mark.parametrize("type_name", STORAGE_TYPES)
def test_dequantize_matches_gguf_py_even_with_inf_and_nan_scales(type_name, gguf_py):
    raw = np.random.default_rng(7).integers(0, 256, (1024, kquants.LAYOUTS[type_name].itemsize), dtype=np.uint8)
    with np.errstate(all="ignore"):
        ours = kquants.DEQUANTIZERS[type_name](raw)
        expected = reference_dequantize(gguf_py, raw, type_name)
    assert np.isnan(ours).any()                                       # the case is really exercised
    assert np.array_equal(bits(ours), bits(expected))


def test_q8_k_dequantizes_to_its_float32_scale_times_its_int8_quants():
    raw = valid_blocks("Q8_K", 64, seed=3)
    raw[:, 0:4] = np.random.default_rng(3).standard_normal((64, 1)).astype("<f4").view(np.uint8)
    expected = np.stack([np.frombuffer(b[0:4].tobytes(), "<f4")[0] * np.frombuffer(b[4:260].tobytes(), np.int8)
                         for b in raw])                               # bytes 0..3 float32 d, 4..259 int8 q
    assert np.array_equal(bits(kquants.dequantize_q8_k(raw)), bits(expected))


def test_a_q4_k_block_decodes_as_the_lesson_says():
    """Lesson 10's recipe, by hand: sub-block j's scale and min, then w = d*sc*q - dmin*m."""
    block = np.zeros(144, np.uint8)
    block[0:2] = np.array([0.5], "<f2").view(np.uint8)                # d
    block[2:4] = np.array([0.25], "<f2").view(np.uint8)               # dmin
    sc = np.array([1, 2, 3, 63, 40, 17, 0, 33])                       # 6-bit scales, sub-blocks 0..7
    m = np.array([5, 0, 63, 9, 48, 1, 2, 31])                         # 6-bit mins
    block[4:8] = sc[:4] | ((sc[4:] >> 4) << 6)                        # the packing of the lesson
    block[8:12] = m[:4] | ((m[4:] >> 4) << 6)
    block[12:16] = (sc[4:] & 15) | ((m[4:] & 15) << 4)
    q = np.arange(256) % 16                                           # weight i gets q = i mod 16
    for r in range(4):                                                # run r: sub-blocks 2r (low), 2r+1 (high)
        block[16 + 32 * r:48 + 32 * r] = q[64 * r:64 * r + 32] | (q[64 * r + 32:64 * r + 64] << 4)
    expected = np.repeat(0.5 * sc, 32) * q - np.repeat(0.25 * m, 32)  # exact: every term is a short binary fraction
    assert np.array_equal(kquants.dequantize_q4_k(block[None])[0], expected.astype(np.float32))


def test_dequantize_dispatch_handles_k_quant_tensors(gguf_py):
    raw = valid_blocks("Q4_K", 6, seed=5)                             # a [3, 512] tensor: 2 super-blocks a row
    out = quants.dequantize(raw.reshape(-1), quants.ggml_type_id("Q4_K"), (3, 512))
    assert out.shape == (3, 512) and out.dtype == np.float32
    assert np.array_equal(bits(out), bits(reference_dequantize(gguf_py, raw, "Q4_K").reshape(3, 512)))
    with pytest.raises(ModelFormatError, match="needs 864 bytes, got 863"):
        quants.dequantize(raw.reshape(-1)[:-1], quants.ggml_type_id("Q4_K"), (3, 512))


@pytest.mark.parametrize("type_name", ["IQ2_XXS", "TQ1_0", "IQ4_XS"])
def test_unsupported_types_raise_model_format_error_naming_type_and_supported(type_name):
    type_id = quants.ggml_type_id(type_name)
    _, _, type_size = quants.GGML_TYPES[type_id]
    with pytest.raises(ModelFormatError, match=rf"'w' has ggml type {type_id} \({type_name}\).*supported types: "
                                               r"F32, F16, BF16, I8, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, "
                                               r"Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, TQ2_0$"):
        quants.dequantize(np.zeros(type_size, np.uint8), type_id, (256,), tensor="w")
    with pytest.raises(ModelFormatError, match=rf"{type_name}.*supported: .*Q6_K"):
        quants.quantize(np.zeros(256, np.float32), type_name)


# --- quantization ---------------------------------------------------------------------------------

def sample_rows(rng) -> dict[str, np.ndarray]:
    """Rows of 1024 weights (4 super-blocks) from several distributions, all at scale ~1."""
    outliers = rng.standard_normal((64, 1024)).astype(np.float32)
    outliers[np.arange(64), rng.integers(0, 1024, 64)] *= 50
    return {
        "gaussian": rng.standard_normal((64, 1024)).astype(np.float32),
        "laplace": rng.laplace(size=(64, 1024)).astype(np.float32),
        "student-t, 2 dof": rng.standard_t(2, (64, 1024)).astype(np.float32),
        "uniform": rng.uniform(-1, 1, (64, 1024)).astype(np.float32),
        "positive": (np.abs(rng.standard_normal((16, 1024))) + 3).astype(np.float32),
        "one outlier a row": outliers,
    }


def edge_rows(rng) -> np.ndarray:
    """[8, 1024]: super-blocks that take the quantizers' special branches."""
    x = rng.standard_normal((8, 1024)).astype(np.float32)
    x[0] = 0                                             # all zero: every scale 0
    x[1, :256] = 0.25                                    # constant: max == min in every sub-block
    x[2, :256] = (rng.integers(-16, 16, 256) * 0.5)      # exact .5 ties for nearest_int
    x[3, 256:512] = 0                                    # one zero super-block among others
    x[4, :16] = 0                                        # one zero sub-block (Q6_K/Q3_K: L = 0 there)
    x[5, :256] = np.linspace(-1, 1, 256)                 # two extremes of equal magnitude
    x[6, :256] = -2.0                                    # constant negative
    x[7, 100] = 1e3                                      # one huge weight
    return x


# Worst round-trip error of a weight, as a fraction of its super-block's largest |w|. MEASURED,
# not derived: the worst case over sample_rows and edge_rows with seeds 0..5, the same
# distributions at 512 rows each (seed 123), and SmolLM2's ffn_down of blocks 0, 10 and 29 was
# Q2_K 0.429, Q3_K 0.279, Q4_K 0.119, Q5_K 0.065, Q6_K 0.022 (always on uniform data); the
# bounds add about 25%.
# Q8_K's is derived: q = round(w / d) with d = max|w| / 127, so the error is at most d / 2, plus
# four float32 roundings of numbers up to 127 steps (< 2**-13 of d / 2). The bounds assume weights
# of ordinary size: in a super-block whose weights are all tiny (below ~1e-4 for Q4_K), d falls
# deep into fp16's subnormals or to zero, and the error can reach the weights themselves.
MAX_ERROR_PER_ABSMAX = {"Q2_K": 0.53, "Q3_K": 0.35, "Q4_K": 0.15, "Q5_K": 0.08, "Q6_K": 0.028,
                        "Q8_K": 0.5 / 127 * (1 + 2**-13)}
# RMS error / RMS of Gaussian weights, measured with the gaussian rows of sample_rows (seeds
# 0..5): Q2_K 0.298, Q3_K 0.152, Q4_K 0.072, Q5_K 0.036, Q6_K 0.018, Q8_K 0.0070; bounds +10%. For
# comparison, uniform rounding with Q4_K's step (~4.1 sigma / 15 over 32 weights) would give
# 4.1 / 15 / sqrt(12) = 0.079: the scale search does a little better than the plain grid.
MAX_GAUSSIAN_RMS_ERROR = {"Q2_K": 0.33, "Q3_K": 0.166, "Q4_K": 0.079, "Q5_K": 0.040, "Q6_K": 0.020, "Q8_K": 0.0077}


def round_trip(type_name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = quants.quantize(x, type_name)
    return data, quants.dequantize(data, quants.ggml_type_id(type_name), x.shape)


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_quantized_bytes_read_the_same_in_gguf_py_and_error_stays_within_bounds(type_name, gguf_py, rng):
    for label, x in {**sample_rows(rng), "edge cases": edge_rows(rng)}.items():
        data, back = round_trip(type_name, x)
        assert data.dtype == np.uint8 and data.size == quants.tensor_nbytes(x.shape, quants.ggml_type_id(type_name))
        if type_name != "Q8_K":                           # gguf-py cannot read Q8_K
            assert np.array_equal(bits(back), bits(reference_dequantize(gguf_py, data, type_name).reshape(x.shape)))
        err = np.abs(back - x).reshape(-1, 256).max(axis=1)
        absmax = np.abs(x).reshape(-1, 256).max(axis=1)
        assert np.all(err <= MAX_ERROR_PER_ABSMAX[type_name] * absmax), (label, float((err / absmax).max()))
        if label == "gaussian":
            rms = float(np.sqrt(np.mean((back - x) ** 2) / np.mean(x ** 2)))
            assert rms <= MAX_GAUSSIAN_RMS_ERROR[type_name], rms


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_zero_weights_quantize_to_all_zero_bytes_and_come_back_as_zeros(type_name):
    data, back = round_trip(type_name, np.zeros((2, 512), np.float32))
    assert not data.any()                                 # d = dmin = 0, every scale and quant 0
    assert np.all(back == 0)                              # Q6_K gives -0.0: (0 * 0) * (0 - 32)


def decoded_sub_block_scales(type_name: str, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per weight: the step d * sc and offset dmin * m its block stores, both [N, 256] float32."""
    b = data.reshape(-1, kquants.LAYOUTS[type_name].itemsize).view(kquants.LAYOUTS[type_name]).reshape(-1)
    d = b["d"].astype(np.float32)[:, None]
    if type_name in ("Q4_K", "Q5_K"):
        sc, m = kquants.unpack_scales_q4_k(b["scales"])
        step, offset = d * sc, b["dmin"].astype(np.float32)[:, None] * m
    elif type_name == "Q2_K":
        step, offset = d * (b["scales"] & 15), b["dmin"].astype(np.float32)[:, None] * (b["scales"] >> 4)
    else:
        step = d * (kquants.unpack_scales_q3_k(b["scales"]) if type_name == "Q3_K" else b["scales"])
        offset = np.zeros_like(step)
    repeat = 256 // step.shape[1]
    return np.repeat(step, repeat, axis=1), np.repeat(offset, repeat, axis=1)


@pytest.mark.parametrize("type_name", STORAGE_TYPES)
def test_every_weight_takes_the_level_nearest_to_it_given_the_stored_scales(type_name, rng):
    """ggml's last step re-quantizes every weight against the scales as stored (rounded to 6 bits
    and fp16), so each weight lands on the nearest of its sub-block's levels, up to float32 rounding."""
    levels = {"Q2_K": (0, 3), "Q3_K": (-4, 3), "Q4_K": (0, 15), "Q5_K": (0, 31), "Q6_K": (-32, 31)}[type_name]
    for x in (rng.standard_normal((32, 1024)).astype(np.float32), edge_rows(rng)):
        data, back = round_trip(type_name, x)
        step, offset = decoded_sub_block_scales(type_name, data)
        xs, back = x.reshape(-1, 256), back.reshape(-1, 256)
        live = step != 0                                  # a zero step leaves the search's L in place
        candidates = step[..., None] * np.arange(levels[0], levels[1] + 1, dtype=np.float32) - offset[..., None]
        nearest = np.abs(candidates - xs[..., None]).min(axis=-1)
        slack = 1e-6 * (np.abs(xs) + np.abs(step) + np.abs(offset))
        assert np.all(np.abs(back - xs)[live] <= nearest[live] + slack[live])


def test_q8_k_stores_int8_quants_their_sums_and_a_float32_scale():
    x = np.random.default_rng(1).standard_normal((3, 512)).astype(np.float32)
    b = kquants.quantize_q8_k(x).reshape(-1, 292).view(kquants.BLOCK_Q8_K).reshape(-1)
    blocks = x.reshape(-1, 256)
    i_max = np.abs(blocks).argmax(axis=1)
    assert np.all(b["qs"][np.arange(6), i_max] == -127)   # the largest |w| lands on -127 ...
    d = blocks[np.arange(6), i_max].astype(np.float64) / -127
    assert np.all(np.abs(b["d"] - d) <= np.abs(d) * 2**-22)   # ... d = that w / -127 (1 / (-127 / w) in float32)
    assert np.array_equal(b["bsums"], b["qs"].reshape(6, 16, 16).sum(axis=2))


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_quantizers_keep_the_leading_shape_and_refuse_partial_super_blocks(type_name):
    fn = kquants.QUANTIZERS[type_name]
    assert fn(np.ones((2, 3, 512), np.float32)).shape == (2, 3, 2 * kquants.LAYOUTS[type_name].itemsize)
    with pytest.raises(ShapeError, match=rf"{type_name} .* multiple of 256, got shape \(4, 576\)"):
        fn(np.ones((4, 576), np.float32))


def test_nearest_int_rounds_half_to_even_like_ggml():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999998, 1e6 + 0.5, -3.7], np.float32)
    assert kquants.nearest_int(x).tolist() == [0, 2, 2, 0, -2, 2, 1_000_000, -4]      # np.round agrees here


# --- GGUF files with K-quant tensors ----------------------------------------------------------------

def test_write_k_quant_tensors_then_read_back_with_litetorch_and_gguf_py(tmp_path, rng, gguf_py):
    tensors = {f"blk.0.{t.lower()}.weight": rng.standard_normal((3, 512)).astype(np.float32) * 0.02
               for t in STORAGE_TYPES}
    tensors["blk.0.attn_norm.weight"] = np.ones(512, np.float32)
    types = {f"blk.0.{t.lower()}.weight": t for t in STORAGE_TYPES}
    path = write_gguf(tmp_path / "k.gguf", {"general.architecture": "llama"}, tensors, types)

    reader = gguf_py.GGUFReader(path)
    with GGUFFile(path) as f:
        for t in reader.tensors:
            info = f.tensors[t.name]
            assert info.type_name == t.tensor_type.name == types.get(t.name, "F32")
            assert info.shape == tuple(reversed(t.shape.tolist())) == tensors[t.name].shape
            expected_bytes = quants.quantize(tensors[t.name], info.type_name)
            assert np.array_equal(f.raw(t.name), expected_bytes)                    # what we meant to write
            assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), expected_bytes)   # what gguf-py reads
            expected = gguf_py.quants.dequantize(t.data, t.tensor_type).reshape(info.shape)
            assert np.array_equal(bits(f.dequantize(t.name)), bits(expected))


def test_we_read_k_quant_tensors_written_by_gguf_py(tmp_path, rng, gguf_py):
    w = gguf_py.GGUFWriter(tmp_path / "ref.gguf", arch="llama")
    blocks = {t: valid_blocks(t, 4, seed=11) for t in STORAGE_TYPES}            # [4, bytes]: shape (2, 512)
    for t, raw in blocks.items():
        w.add_tensor(t, raw.reshape(2, -1), raw_dtype=gguf_py.GGMLQuantizationType[t])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with GGUFFile(tmp_path / "ref.gguf") as f:
        for t, raw in blocks.items():
            assert (f.tensors[t].type_name, f.tensors[t].shape) == (t, (2, 512))
            expected = reference_dequantize(gguf_py, raw, t).reshape(2, 512)
            assert np.array_equal(bits(f.dequantize(t)), bits(expected))
