"""GGUF reading/writing and ggml's block formats, checked against llama.cpp's own Python package.

The reference is `gguf` (gguf-py from the llama.cpp repository): its GGUFReader for the file
structure and metadata, `gguf.quants` for the numbers. litetorch never imports it at runtime.
"""
import struct
from pathlib import Path

import numpy as np
import pytest

from litetorch.errors import DTypeError, ModelFormatError, ShapeError
from litetorch.io import quants
from litetorch.io.gguf import GGUFFile, TensorInfo, ggml_type_name, write_gguf

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gguf_py():
    return pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    with GGUFFile(smollm2_path) as f:
        yield f


@pytest.fixture(scope="module")
def reference_reader(smollm2_path, gguf_py):
    return gguf_py.GGUFReader(smollm2_path)          # ~5 s: parse once per module


def bits(a: np.ndarray) -> np.ndarray:
    """float32 -> uint32 bit patterns, so -0.0 != 0.0 and NaN == NaN in comparisons."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def reference_types(field) -> str:
    names = [t.name for t in field.types]          # e.g. [ARRAY, STRING]; [ARRAY, ARRAY, INT32] if nested
    return f"ARRAY[{names[1]}]" if names[0] == "ARRAY" else names[0]


# --- 1-3: the real SmolLM2 file --------------------------------------------------------------

@pytest.mark.slow
def test_every_smollm2_tensor_dequantizes_bit_identical_to_gguf_py(smollm2, reference_reader, gguf_py):
    assert list(smollm2.tensors) == [t.name for t in reference_reader.tensors]
    for t in reference_reader.tensors:
        info = smollm2.tensors[t.name]
        assert info.type_name == t.tensor_type.name
        assert info.shape == tuple(reversed(t.shape.tolist()))          # NumPy order = dims reversed
        assert (info.offset, info.n_bytes) == (t.data_offset, t.n_bytes)
        expected = gguf_py.quants.dequantize(t.data, t.tensor_type).reshape(info.shape)
        got = smollm2.dequantize(t.name)
        assert got.dtype == np.float32 and got.shape == info.shape
        assert np.array_equal(bits(got), bits(expected)), t.name


@pytest.mark.slow
def test_every_smollm2_metadata_value_equals_gguf_py(smollm2, reference_reader, gguf_py):
    fields = {k: f for k, f in reference_reader.fields.items() if not k.startswith("GGUF.")}
    assert list(smollm2.metadata) == list(fields)                        # same keys, same order
    assert smollm2.version == reference_reader.fields["GGUF.version"].contents()
    assert (smollm2.alignment, smollm2.data_offset) == (reference_reader.alignment, reference_reader.data_offset)
    for key, field in fields.items():
        value, expected = smollm2.metadata[key], field.contents()
        assert smollm2.metadata_types[key] == reference_types(field), key
        if isinstance(value, np.ndarray):                                # arrays of numbers
            assert value.dtype == gguf_py.GGUFReader.gguf_scalar_to_np[field.types[-1]], key
            assert value.tolist() == expected, key
        else:                                                            # str, int, float, bool, list[str]
            assert type(value) is type(expected) and value == expected, key


def test_smollm2_facts_read_from_the_file(smollm2):
    md = smollm2.metadata
    assert md["general.architecture"] == "llama"
    assert (md["llama.block_count"], md["llama.embedding_length"], md["llama.feed_forward_length"]) == (30, 576, 1536)
    assert (md["llama.attention.head_count"], md["llama.attention.head_count_kv"]) == (9, 3)
    assert md["llama.vocab_size"] == len(md["tokenizer.ggml.tokens"]) == len(md["tokenizer.ggml.token_type"]) == 49152
    assert md["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert md["tokenizer.ggml.eos_token_id"] == 2
    assert md["llama.rope.freq_base"] == 100000.0
    assert md["llama.attention.layer_norm_rms_epsilon"] == np.float32(1e-5)
    assert md["tokenizer.ggml.token_type"].dtype == np.int32

    t = smollm2.tensors
    assert len(t) == 2 + 9 * 30                        # token_embd, output_norm, 9 per block
    assert "output.weight" not in t                    # tied embeddings: the head reuses token_embd
    assert (t["token_embd.weight"].type_name, t["token_embd.weight"].shape) == ("Q8_0", (49152, 576))
    assert t["output_norm.weight"].type_name == "F32"
    head_dim = 576 // 9
    expected = {"attn_q": (576, 576), "attn_k": (3 * head_dim, 576), "attn_v": (3 * head_dim, 576),
                "attn_output": (576, 576), "ffn_gate": (1536, 576), "ffn_up": (1536, 576),
                "ffn_down": (576, 1536), "attn_norm": (576,), "ffn_norm": (576,)}
    for i in range(30):
        for part, shape in expected.items():
            info = t[f"blk.{i}.{part}.weight"]
            assert info.shape == shape
            assert info.type_name == ("F32" if len(shape) == 1 else "Q4_1")


# --- 4: round trips --------------------------------------------------------------------------

METADATA = {
    "general.architecture": "llama",
    "test.unicode": "héllo ✓ 🐳",
    "test.empty_string": "",
    "test.true": True,
    "test.false": False,
    "test.count": 30,                        # int -> UINT32
    "test.negative": -5,                     # int that is not a UINT32 -> INT64
    "test.big": 2**40,
    "test.bigger": 2**63 + 5,                # -> UINT64
    "test.float": 0.5,                       # float -> FLOAT32
    "test.eps": np.float32(1e-5),
    "test.f64": np.float64(0.1),
    "test.u8": np.uint8(255), "test.i8": np.int8(-128), "test.u16": np.uint16(65535), "test.i16": np.int16(-32768),
    "test.i32": np.int32(-7), "test.u32": np.uint32(2**32 - 1), "test.u64": np.uint64(2**64 - 1),
    "test.i64": np.int64(-2**63),
    "test.tokens": ["<|im_end|>", "", "Ġthe", "é"],
    "test.token_type": [1, 3, -1],           # list[int] -> ARRAY[INT32]
    "test.wide_ints": [1, 2**40],            # -> ARRAY[INT64]
    "test.scores": [0.0, -1.5, 2],           # list[float] -> ARRAY[FLOAT32]
    "test.flags": [True, False, True],
    "test.empty_list": [],                   # -> ARRAY[STRING]
    "test.u8_array": np.arange(5, dtype=np.uint8),
    "test.f64_array": np.array([0.1, -2.5]),
    "test.u64_array": np.array([2**64 - 1], dtype=np.uint64),
    "test.nested": [[1, 2], ["x", "y"], []],
}
METADATA_TYPES = {
    "test.unicode": "STRING", "test.true": "BOOL", "test.count": "UINT32", "test.negative": "INT64",
    "test.big": "INT64", "test.bigger": "UINT64", "test.float": "FLOAT32", "test.eps": "FLOAT32",
    "test.f64": "FLOAT64", "test.u8": "UINT8", "test.i8": "INT8", "test.u16": "UINT16", "test.i16": "INT16",
    "test.i32": "INT32", "test.u32": "UINT32", "test.u64": "UINT64", "test.i64": "INT64",
    "test.tokens": "ARRAY[STRING]", "test.token_type": "ARRAY[INT32]", "test.wide_ints": "ARRAY[INT64]",
    "test.scores": "ARRAY[FLOAT32]", "test.flags": "ARRAY[BOOL]", "test.empty_list": "ARRAY[STRING]",
    "test.u8_array": "ARRAY[UINT8]", "test.f64_array": "ARRAY[FLOAT64]", "test.u64_array": "ARRAY[UINT64]",
    "test.nested": "ARRAY[ARRAY]",
}
QUANT_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def assert_same_value(got, expected, key):
    if isinstance(expected, (list, tuple)) and not all(isinstance(v, str) for v in expected):
        if all(isinstance(v, (list, tuple, np.ndarray)) for v in expected):    # nested arrays
            assert len(got) == len(expected), key
            for g, e in zip(got, expected):
                assert_same_value(g, e, key)
            return
        assert isinstance(got, np.ndarray) and got.tolist() == list(expected), key   # dtype: METADATA_TYPES
    elif isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype and np.array_equal(got, expected), key
    else:
        assert got == expected, key


def sample_tensors(rng):
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((2, 2, 8)).astype(np.float16),
        "bf16": rng.standard_normal((4, 32)).astype(np.float32),
        "q8_0": rng.standard_normal((5, 64)).astype(np.float32),
        "q4_0": rng.standard_normal((3, 96)).astype(np.float32) * 0.02,
        "q4_1": rng.standard_normal((4, 2, 32)).astype(np.float32) + 1.0,      # 3-D, not centred on 0
    }


def write_sample(path, rng, alignment=32):
    tensors = sample_tensors(rng)
    types = {"bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}
    return write_gguf(path, METADATA, tensors, types, alignment=alignment), tensors, types


def max_error_bound(x: np.ndarray, type_name: str) -> np.ndarray:
    """Per-block worst case of the quantizer's error, with a little room for the fp16 scale rounding."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    if type_name == "Q8_0":        # half a step, the step being max|w| / 127
        bound = 0.6 * np.abs(blocks).max(1) / 127
    elif type_name == "Q4_0":      # a whole step on the side that has only 7 levels
        bound = 1.1 * np.abs(blocks).max(1) / 8
    else:                          # Q4_1: half a step, plus the fp16 rounding of the minimum
        bound = 0.6 * (blocks.max(1) - blocks.min(1)) / 15 + np.abs(blocks.min(1)) * 2**-10
    return np.repeat(bound, 32).reshape(x.shape)


