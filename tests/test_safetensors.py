"""litetorch.io.safetensors: a NumPy reader/writer checked byte for byte against the `safetensors`
package (the reference implementation), plus untrusted-file checks."""
import json
import random

import numpy as np
import pytest

from litetorch.errors import ModelFormatError
from litetorch.io.safetensors import (load_hf_checkpoint, load_safetensors, read_safetensors_header,
                                      save_safetensors)


def sample_tensors(rng):
    """One tensor of every dtype NumPy can save, in awkward shapes (scalar, empty, odd sizes)."""
    return {
        "f64": rng.standard_normal((3, 5)),
        "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "f32.special": np.array([np.inf, -np.inf, np.nan, -0.0, 1e-45], dtype=np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "i64": rng.integers(-2**62, 2**62, size=(4,), dtype=np.int64),
        "i32": rng.integers(-2**31, 2**31, size=(2, 2), dtype=np.int32),
        "i16": rng.integers(-2**15, 2**15, size=(3,), dtype=np.int16),
        "i8": rng.integers(-128, 128, size=(5,), dtype=np.int8),
        "u8": rng.integers(0, 256, size=(3, 1), dtype=np.uint8),
        "bool": rng.random(6) > 0.5,
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def assert_bit_identical(a: np.ndarray, b: np.ndarray, name=""):
    assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
    assert a.shape == b.shape, (name, a.shape, b.shape)
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), name


def test_round_trip(tmp_path, rng):
    tensors = sample_tensors(rng)
    save_safetensors(tmp_path / "t.safetensors", tensors, metadata={"format": "np", "note": "ünïcode"})
    loaded = load_safetensors(tmp_path / "t.safetensors")
    assert loaded.keys() == tensors.keys()
    for name in tensors:
        assert_bit_identical(loaded[name], tensors[name], name)
    _, metadata, data_start = read_safetensors_header(tmp_path / "t.safetensors")
    assert metadata == {"format": "np", "note": "ünïcode"}
    assert data_start % 8 == 0


def test_loaded_arrays_are_read_only_memory_maps(tmp_path, rng):
    save_safetensors(tmp_path / "t.safetensors", {"w": rng.standard_normal((64, 64)).astype(np.float32)})
    w = load_safetensors(tmp_path / "t.safetensors")["w"]
    assert isinstance(w.base, np.memmap) or isinstance(w, np.memmap)
    assert not w.flags.writeable


def test_reference_reads_what_we_write(tmp_path, rng):
    st_numpy = pytest.importorskip("safetensors.numpy")
    safe_open = pytest.importorskip("safetensors").safe_open
    tensors = sample_tensors(rng)
    save_safetensors(tmp_path / "ours.safetensors", tensors, metadata={"format": "np"})
    theirs = st_numpy.load_file(tmp_path / "ours.safetensors")
    for name in tensors:
        assert_bit_identical(theirs[name], tensors[name], name)
    with safe_open(tmp_path / "ours.safetensors", framework="np") as f:
        assert f.metadata() == {"format": "np"}


def test_we_read_what_the_reference_writes(tmp_path, rng):
    st_numpy = pytest.importorskip("safetensors.numpy")
    tensors = sample_tensors(rng)
    st_numpy.save_file(tensors, tmp_path / "theirs.safetensors", metadata={"format": "np"})
    ours = load_safetensors(tmp_path / "theirs.safetensors")
    for name in tensors:
        assert_bit_identical(ours[name], tensors[name], name)
    assert read_safetensors_header(tmp_path / "theirs.safetensors")[1] == {"format": "np"}


def test_bf16_written_by_torch_loads_as_exact_float32(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g).to(torch.bfloat16)
    special = torch.tensor([float("inf"), -float("inf"), -0.0, 1e-40, 3.0e38], dtype=torch.bfloat16)
    st_torch.save_file({"x": x, "special": special}, tmp_path / "bf16.safetensors")
    ours = load_safetensors(tmp_path / "bf16.safetensors")
    assert_bit_identical(ours["x"], x.float().numpy(), "x")
    assert_bit_identical(ours["special"], special.float().numpy(), "special")


# ----------------------------------------------------------------------------------------------
# HF checkpoint directories
# ----------------------------------------------------------------------------------------------
def test_load_hf_checkpoint_single_file(tmp_path, rng):
    tensors = {"model.norm.weight": rng.standard_normal(8).astype(np.float32)}
    save_safetensors(tmp_path / "model.safetensors", tensors)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    config, loaded = load_hf_checkpoint(tmp_path)
    assert config == {"hidden_size": 8}
    assert_bit_identical(loaded["model.norm.weight"], tensors["model.norm.weight"])


