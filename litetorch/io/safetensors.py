"""Read and write safetensors files in NumPy, and load HF checkpoints made of them.

The format is small enough to hold in your head:

    [8 bytes]  N, the header length, unsigned 64-bit little-endian
    [N bytes]  a JSON object, UTF-8:
                 {"__metadata__": {"format": "pt"},                       (optional, str -> str)
                  "model.norm.weight": {"dtype": "F32", "shape": [576],
                                        "data_offsets": [0, 2304]}, ...}
    [rest]     the data buffer; tensor bytes live at buffer[begin:end], little-endian, C order

That is all: no pickle, so loading a file runs no code (unlike `torch.load` on a `.bin`), and the
buffer can be memory-mapped, so "loading" a 500 MB checkpoint reads only the header until a
tensor is touched.

Files come from strangers, so before reading a tensor we check that the header fits in the file,
is valid JSON of the expected shape (no key twice: JSON parsers disagree on which copy wins, so a
duplicate could show one thing to a reviewer's tool and load another), that every shape is one
NumPy can hold, and that every tensor's byte range lies inside the buffer, does not overlap another
one, and has exactly dtype size x number of elements bytes. Anything else raises ModelFormatError
naming the tensor and what was wrong.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from litetorch.errors import ModelFormatError

__all__ = ["load_safetensors", "save_safetensors", "load_hf_checkpoint", "read_safetensors_header"]

# safetensors dtype name -> NumPy dtype of the stored bytes (all little-endian).
# BF16 has no NumPy dtype; it is stored as uint16 bits and widened to float32 on load.
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# NumPy dtype -> safetensors name, for saving (BF16 cannot be saved from NumPy: there is no dtype).
_NAMES = {dt: name for name, dt in DTYPES.items() if name != "BF16"}

# The reference implementation refuses headers above 100 MB; so do we (a 2**63 length is an attack).
MAX_HEADER_BYTES = 100 * 1024 * 1024
# NumPy 1.x holds at most 32 dimensions (NumPy 2: 64); real weights have 1 to 4.
MAX_DIMS = 32
# No array can have more bytes than a signed 64-bit size (zero-size dims included: NumPy refuses
# shape [0, 2**62] for float32 because the *other* dims alone overflow its size arithmetic).
_MAX_BYTES = 2**62


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top 16 bits of a float32: shift them back up and reinterpret. Exact."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors_header(path) -> tuple[dict, dict, int]:
    """(tensor entries, __metadata__, data start offset) of a safetensors file, all checked.

    Each entry is {"dtype": str, "shape": [int], "data_offsets": [begin, end]}.
    """
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ModelFormatError(f"{path}: {file_size} bytes is too short for a safetensors file "
                                   f"(expected at least the 8-byte header length)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
            raise ModelFormatError(f"{path}: header length {header_len} does not fit in a file of "
                                   f"{file_size} bytes (max header {MAX_HEADER_BYTES})")
        raw = f.read(header_len)
    header = strict_json(raw, f"{path}: header")
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: header should be a JSON object, got {type(header).__name__}")

    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise ModelFormatError(f"{path}: __metadata__ should map strings to strings")

    data_start = 8 + header_len
    buffer_size = file_size - data_start
    spans = []
    for name, entry in header.items():
        _check_entry(path, name, entry, buffer_size)
        spans.append((*entry["data_offsets"], name))
    # Tensors must not overlap (the reference writer also leaves no holes; we only need no overlap).
    reach, reach_name = 0, None      # the furthest byte any earlier tensor covers, and whose it is
    for begin, end, name in sorted(spans):
        if begin < reach and end > begin:
            raise ModelFormatError(f"{path}: tensor {name!r} bytes [{begin}, {end}) overlap tensor "
                                   f"{reach_name!r}, which ends at {reach}")
        if end > reach:
            reach, reach_name = end, name
    return header, metadata, data_start


def strict_json(raw: bytes, what: str):
    """Parse untrusted JSON: UTF-8, no key twice in any object, nesting the parser can follow.
    Anything else is a ModelFormatError naming `what` (never ValueError or RecursionError)."""
    def no_duplicates(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise ModelFormatError(f"{what}: key {key!r} appears twice in one JSON object")
            obj[key] = value
        return obj

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, ModelFormatError):
            raise
        raise ModelFormatError(f"{what} is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:  # e.g. 100,000 nested '[': CPython's parser recurses once per level
        raise ModelFormatError(f"{what} nests JSON arrays/objects too deeply to parse") from None


def _check_entry(path, name: str, entry, buffer_size: int) -> None:
    """One tensor's header entry: known dtype, a valid shape, offsets inside the buffer that hold
    exactly the bytes the dtype and shape need."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise ModelFormatError(
            f"{path}: tensor {name!r} entry should have dtype, shape and data_offsets, got {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise ModelFormatError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}; "
                               f"supported: {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ModelFormatError(f"{path}: tensor {name!r} has invalid shape {shape!r}")
    if len(shape) > MAX_DIMS:
        raise ModelFormatError(f"{path}: tensor {name!r} has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    if math.prod(max(d, 1) for d in shape) * DTYPES[dtype].itemsize > _MAX_BYTES:
        raise ModelFormatError(f"{path}: tensor {name!r} has an impossible shape {shape} ({dtype})")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= buffer_size):
        raise ModelFormatError(f"{path}: tensor {name!r} data_offsets {offsets!r} are not inside the "
                               f"data buffer of {buffer_size} bytes")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != expected:
        raise ModelFormatError(f"{path}: tensor {name!r} ({dtype}, shape {shape}) needs {expected} bytes "
                               f"but data_offsets {offsets} span {offsets[1] - offsets[0]}")