@pytest.mark.parametrize("alignment", [32, 64, 1])
def test_write_then_read_round_trips_metadata_and_tensors(tmp_path, rng, alignment):
    path, tensors, types = write_sample(tmp_path / "m.gguf", rng, alignment)
    with GGUFFile(path) as f:
        assert f.version == 3 and f.alignment == alignment
        expected_keys = list(METADATA) + (["general.alignment"] if alignment != 32 else [])
        assert list(f.metadata) == expected_keys
        for key, value in METADATA.items():
            assert_same_value(f.metadata[key], value, key)
        for key, kind in METADATA_TYPES.items():
            assert f.metadata_types[key] == kind, key
        assert list(f.tensors) == list(tensors)
        for name, x in tensors.items():
            info = f.tensors[name]
            assert info.shape == x.shape and info.offset % alignment == 0
            assert info.type_name == types.get(name, "F16" if x.dtype == np.float16 else "F32")
            got = f.dequantize(name)
            assert got.dtype == np.float32
            if info.type_name in ("F32", "F16"):
                assert np.array_equal(got, x.astype(np.float32)), name
            elif info.type_name == "BF16":         # 7 stored mantissa bits: relative error <= 2**-8
                assert np.all(np.abs(got - x) <= np.abs(x) * 2**-8), name
            else:
                assert np.all(np.abs(got - x) <= max_error_bound(x, info.type_name)), name
            assert f.dequantize(name, dtype=np.float64).dtype == np.float64