def test_load_hf_checkpoint_sharded(tmp_path, rng):
    st_numpy = pytest.importorskip("safetensors.numpy")
    shard1 = {f"model.layers.{i}.w": rng.standard_normal((3, 4)).astype(np.float32) for i in range(2)}
    shard2 = {"model.embed_tokens.weight": rng.standard_normal((10, 4)).astype(np.float32),
              "unused.in.index": np.zeros(1, dtype=np.float32)}          # present in shard, absent in index
    st_numpy.save_file(shard1, tmp_path / "model-00001-of-00002.safetensors")
    save_safetensors(tmp_path / "model-00002-of-00002.safetensors", shard2)
    weight_map = {**{n: "model-00001-of-00002.safetensors" for n in shard1},
                  "model.embed_tokens.weight": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    config, tensors = load_hf_checkpoint(tmp_path)
    assert config["model_type"] == "llama"
    assert tensors.keys() == weight_map.keys()
    for name, value in {**shard1, **shard2}.items():
        if name in weight_map:
            assert_bit_identical(tensors[name], value, name)


@pytest.mark.parametrize("weight_map, match", [
    ({"w": "../outside.safetensors"}, "not a file name inside"),
    ({"w": "/etc/passwd"}, "not a file name inside"),
    ({"w": "missing.safetensors"}, "is missing"),
    ({"not_there": "a.safetensors"}, "'not_there' should be in 'a.safetensors'"),
    ({}, "non-empty"),
])
def test_bad_index_raises(tmp_path, weight_map, match):
    save_safetensors(tmp_path / "a.safetensors", {"w": np.zeros(2, dtype=np.float32)})
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelFormatError, match=match):
        load_hf_checkpoint(tmp_path)


def test_missing_files_raise(tmp_path):
    with pytest.raises(ModelFormatError, match="config.json is missing"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelFormatError, match="no model.safetensors"):
        load_hf_checkpoint(tmp_path)


# ----------------------------------------------------------------------------------------------
# Saving is atomic
# ----------------------------------------------------------------------------------------------
def test_failed_save_leaves_old_file_and_no_temp_files(tmp_path):
    path = tmp_path / "t.safetensors"
    save_safetensors(path, {"w": np.ones(3, dtype=np.float32)})
    before = path.read_bytes()
    with pytest.raises(ModelFormatError, match="cannot save dtype"):
        save_safetensors(path, {"w": np.array(["strings are not tensors"])})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


# ----------------------------------------------------------------------------------------------
# Untrusted files
# ----------------------------------------------------------------------------------------------
def _file(tmp_path, header, data=b"", name="bad.safetensors", raw_header=None):
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize("header, data, match", [
    ({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2,
     "tensor 'w' has unsupported dtype 'F8_E4M3'"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8,
     r"needs 8 bytes but data_offsets \[0, 4\] span 4"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "not inside the data buffer of 4 bytes"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 8, "not inside"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid shape"),
    ({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid shape"),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "should have dtype, shape and data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap tensor 'a'"),
    ({"__metadata__": {"n": 1}}, b"", "__metadata__ should map strings to strings"),
    ([1, 2], b"", "should be a JSON object"),
])
def test_corrupt_headers_raise_model_format_error(tmp_path, header, data, match):
    with pytest.raises(ModelFormatError, match=match):
        load_safetensors(_file(tmp_path, header, data))


def test_bad_header_length_and_bytes(tmp_path):
    (tmp_path / "short").write_bytes(b"\x01\x02")
    with pytest.raises(ModelFormatError, match="too short"):
        load_safetensors(tmp_path / "short")
    (tmp_path / "huge").write_bytes((2**63).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelFormatError, match="does not fit"):
        load_safetensors(tmp_path / "huge")
    with pytest.raises(ModelFormatError, match="not valid UTF-8 JSON"):
        load_safetensors(_file(tmp_path, None, raw_header=b'{"w": '))
    with pytest.raises(ModelFormatError, match="not valid UTF-8 JSON"):
        load_safetensors(_file(tmp_path, None, raw_header=b"\xff\xfe{}"))


def test_fuzzed_files_raise_only_model_format_error(tmp_path, rng):
    """Mutate, truncate and extend a real file at random: every outcome is either a successful
    load whose arrays have the header's shapes, or a ModelFormatError. Nothing else escapes."""
    good = tmp_path / "good.safetensors"
    save_safetensors(good, sample_tensors(rng), metadata={"format": "np"})
    original = good.read_bytes()
    header_end = 8 + int.from_bytes(original[:8], "little")
    rnd = random.Random(0)
    outcomes = {"ok": 0, "error": 0}
    for trial in range(400):
        data = bytearray(original)
        kind = trial % 4
        if kind == 0:      # flip bytes in the header (where the structure lives)
            for _ in range(rnd.randint(1, 4)):
                data[rnd.randrange(header_end)] = rnd.randrange(256)
        elif kind == 1:    # truncate anywhere
            data = data[:rnd.randrange(len(data))]
        elif kind == 2:    # replace a digit in the header by another (offsets/shapes/length)
            digits = [i for i in range(8, header_end) if chr(data[i]).isdigit()]
            data[rnd.choice(digits)] = ord(str(rnd.randrange(10)))
        else:              # corrupt the length prefix
            data[rnd.randrange(8)] = rnd.randrange(256)
        path = tmp_path / f"fuzz{trial % 8}.safetensors"
        path.write_bytes(bytes(data))
        try:
            tensors = load_safetensors(path)
        except ModelFormatError:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        header = read_safetensors_header(path)[0]
        for name, array in tensors.items():
            assert list(array.shape) == header[name]["shape"]
            array.tobytes()  # touching every byte of the data must not crash
    assert outcomes["error"] > 100, outcomes
