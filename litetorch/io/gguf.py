"""GGUF, llama.cpp's single-file model format, read and written with NumPy + struct.

One file holds everything needed to run a model: hyper-parameters, the tokenizer and the weights.

    header       magic b"GGUF" | version: uint32 | tensor_count: uint64 | kv_count: uint64
    metadata     kv_count x  (key: string | value_type: uint32 | value)
    tensor infos tensor_count x  (name: string | n_dims: uint32 | dims: n_dims x uint64
                                  | ggml_type: uint32 | offset: uint64)
    padding      zero bytes up to a multiple of `general.alignment` (32 when the key is absent)
    data         the tensors' bytes; each tensor's `offset` counts from the start of this section
                 and is a multiple of the alignment

Everything is little-endian. A string is a uint64 byte count followed by UTF-8 bytes (no NUL).
An array value is item_type: uint32 | count: uint64 | the items (themselves strings or arrays too).
`dims` lists the fastest-varying dimension first (ggml's ne[0] is the row length), so a NumPy
shape is `dims` reversed: a 576 -> 1536 `ffn_up` matrix has dims [576, 1536] and shape (1536, 576).

Model files come from strangers, so the reader checks every count, length and offset against the
file size *before* it reads or allocates anything; a bad file raises ModelFormatError naming what
is wrong and where. Tensor data is never read at open time: it is memory-mapped, so opening a
100 MB model costs about what parsing its metadata costs.
"""
from __future__ import annotations

import difflib
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from litetorch.errors import DTypeError, ModelFormatError, ShapeError, StateError
from litetorch.io import quants
from litetorch.io.quants import GGML_TYPES, ggml_type_id, ggml_type_name, tensor_nbytes

__all__ = ["GGUFFile", "TensorInfo", "RawTensor", "write_gguf", "ggml_type_name", "GGUF_VALUE_TYPES"]

GGUF_MAGIC = b"GGUF"
READ_VERSIONS = (2, 3)        # v1 used uint32 counts; v2 made them uint64; v3 allowed big-endian
WRITE_VERSION = 3
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 4         # arrays of arrays ... deeper than this is surely an attack
_MAX_ELEMENTS = 2**60         # beyond this no NumPy array can hold the tensor anyway