def test_round_trip_bytes_and_values_equal_gguf_py(tmp_path, rng, gguf_py):
    path, tensors, types = write_sample(tmp_path / "m.gguf", rng)
    with GGUFFile(path) as f:
        for name, type_name in types.items():
            qtype = gguf_py.GGMLQuantizationType[type_name]
            reference_bytes = gguf_py.quants.quantize(tensors[name].astype(np.float32), qtype)
            assert np.array_equal(f.raw(name), reference_bytes.reshape(-1)), name
            expected = gguf_py.quants.dequantize(reference_bytes, qtype).reshape(tensors[name].shape)
            assert np.array_equal(bits(f.dequantize(name)), bits(expected)), name


def test_gguf_py_reads_files_we_write(tmp_path, rng, gguf_py):
    path, tensors, types = write_sample(tmp_path / "m.gguf", rng, alignment=64)
    reader = gguf_py.GGUFReader(path)
    assert [k for k in reader.fields if not k.startswith("GGUF.")] == list(METADATA) + ["general.alignment"]
    assert reader.alignment == 64
    for key, value in METADATA.items():
        if key != "test.nested":                    # gguf-py flattens nested arrays
            expected = value.tolist() if isinstance(value, np.ndarray) else value
            assert reader.fields[key].contents() == expected, key
    assert [t.name for t in reader.tensors] == list(tensors)
    for t in reader.tensors:
        assert tuple(reversed(t.shape.tolist())) == tensors[t.name].shape
        assert t.tensor_type.name == types.get(t.name, "F16" if t.name == "f16" else "F32")