def load_safetensors(path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, by name.

    Arrays are read-only views of a memory map (nothing is read until used), except BF16 tensors,
    which are widened to float32 in memory because NumPy has no bfloat16.
    """
    header, _, data_start = read_safetensors_header(path)
    if not header:
        return {}
    buffer = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw = buffer[data_start + begin:data_start + end]               # [nbytes] uint8
        array = raw.view(DTYPES[entry["dtype"]]).reshape(entry["shape"])  # [*shape], no copy
        tensors[name] = bf16_to_float32(array) if entry["dtype"] == "BF16" else array
    return tensors


def save_safetensors(path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` to a safetensors file, atomically (a crash leaves the old file or none).

    Tensors are laid out largest item size first, so each one starts aligned to its item size
    (the data buffer starts on an 8-byte boundary: the header is padded with spaces).
    """
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ModelFormatError("safetensors __metadata__ must map str to str")
        header["__metadata__"] = dict(metadata)
    arrays = {}
    for name, value in tensors.items():
        array = np.asarray(value)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _NAMES:
            raise ModelFormatError(f"tensor {name!r}: cannot save dtype {array.dtype} to safetensors; "
                                   f"supported: {', '.join(sorted(map(str, _NAMES)))}")
        arrays[name] = np.asarray(array, dtype=dtype, order="C")  # (ascontiguousarray would make 0-d 1-d)

    offset = 0
    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    for name in order:
        a = arrays[name]
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for name in order:
                f.write(arrays[name].tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)              # mkstemp makes it private (0600); keep the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_hf_checkpoint(directory) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, tensors) of an HF model directory: config.json plus either one model.safetensors
    or shards listed in model.safetensors.index.json ({"weight_map": {tensor name: file name}})."""
    directory = Path(directory)
    config = _read_json(directory / "config.json")
    single = directory / "model.safetensors"
    index_path = directory / "model.safetensors.index.json"
    if single.is_file():
        return config, load_safetensors(single)
    if not index_path.is_file():
        raise ModelFormatError(f"{directory}: no model.safetensors and no model.safetensors.index.json")

    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(s, str) for s in weight_map.values()):
        raise ModelFormatError(f"{index_path}: 'weight_map' should be a non-empty object of name -> shard file")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        # The index is untrusted too: a shard must be a plain file name in this directory,
        # not "../../somewhere/else".
        if Path(shard).name != shard or shard in (".", ".."):
            raise ModelFormatError(f"{index_path}: shard {shard!r} is not a file name inside {directory}")
        if not (directory / shard).is_file():
            raise ModelFormatError(f"{index_path}: shard file {shard!r} is missing")
        loaded = load_safetensors(directory / shard)
        for name in [n for n, s in weight_map.items() if s == shard]:
            if name not in loaded:
                raise ModelFormatError(f"{index_path}: tensor {name!r} should be in {shard!r} but is not")
            tensors[name] = loaded[name]
    return config, tensors


def _read_json(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelFormatError(f"{path} is missing") from None
    except OSError as exc:
        raise ModelFormatError(f"{path} cannot be read: {exc}") from None
    value = strict_json(raw, str(path))
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path} should hold a JSON object, got {type(value).__name__}")
    return value