# GGUF metadata value types: id -> (name, struct format of one item; None for STRING / ARRAY)
GGUF_VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"),
    4: ("UINT32", "<I"), 5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<?"),
    8: ("STRING", None), 9: ("ARRAY", None),
    10: ("UINT64", "<Q"), 11: ("INT64", "<q"), 12: ("FLOAT64", "<d"),
}
_STRING, _ARRAY, _BOOL = 8, 9, 7
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file and how to read it.

    shape:     NumPy order (the file's dims reversed)
    ggml_type: the type id (3), type_name its name ('Q4_1')
    offset:    absolute byte offset of the data in the file (data section start + stored offset)
    n_bytes:   bytes of data (for block types: n_elements / block_size * bytes_per_block)
    """
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    type_name: str
    offset: int
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class _Cursor:
    """Reads little-endian values from a buffer, checking each read stays inside it."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.end, self.path = buf, 0, len(buf), path

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def skip(self, n: int, what: str) -> int:
        """Advance past n bytes and return where they start; error if the file is too short."""
        if n > self.end - self.pos:
            raise ModelFormatError(
                f"{self.path}: {what} needs {n} bytes at offset {self.pos}, but only "
                f"{self.end - self.pos} remain in the file (truncated or corrupt)")
        start = self.pos
        self.pos += n
        return start

    def take(self, n: int, what: str) -> bytes:
        start = self.skip(n, what)
        return bytes(self.buf[start:start + n])

    def unpack(self, fmt: str, what: str):
        """One value of struct format `fmt` ('<I', '<f', ...)."""
        return struct.unpack_from(fmt, self.buf, self.skip(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return _U32.unpack_from(self.buf, self.skip(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.buf, self.skip(8, what))[0]

    def u64s(self, n: int, what: str) -> tuple[int, ...]:
        return struct.unpack_from(f"<{n}Q", self.buf, self.skip(8 * n, what))

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        start = self.skip(n, f"{what} ({n} bytes)")
        return _decode(self.buf[start:start + n], what, start, self.path)


def _decode(raw: memoryview, what: str, offset: int, path: Path) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as e:
        raise ModelFormatError(f"{path}: {what} at offset {offset} is not valid UTF-8 ({e.reason})") from None


class GGUFFile:
    """A GGUF file opened for reading; tensor data stays on disk (memory-mapped) until asked for.

        with GGUFFile("SmolLM2-135M-Instruct.Q4_1.gguf") as f:
            f.metadata["llama.block_count"]            # 30
            f.tensors["blk.0.attn_q.weight"]           # TensorInfo(shape=(576, 576), type_name='Q4_1', ...)
            w = f.dequantize("blk.0.attn_q.weight")    # [576, 576] float32

    Attributes: path, version, alignment, data_offset (start of the data section),
    metadata (key -> str | int | float | bool | list[str] | np.ndarray | list of arrays),
    metadata_types (key -> 'UINT32', 'ARRAY[STRING]', ...), tensors (name -> TensorInfo, file order).
    `key in f`, `f[key]` and `f.get(key, default)` look up metadata.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        file_size = os.path.getsize(self.path)      # a missing file is FileNotFoundError, not a format error
        if file_size < 24:
            raise ModelFormatError(
                f"{self.path} is {file_size} bytes, too short for a GGUF header (24 bytes)")
        with open(self.path, "rb") as f:                  # the mapping outlives the file descriptor
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._mm: np.ndarray | None = np.frombuffer(self._map, dtype=np.uint8)  # read-only, no copy
        self.metadata: dict[str, object] = {}
        self.metadata_types: dict[str, str] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse(_Cursor(memoryview(self._mm), self.path), file_size)
        except BaseException:
            self._mm = self._map = None
            raise

    # lesson 10: begin
    def _parse(self, cur: _Cursor, file_size: int) -> None:
        # Header: 4 + 4 + 8 + 8 bytes.
        magic = cur.take(4, "magic")
        if magic != GGUF_MAGIC:
            raise ModelFormatError(f"{self.path} is not a GGUF file: it starts with {magic!r}, not b'GGUF'")
        self.version = cur.u32("version")
        if self.version not in READ_VERSIONS:
            swapped = int.from_bytes(self.version.to_bytes(4, "little"), "big")
            hint = " (a big-endian GGUF, which litetorch does not read)" if swapped in READ_VERSIONS else ""
            raise ModelFormatError(
                f"{self.path}: unsupported GGUF version {self.version}{hint}; litetorch reads versions 2 and 3")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata key/value count")
        # Each key/value takes >= 13 bytes and each tensor info >= 24: refuse absurd counts now,
        # before looping (or allocating) billions of times.
        if n_kv * 13 + n_tensors * 24 > cur.remaining:
            raise ModelFormatError(
                f"{self.path}: header claims {n_kv} metadata entries and {n_tensors} tensors, "
                f"which cannot fit in the {cur.remaining} bytes left in the file")

        # Metadata: key, value type, value.
        for i in range(n_kv):
            key = cur.string(f"key of metadata entry {i}")
            if key in self.metadata:
                raise ModelFormatError(f"{self.path}: metadata key {key!r} appears twice")
            value_type = cur.u32(f"value type of {key!r}")
            self.metadata[key], self.metadata_types[key] = self._read_value(cur, value_type, repr(key), 0)

        # Tensor infos: name, dims (fastest first), ggml type, offset into the data section.
        infos = []
        for i in range(n_tensors):
            name = cur.string(f"name of tensor {i}")
            n_dims = cur.u32(f"n_dims of tensor {name!r}")
            if n_dims > MAX_DIMS:
                raise ModelFormatError(f"{self.path}: tensor {name!r} has {n_dims} dims; ggml allows at most {MAX_DIMS}")
            dims = cur.u64s(n_dims, f"dims of tensor {name!r}")          # fastest-varying first
            type_id = cur.u32(f"ggml type of tensor {name!r}")
            offset = cur.u64(f"data offset of tensor {name!r}")
            infos.append((name, dims, type_id, offset))

        # The data section starts at the next multiple of the alignment.
        self.alignment = self._alignment()
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment     # round up
        for name, dims, type_id, offset in infos:
            info = self._check_tensor(name, dims, type_id, offset, file_size)
            if name in self.tensors:
                raise ModelFormatError(f"{self.path}: tensor name {name!r} appears twice")
            self.tensors[name] = info
        self._check_no_overlap()

    def _check_tensor(self, name: str, dims: tuple[int, ...], type_id: int, offset: int, file_size: int) -> TensorInfo:
        """One tensor info -> TensorInfo, once we know it describes whole blocks inside the file."""
        if type_id not in GGML_TYPES:
            raise ModelFormatError(
                f"{self.path}: tensor {name!r} has {ggml_type_name(type_id)} (id {type_id}); "
                f"known ids: {sorted(GGML_TYPES)}")
        type_name, block_size, _ = GGML_TYPES[type_id]
        shape = tuple(reversed(dims))            # GGUF lists dims fastest-first; NumPy slowest-first
        if math.prod(max(d, 1) for d in dims) > _MAX_ELEMENTS:
            raise ModelFormatError(f"{self.path}: tensor {name!r} has an impossible shape {shape}")
        row_length = dims[0] if dims else 1                      # ne[0]; a 0-dim tensor is one weight
        if row_length % block_size:
            raise ModelFormatError(
                f"{self.path}: tensor {name!r} ({type_name}) has rows of {row_length} weights, "
                f"not a whole number of {block_size}-weight blocks")
        if offset % self.alignment:
            raise ModelFormatError(
                f"{self.path}: tensor {name!r} data offset {offset} is not a multiple of the alignment {self.alignment}")
        n_bytes = tensor_nbytes(shape, type_id)  # n_elements / block_size * bytes_per_block
        start = self.data_offset + offset        # offsets count from the data section
        if n_bytes and start + n_bytes > file_size:
            raise ModelFormatError(
                f"{self.path}: tensor {name!r} ({type_name}, shape {shape}) needs bytes {start}.."
                f"{start + n_bytes}, but the file has only {file_size} bytes (truncated?)")
        return TensorInfo(name, shape, type_id, type_name, start, n_bytes)
    # lesson 10: end

    def _read_value(self, cur: _Cursor, value_type: int, what: str, depth: int):
        """One metadata value of GGUF type `value_type` -> (Python value, type name)."""
        if value_type not in GGUF_VALUE_TYPES:
            raise ModelFormatError(f"{self.path}: {what} has unknown GGUF value type {value_type}")
        type_name, fmt = GGUF_VALUE_TYPES[value_type]
        if fmt is not None:                                   # a number or a bool
            value = cur.unpack(fmt, what)
            return (bool(value) if value_type == _BOOL else value), type_name
        if value_type == _STRING:
            return cur.string(what), type_name

        # An array: item type, count, then the items.
        item_type = cur.u32(f"item type of {what}")
        count = cur.u64(f"length of {what}")
        if item_type not in GGUF_VALUE_TYPES:
            raise ModelFormatError(f"{self.path}: {what} is an array of unknown GGUF value type {item_type}")
        item_name, item_fmt = GGUF_VALUE_TYPES[item_type]
        type_name = f"ARRAY[{item_name}]"
        if item_fmt is not None:                              # numbers: one bounds check, one copy
            itemsize = struct.calcsize(item_fmt)
            start = cur.skip(count * itemsize, f"{what} ({count} x {item_name})")
            if item_type == _BOOL:                            # bytes other than 0/1 are still True
                return np.frombuffer(cur.buf, np.uint8, count, start) != 0, type_name
            dtype = np.dtype(item_fmt)
            return np.frombuffer(cur.buf, dtype, count, start).astype(dtype.newbyteorder("=")), type_name
        min_item_size = 8 if item_type == _STRING else 12     # a string's length / an array's header
        if count * min_item_size > cur.remaining:
            raise ModelFormatError(
                f"{self.path}: {what} claims {count} {item_name} items at offset {cur.pos}, more than "
                f"the {cur.remaining} bytes left in the file can hold")
        if item_type == _STRING:
            return _read_strings(cur, count, what), type_name
        if depth + 1 >= MAX_ARRAY_NESTING:
            raise ModelFormatError(f"{self.path}: {what} nests arrays deeper than {MAX_ARRAY_NESTING} levels")
        return [self._read_value(cur, _ARRAY, f"{what}[{j}]", depth + 1)[0] for j in range(count)], type_name

    def _alignment(self) -> int:
        if "general.alignment" not in self.metadata:
            return DEFAULT_ALIGNMENT
        value, kind = self.metadata["general.alignment"], self.metadata_types["general.alignment"]
        if kind != "UINT32" or value == 0 or value & (value - 1):
            raise ModelFormatError(
                f"{self.path}: general.alignment must be a UINT32 power of two, got {value!r} ({kind})")
        return value

    def _check_no_overlap(self) -> None:
        # llama.cpp requires tensors to follow one another. We accept any order but not overlap:
        # with overlap, a small file could name one big block a thousand times and make
        # "dequantize every tensor" allocate a thousand times the file size.
        spans = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in self.tensors.values() if t.n_bytes)
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise ModelFormatError(f"{self.path}: the data of tensors {a!r} and {b!r} overlap")

    # --- the public reading API -------------------------------------------------------------

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            close = difflib.get_close_matches(name, list(self.tensors), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ModelFormatError(f"{self.path} has no tensor named {name!r} ({len(self.tensors)} tensors){hint}")
        if self._mm is None:
            raise StateError(f"{self.path} is closed")
        return self.tensors[name]

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored: [n_bytes] uint8, a read-only view of the file."""
        info = self._info(name)
        return self._mm[info.offset:info.offset + info.n_bytes]

    def release(self, *names: str) -> None:
        """Tell the OS this process is done with these tensors' pages for now (madvise MADV_DONTNEED).

        Reading a tensor maps its pages into the process, and they count in its resident memory until
        the mapping goes. A loader that has expanded a tensor into its own array calls this, so the
        float32 model does not also hold the file (0.67 GB for TinyLlama). The bytes stay in the OS's
        page cache and are read again, transparently, if the tensor is used again. (A no-op where
        madvise does not exist.)"""
        infos = [self._info(name) for name in names]
        if not hasattr(self._map, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        for info in infos:
            if info.n_bytes:
                start = info.offset - info.offset % mmap.PAGESIZE    # madvise wants a page-aligned start
                self._map.madvise(mmap.MADV_DONTNEED, start, info.offset + info.n_bytes - start)

    def dequantize(self, name: str, dtype=np.float32, out: np.ndarray | None = None) -> np.ndarray:
        """The tensor as numbers: a fresh array of `info.shape` (NumPy order), float32 unless asked,
        or written into `out` (a C-contiguous float32/float64 array of that shape) and returned."""
        info = self._info(name)
        if out is not None:
            return quants.dequantize(self.raw(name), info.ggml_type, info.shape, tensor=name, out=out)
        out = quants.dequantize(self.raw(name), info.ggml_type, info.shape, tensor=name)
        return out if np.dtype(dtype) == np.float32 else out.astype(dtype)

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.metadata

    def __getitem__(self, key: str):
        if key not in self.metadata:
            raise ModelFormatError(f"{self.path} has no metadata key {key!r}")
        return self.metadata[key]

    def close(self) -> None:
        """Drop the memory map (arrays from raw() keep their own reference to it)."""
        self._mm = self._map = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({str(self.path)!r}, version={self.version}, "
                f"{len(self.metadata)} metadata keys, {len(self.tensors)} tensors)")


def _read_strings(cur: _Cursor, count: int, what: str) -> list[str]:
    """`count` strings; the inner loop of reading a tokenizer (100k strings), kept tight."""
    buf, pos, end, out = cur.buf, cur.pos, cur.end, []
    for j in range(count):
        if end - pos < 8:
            cur.pos = pos
            cur.skip(8, f"length of {what}[{j}]")             # raises with the usual message
        (n,) = _U64.unpack_from(buf, pos)
        if n > end - pos - 8:
            cur.pos = pos + 8
            cur.skip(n, f"{what}[{j}] ({n} bytes)")
        out.append(_decode(buf[pos + 8:pos + 8 + n], f"{what}[{j}]", pos + 8, cur.path))
        pos += 8 + n
    cur.pos = pos
    return out


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------

# NumPy dtype -> GGUF value type id, for arrays and for explicitly typed scalars (np.uint8(3))
_NUMPY_TO_GGUF = {np.dtype(fmt).newbyteorder("="): type_id
                  for type_id, (_, fmt) in GGUF_VALUE_TYPES.items() if fmt is not None}


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return _U64.pack(len(raw)) + raw


def _encode_value(value, what: str, depth: int = 0) -> tuple[int, bytes]:
    """A Python value -> (GGUF value type id, payload bytes without the type id).

    str -> STRING; bool -> BOOL; int -> UINT32 when 0 <= v < 2**32 (what llama.cpp expects for
    counts and token ids), else INT64 (UINT64 above 2**63); float -> FLOAT32 (what llama.cpp
    expects for eps and rope bases). A NumPy scalar keeps its type: np.float64(x), np.int32(x), ...
    list[str] -> ARRAY[STRING]; list[int] -> ARRAY[INT32] (INT64 if needed); list[float] ->
    ARRAY[FLOAT32]; list[bool] -> ARRAY[BOOL]; a 1-D np.ndarray -> an array of its dtype;
    a list of lists/arrays -> an ARRAY of ARRAYs. An empty list is written as ARRAY[STRING].
    """
    if isinstance(value, (bool, np.bool_)):
        return _BOOL, struct.pack("<?", bool(value))
    if isinstance(value, np.generic) and not isinstance(value, np.str_):
        dtype = value.dtype.newbyteorder("=")
        if dtype not in _NUMPY_TO_GGUF:
            raise DTypeError(f"metadata {what}: GGUF has no value type for NumPy {value.dtype}")
        return _NUMPY_TO_GGUF[dtype], np.asarray(value, dtype.newbyteorder("<")).tobytes()
    if isinstance(value, int):
        for type_id, lo, hi in ((4, 0, 2**32), (11, -2**63, 2**63), (10, 0, 2**64)):
            if lo <= value < hi:
                return type_id, struct.pack(GGUF_VALUE_TYPES[type_id][1], value)
        raise DTypeError(f"metadata {what}: integer {value} does not fit in 64 bits")
    if isinstance(value, float):
        return 6, struct.pack("<f", value)
    if isinstance(value, str):
        return _STRING, _pack_string(value)
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise ShapeError(f"metadata {what}: arrays must be 1-D, got shape {value.shape}")
        if value.dtype.kind in "US":
            value = [str(v) for v in value.tolist()]
        else:
            dtype = value.dtype.newbyteorder("=")
            if dtype not in _NUMPY_TO_GGUF:
                raise DTypeError(f"metadata {what}: GGUF arrays cannot hold {value.dtype}; use float32 or an int type")
            payload = np.ascontiguousarray(value, dtype.newbyteorder("<")).tobytes()
            return _ARRAY, _U32.pack(_NUMPY_TO_GGUF[dtype]) + _U64.pack(len(value)) + payload
    if isinstance(value, (list, tuple)):
        return _ARRAY, _encode_list(list(value), what, depth)
    raise DTypeError(
        f"metadata {what}: cannot store a {type(value).__name__} in GGUF; use str, bool, int, float, "
        f"a NumPy scalar, a list or a 1-D np.ndarray")


def _encode_list(items: list, what: str, depth: int) -> bytes:
    def all_of(*kinds, but=()):
        return all(isinstance(v, kinds) and not isinstance(v, but) for v in items)

    if all_of(str):                                          # includes []
        return _U32.pack(_STRING) + _U64.pack(len(items)) + b"".join(_pack_string(s) for s in items)
    if all_of(bool, np.bool_):
        return _encode_value(np.array(items, dtype=np.bool_), what)[1]
    if all_of(int, np.integer, but=(bool, np.bool_)):
        small = all(-2**31 <= v < 2**31 for v in items)
        return _encode_value(np.array(items, dtype=np.int32 if small else np.int64), what)[1]
    if all_of(int, float, np.integer, np.floating, but=(bool, np.bool_)):
        return _encode_value(np.array(items, dtype=np.float32), what)[1]
    if all_of(list, tuple, np.ndarray):
        if depth + 1 >= MAX_ARRAY_NESTING:
            raise ShapeError(f"metadata {what}: arrays nest deeper than {MAX_ARRAY_NESTING} levels")
        inner = [_encode_value(v, f"{what}[{j}]", depth + 1)[1] for j, v in enumerate(items)]
        return _U32.pack(_ARRAY) + _U64.pack(len(items)) + b"".join(inner)
    kinds = sorted({type(v).__name__ for v in items})
    raise DTypeError(f"metadata {what}: a GGUF array holds one type, got a list of {', '.join(kinds)}")


@dataclass(frozen=True)
class RawTensor:
    """A tensor already in its stored form, for `write_gguf`: `data` is [n_bytes] uint8 of ggml type
    `type_name` for a tensor of NumPy `shape` (e.g. K-quant blocks made without quantizing floats)."""
    type_name: str
    shape: tuple[int, ...]
    data: np.ndarray


def write_gguf(path: str | os.PathLike, metadata: dict, tensors: dict[str, np.ndarray | RawTensor],
               types: dict[str, str] | None = None, alignment: int = DEFAULT_ALIGNMENT) -> Path:
    """Write a GGUF v3 file atomically (to a temporary file, then os.replace) and return its path.

    metadata: key -> value, typed as `_encode_value` documents (int -> UINT32, float -> FLOAT32, ...)
    tensors:  name -> float array in NumPy order, 1 to 4 dims; stored as F16 if its dtype is
              float16, else F32, unless `types[name]` names one of `quants.SUPPORTED_QUANTIZE` (block
              types need the last dimension to be a multiple of 32; 256 for the K-quants and TQ2_0;
              "I8" takes an int8 array); or name -> RawTensor, written byte for byte as the type it names
    alignment: data alignment; a value other than 32 is recorded as `general.alignment` (UINT32)
    """
    path = Path(path)
    types = {name: str(t).upper() for name, t in (types or {}).items()}
    if set(types) - set(tensors):
        raise ModelFormatError(f"types names tensors that are not being written: {sorted(set(types) - set(tensors))}")
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment >= 2**32:
        raise ModelFormatError(f"alignment must be a power of two that fits in 32 bits, got {alignment!r}")
    metadata = dict(metadata)
    if alignment != DEFAULT_ALIGNMENT or "general.alignment" in metadata:
        if int(metadata.get("general.alignment", alignment)) != alignment:
            raise ModelFormatError(
                f"metadata general.alignment={metadata['general.alignment']} contradicts alignment={alignment}")
        metadata["general.alignment"] = np.uint32(alignment)

    kv = bytearray()
    for key, value in metadata.items():
        type_id, payload = _encode_value(value, repr(key))
        kv += _pack_string(str(key)) + _U32.pack(type_id) + payload

    # Plan the data section first: every offset is known before a single weight is quantized.
    plan, infos, offset = [], bytearray(), 0
    for name, array in tensors.items():
        if isinstance(array, RawTensor):
            type_id, n_bytes = _check_raw(name, array, types)
            dims = tuple(array.shape)[::-1]                        # NumPy order -> GGUF order
            infos += _pack_string(name) + _U32.pack(len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
            infos += _U32.pack(type_id) + _U64.pack(offset)
            plan.append((array, array.type_name, n_bytes))
            offset += -(-n_bytes // alignment) * alignment
            continue
        array = np.asarray(array)
        type_name = types.get(name, "F16" if array.dtype == np.float16 else "F32")
        if type_name not in quants.SUPPORTED_QUANTIZE:
            raise ModelFormatError(
                f"tensor {name!r}: litetorch cannot write {type_name}; supported: {', '.join(quants.SUPPORTED_QUANTIZE)}")
        if array.dtype.kind != "f" and not (type_name == "I8" and array.dtype == np.int8):
            raise DTypeError(f"tensor {name!r}: GGUF weights are floats here (or int8 as I8), got dtype {array.dtype}")
        if not 1 <= array.ndim <= MAX_DIMS:
            raise ShapeError(f"tensor {name!r}: GGUF tensors have 1 to {MAX_DIMS} dims, got shape {array.shape}")
        type_id = ggml_type_id(type_name)
        block_size = GGML_TYPES[type_id][1]
        if array.shape[-1] % block_size:
            raise ShapeError(
                f"tensor {name!r}: {type_name} needs the last dimension to be a multiple of {block_size}, "
                f"got shape {array.shape}")
        n_bytes = tensor_nbytes(array.shape, type_id)
        dims = array.shape[::-1]                                   # NumPy order -> GGUF order
        infos += _pack_string(name) + _U32.pack(len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        infos += _U32.pack(type_id) + _U64.pack(offset)
        plan.append((array, type_name, n_bytes))
        offset += -(-n_bytes // alignment) * alignment             # next tensor starts aligned

    header = GGUF_MAGIC + struct.pack("<IQQ", WRITE_VERSION, len(tensors), len(metadata))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header + kv + infos)
            f.write(b"\0" * (-f.tell() % alignment))               # pad to the data section
            for array, type_name, n_bytes in plan:
                data = array.data if isinstance(array, RawTensor) else quants.quantize(array, type_name)
                assert data.size == n_bytes, (type_name, data.size, n_bytes)
                f.write(data)
                f.write(b"\0" * (-n_bytes % alignment))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _check_raw(name: str, t: RawTensor, types: dict) -> tuple[int, int]:
    """(type id, byte count) of a RawTensor, once its bytes are exactly what its type and shape need."""
    type_id = ggml_type_id(t.type_name)
    if name in types and types[name] != t.type_name.upper():
        raise ModelFormatError(f"tensor {name!r} is a RawTensor of {t.type_name}, but types says {types[name]}")
    shape = tuple(t.shape)
    if not 1 <= len(shape) <= MAX_DIMS or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        raise ShapeError(f"tensor {name!r}: GGUF tensors have 1 to {MAX_DIMS} dims of sizes >= 0, got shape {shape}")
    block_size = GGML_TYPES[type_id][1]
    if shape[-1] % block_size:
        raise ShapeError(f"tensor {name!r}: {t.type_name} needs the last dimension to be a multiple of "
                         f"{block_size}, got shape {shape}")
    n_bytes = tensor_nbytes(shape, type_id)
    data = t.data
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1 or data.size != n_bytes:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ShapeError(f"tensor {name!r}: a {t.type_name} tensor of shape {shape} is {n_bytes} bytes "
                         f"([{n_bytes}] uint8), got {got}")
    return type_id, n_bytes