def test_we_read_files_written_by_gguf_py(tmp_path, rng, gguf_py):
    Q, V = gguf_py.GGMLQuantizationType, gguf_py.GGUFValueType
    w = gguf_py.GGUFWriter(tmp_path / "ref.gguf", arch="llama")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 200); w.add_int8("t.i8", -100); w.add_uint16("t.u16", 60000); w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000); w.add_int32("t.i32", -2_000_000_000)
    w.add_uint64("t.u64", 2**64 - 1); w.add_int64("t.i64", -2**63)
    w.add_float32("t.f32", 0.1); w.add_float64("t.f64", 0.1); w.add_bool("t.bool", True)
    w.add_string("t.str", "naïve ✓")
    w.add_array("t.strings", ["a", "Ġb", "<|im_end|>"])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_key_value("t.nested", [[1, 2], [3]], V.ARRAY)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    for qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.BF16):
        w.add_tensor(qtype.name, gguf_py.quants.quantize(x, qtype), raw_dtype=qtype)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

    reader = gguf_py.GGUFReader(tmp_path / "ref.gguf")
    with GGUFFile(tmp_path / "ref.gguf") as f:
        assert f.alignment == 64
        assert list(f.metadata) == [k for k in reader.fields if not k.startswith("GGUF.")]
        for key, value in f.metadata.items():
            field = reader.fields[key]
            assert f.metadata_types[key] == reference_types(field), key
            if key == "t.nested":
                assert [v.tolist() for v in value] == [[1, 2], [3]]
            elif isinstance(value, np.ndarray):
                assert value.tolist() == field.contents(), key
            else:
                assert value == field.contents(), key
        for t in reader.tensors:
            expected = gguf_py.quants.dequantize(t.data, t.tensor_type).reshape(f.tensors[t.name].shape)
            assert np.array_equal(bits(f.dequantize(t.name)), bits(expected)), t.name


def test_version_2_files_read_the_same(tmp_path, rng):
    path, tensors, _ = write_sample(tmp_path / "v3.gguf", rng)
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    (tmp_path / "v2.gguf").write_bytes(data)
    with GGUFFile(tmp_path / "v2.gguf") as f:
        assert f.version == 2
        assert np.array_equal(f.dequantize("q4_1"), GGUFFile(path).dequantize("q4_1"))


def test_write_is_atomic(tmp_path, rng, monkeypatch):
    path, _, _ = write_sample(tmp_path / "m.gguf", rng)
    before = path.read_bytes()

    def broken(*args):
        raise RuntimeError("disk full")
    monkeypatch.setattr(quants, "quantize", broken)
    with pytest.raises(RuntimeError):
        write_gguf(path, {"a": 1}, {"w": np.zeros((2, 32), np.float32)})
    assert path.read_bytes() == before                      # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]     # and no temporary is left


def test_writer_rejects_what_gguf_cannot_hold(tmp_path):
    with pytest.raises(ShapeError, match="multiple of 32"):
        write_gguf(tmp_path / "a.gguf", {}, {"w": np.zeros((2, 33), np.float32)}, {"w": "Q4_0"})
    with pytest.raises(ModelFormatError, match="IQ2_XXS"):
        write_gguf(tmp_path / "a.gguf", {}, {"w": np.zeros((2, 256), np.float32)}, {"w": "IQ2_XXS"})
    with pytest.raises(DTypeError):
        write_gguf(tmp_path / "a.gguf", {"k": {1, 2}}, {})
    with pytest.raises(DTypeError, match="one type"):
        write_gguf(tmp_path / "a.gguf", {"k": [1, "a"]}, {})
    with pytest.raises(DTypeError):
        write_gguf(tmp_path / "a.gguf", {}, {"w": np.zeros((2, 32), np.int32)})
    assert list(tmp_path.iterdir()) == []


# --- 5: quantizers, byte for byte --------------------------------------------------------------

def tricky_rows(rng) -> np.ndarray:
    """[12, 256] float32: Gaussian rows at many scales, and blocks that stress the edge cases."""
    x = rng.standard_normal((12, 256)).astype(np.float32) * np.float32(10.0) ** rng.integers(-6, 4, (12, 1))
    x[0] = 0                                                    # all-zero blocks (d = 0, -0.0 for Q4_0)
    x[1, :32] = 0.25                                            # constant block (max == min)
    x[2, :64] = rng.integers(-16, 16, 64) * 0.5                 # exact ties at .5 for the rounding
    x[3, :32] = np.linspace(-1, 1, 32)                          # two extremes of equal magnitude
    x[4, :32] = 1e-8                                            # scale below fp16's smallest normal
    x[5, :32] = rng.uniform(-6e4, 6e4, 32)                      # scale near fp16's largest (65504)
    x[6] = np.abs(x[6]) + 3                                     # all positive, far from 0
    return x


@pytest.mark.parametrize("type_name", QUANT_TYPES + ["BF16"])
def test_quantizers_match_gguf_py_byte_for_byte(rng, gguf_py, type_name):
    qtype = gguf_py.GGMLQuantizationType[type_name]
    for x in (tricky_rows(rng), rng.standard_normal((64, 576)).astype(np.float32), np.zeros(32, np.float32)):
        ours = quants.quantize(x, type_name)
        reference = gguf_py.quants.quantize(x, qtype)
        assert np.array_equal(ours, reference.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("type_name", QUANT_TYPES)
def test_block_quantizers_keep_the_leading_shape(type_name):
    fn = getattr(quants, f"quantize_{type_name.lower()}")
    _, block_size, type_size = quants.GGML_TYPES[quants.ggml_type_id(type_name)]
    assert fn(np.ones((2, 3, 64), np.float32)).shape == (2, 3, 64 // block_size * type_size)


@pytest.mark.parametrize("type_name", QUANT_TYPES)
def test_block_dequantizers_are_bit_identical_to_gguf_py_on_random_blocks(gguf_py, type_name):
    _, _, type_size = quants.GGML_TYPES[quants.ggml_type_id(type_name)]
    raw = np.random.default_rng(2).integers(0, 256, (2000, type_size), dtype=np.uint8)
    with np.errstate(all="ignore"):                 # random fp16 scales include inf and NaN
        ours = quants.dequantize(raw.reshape(-1), quants.ggml_type_id(type_name), (2000, 32))
        expected = gguf_py.quants.dequantize(raw, gguf_py.GGMLQuantizationType[type_name]).reshape(2000, 32)
    assert np.array_equal(bits(ours), bits(expected))


def test_q8_0_rounds_half_away_from_zero_like_c():
    x = np.zeros(32, np.float32)
    x[:4] = [127, 2.5, -2.5, 0.5]                               # d = 1: q = roundf(x)
    q = quants.quantize_q8_0(x)[2:].view(np.int8)
    assert q[:4].tolist() == [127, 3, -3, 1]                    # np.round would give 2, -2, 0


def test_type_table_matches_gguf_py(gguf_py):
    known_to_gguf_py = {t.value for t in gguf_py.GGMLQuantizationType}     # older versions know fewer
    for type_id, (name, block_size, type_size) in quants.GGML_TYPES.items():
        if type_id not in known_to_gguf_py:
            continue
        ref = gguf_py.GGMLQuantizationType(type_id)
        assert ref.name == name == ggml_type_name(type_id)
        if name != "Q8_1":      # gguf-py keeps Q8_1's old float layout (40 bytes); ggml's is 36
            assert gguf_py.constants.GGML_QUANT_SIZES[ref] == (block_size, type_size), name
    assert ggml_type_name(99) == "unknown ggml type 99"


# --- 6: fuzzing ---------------------------------------------------------------------------------

def open_and_read_everything(path):
    """Open, then dequantize every tensor; anything but ModelFormatError escapes to fail the test."""
    with np.errstate(all="ignore"), GGUFFile(path) as f:       # random fp16 scales make inf/nan
        for name, info in f.tensors.items():
            assert f.dequantize(name).shape == info.shape
        return f.metadata


def mutate(data: bytes, rng) -> bytes:
    data = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:                                               # a few random bytes
        for i in rng.integers(0, len(data), rng.integers(1, 5)):
            data[i] = rng.integers(256)
    elif kind == 1:                                             # a huge or random 8-byte field
        i = int(rng.integers(0, len(data) - 8))
        data[i:i + 8] = rng.choice([b"\xff" * 8, b"\x00" * 8, rng.bytes(8), struct.pack("<Q", 2**62)])
    elif kind == 2:                                             # one bit
        i = int(rng.integers(0, len(data)))
        data[i] ^= 1 << int(rng.integers(8))
    else:                                                       # truncation
        del data[int(rng.integers(0, len(data))):]
    return bytes(data)


def test_fuzz_small_file_opens_or_raises_model_format_error(tmp_path, rng):
    tensors = sample_tensors(rng)
    metadata = {"general.architecture": "llama", "tokenizer.ggml.tokens": ["a", "bb", "é", ""],
                "n": 3, "x": 0.5, "flags": [True, False], "nested": [[1, 2], ["s"]],
                "ids": np.arange(3, dtype=np.int32)}
    path = write_gguf(tmp_path / "small.gguf", metadata, tensors,
                      {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "bf16": "BF16"})
    original = path.read_bytes()
    open_and_read_everything(path)
    outcomes = {"ok": 0, "ModelFormatError": 0}
    for case in range(400):
        (tmp_path / "bad.gguf").write_bytes(mutate(original, rng))
        try:
            open_and_read_everything(tmp_path / "bad.gguf")
            outcomes["ok"] += 1
        except ModelFormatError:
            outcomes["ModelFormatError"] += 1
    assert outcomes["ok"] > 0 and outcomes["ModelFormatError"] > 0, outcomes


def test_fuzz_truncated_real_file_always_raises_model_format_error(tmp_path, smollm2_path, rng):
    with open(smollm2_path, "rb") as fh:
        head = fh.read(2_000_000)          # header + metadata + tensor infos, cut inside token_embd
    cuts = [0, 3, 4, 8, 23, 24, 1_785_663] + list(rng.integers(25, len(head), 10)) + [len(head)]
    for cut in cuts:
        (tmp_path / "cut.gguf").write_bytes(head[:cut])
        with pytest.raises(ModelFormatError):
            GGUFFile(tmp_path / "cut.gguf")
    for case in range(12):                 # mutated prefixes: almost surely still broken
        (tmp_path / "bad.gguf").write_bytes(mutate(head, rng))
        try:
            open_and_read_everything(tmp_path / "bad.gguf")
        except ModelFormatError:
            pass


# --- 7: hand-made bad files, each with the message it deserves -----------------------------------

def s(text) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key, type_id, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", type_id) + payload


def tensor_info(name, dims, type_id, offset=0) -> bytes:
    return s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, type_id, offset)


def craft(kvs=(), infos=(), data=b"", version=3, magic=b"GGUF", alignment=32) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    return head + b"\0" * (-len(head) % alignment) + data


def open_bytes(tmp_path, data: bytes) -> GGUFFile:
    (tmp_path / "x.gguf").write_bytes(data)
    return GGUFFile(tmp_path / "x.gguf")


def test_crafted_file_is_valid_to_start_with(tmp_path):
    f = open_bytes(tmp_path, craft([kv("a", 4, struct.pack("<I", 7))], [tensor_info("w", [32, 2], 0)],
                                   data=np.arange(64, dtype="<f4").tobytes()))
    assert f["a"] == 7 and f.tensors["w"] == TensorInfo("w", (2, 32), 0, "F32", f.data_offset, 256)
    assert np.array_equal(f.dequantize("w"), np.arange(64, dtype=np.float32).reshape(2, 32))


def test_unknown_quant_type_id_names_the_type_and_tensor(tmp_path):
    with pytest.raises(ModelFormatError, match=r"'blk\.0\.attn_q\.weight'.*unknown ggml type 99"):
        open_bytes(tmp_path, craft(infos=[tensor_info("blk.0.attn_q.weight", [32, 1], 99)], data=bytes(64)))


def test_known_but_unsupported_type_opens_and_refuses_to_dequantize(tmp_path):
    f = open_bytes(tmp_path, craft(infos=[tensor_info("blk.0.ffn_up.weight", [256, 1], 16)], data=bytes(66)))
    assert f.tensors["blk.0.ffn_up.weight"].type_name == "IQ2_XXS"
    assert f.raw("blk.0.ffn_up.weight").size == 66
    with pytest.raises(ModelFormatError, match=r"'blk\.0\.ffn_up\.weight'.*16 \(IQ2_XXS\).*Q4_1.*Q6_K"):
        f.dequantize("blk.0.ffn_up.weight")


@pytest.mark.parametrize("data, message", [
    (craft(magic=b"GGML"), "not a GGUF file.*GGML"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a GGUF file"),
    (craft(version=1), "unsupported GGUF version 1"),
    (craft(version=4), "unsupported GGUF version 4"),
    (craft(version=3 << 24), "big-endian"),
    (b"GGUF", "too short"),
    (craft()[:20], "too short"),
])
def test_bad_magic_and_unsupported_versions(tmp_path, data, message):
    with pytest.raises(ModelFormatError, match=message):
        open_bytes(tmp_path, data)


U32 = lambda v: struct.pack("<I", v)  # noqa: E731


@pytest.mark.parametrize("data, message", [
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**60), "2[0-9]+ metadata entries"),
    (b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0) + bytes(100), "tensors, which cannot fit"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + s("tokenizer.ggml.tokens")[:20], "only 12 remain in the file"),
    (craft([struct.pack("<Q", 2**63) + b"k" * 8]), "key of metadata entry 0"),
    (craft([kv("k", 8, struct.pack("<Q", 10**12))]), r"'k' \(1000000000000 bytes\)"),
    (craft([kv("k", 8, s(b"\xff\xfe"))]), "not valid UTF-8"),
    (craft([kv("k", 13, b"")]), "unknown GGUF value type 13"),
    (craft([kv("k", 9, struct.pack("<IQ", 8, 2**61))]), "claims 2305843009213693952 STRING items"),
    (craft([kv("k", 9, struct.pack("<IQ", 5, 2**61))]), "INT32"),
    (craft([kv("k", 9, struct.pack("<IQ", 99, 1))]), "array of unknown GGUF value type 99"),
    (craft([kv("k", 9, struct.pack("<IQ", 9, 1) * 10)]), "nests arrays deeper"),
    (craft([kv("k", 4, U32(1)), kv("k", 4, U32(2))]), "'k' appears twice"),
    (craft([kv("general.alignment", 4, U32(48))]), "power of two"),
    (craft([kv("general.alignment", 10, struct.pack("<Q", 32))]), "UINT32"),
    (craft(infos=[tensor_info("w", [32] * 5, 0)]), "5 dims"),
    (craft(infos=[tensor_info("w", [33], 8)], data=bytes(64)), "not a whole number of 32-weight blocks"),
    (craft(infos=[tensor_info("w", [2**40, 2**40], 0)]), "impossible shape"),
    (craft(infos=[tensor_info("w", [2**62, 2**62, 0], 0)]), "impossible shape"),
    (craft(infos=[tensor_info("w", [8], 0, offset=4)], data=bytes(64)), "not a multiple of the alignment"),
    (craft(infos=[tensor_info("w", [64], 0)], data=bytes(255)), r"needs bytes .* only"),
    (craft(infos=[tensor_info("w", [8], 0, offset=2**63)], data=bytes(64)), "needs bytes"),
    (craft(infos=[tensor_info("w", [8], 0), tensor_info("w", [8], 0, 32)], data=bytes(64)), "'w' appears twice"),
    (craft(infos=[tensor_info("a", [16], 0), tensor_info("b", [16], 0, 32)], data=bytes(128)), "'a' and 'b' overlap"),
])
def test_corrupt_files_raise_model_format_error_saying_what_is_wrong(tmp_path, data, message):
    with pytest.raises(ModelFormatError, match=message):
        open_bytes(tmp_path, data)


def test_zero_size_tensors_and_scalars_are_harmless(tmp_path):
    f = open_bytes(tmp_path, craft(infos=[tensor_info("empty", [0, 5], 0), tensor_info("scalar", [], 0)],
                                   data=struct.pack("<f", 2.5)))
    assert f.dequantize("empty").shape == (5, 0)
    assert f.dequantize("scalar") == np.float32(2.5) and f.tensors["scalar"].shape == ()


def test_missing_tensor_and_key_name_what_exists(smollm2):
    with pytest.raises(ModelFormatError, match="did you mean 'blk.0.attn_q.weight'"):
        smollm2.dequantize("blk.0.attn_q.weights")
    with pytest.raises(ModelFormatError, match="no metadata key"):
        smollm2["llama.nope"]
    assert smollm2.get("llama.nope", 7) == 7 and "llama.block_count" in smollm2
