"""GGUF v2/v3 files (llama.cpp's single-file format): metadata, tensor directory and memory-mapped tensor data.

Layout: magic "GGUF", uint32 version, uint64 tensor count, uint64 metadata count, the metadata key/value
pairs, one info record per tensor (name, dims, ggml type, offset relative to the data section), then the
data section, which starts at the next multiple of `general.alignment` (default 32). Everything is
little-endian. The file is memory-mapped once; tensor data is only ever returned as views into that map,
so a file larger than RAM is never read whole.

The tensor types, their block sizes and every dequantizer are the `gguf` package's (llama.cpp publishes it
and checks its numpy dequantizers against ggml's C ones). Its own `GGUFReader` is not used for the
directory: it builds a numpy view per array element, which takes 4.8 s for SmolLM2's 98k-entry vocabulary
against 0.23 s here, and a server opens its file three times while starting.
"""

from __future__ import annotations

import enum
import functools
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as dequantize_blocks

from lpu_runtime.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32  # bytes


@functools.cache
def decodable_types() -> frozenset[GGMLQuantizationType]:
    """The tensor types the installed `gguf` package dequantizes to float32: F32, F16, BF16, the legacy
    32-value quants (Q4_0 ... Q8_0), the K-quants, the IQ and ternary types. Asked of the library itself (one
    zero block each), so a newer `gguf` that learns a type serves it without a change here."""
    decodable = set()
    for qtype, (_, block_bytes) in GGML_QUANT_SIZES.items():
        try:
            dequantize_blocks(np.zeros((1, block_bytes), np.uint8), qtype)
        except NotImplementedError:  # integer and F64 tensors, and the activation-only Q8_1 / Q8_K
            continue
        decodable.add(qtype)
    return frozenset(decodable)


def type_names(types: frozenset[GGMLQuantizationType]) -> str:
    return ", ".join(t.name for t in sorted(types))


class _ValueType(enum.IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMATS: dict[_ValueType, str] = {
    _ValueType.UINT8: "<B",
    _ValueType.INT8: "<b",
    _ValueType.UINT16: "<H",
    _ValueType.INT16: "<h",
    _ValueType.UINT32: "<I",
    _ValueType.INT32: "<i",
    _ValueType.FLOAT32: "<f",
    _ValueType.BOOL: "<?",
    _ValueType.UINT64: "<Q",
    _ValueType.INT64: "<q",
    _ValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF order: dims[0] is the fastest-varying (contiguous) axis
    ggml_type: GGMLQuantizationType
    offset: int  # bytes from the start of the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The numpy row-major shape: the GGUF dims reversed, e.g. a (n_out, n_in) weight is dims (n_in, n_out)."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        return math.prod(self.dims)


class _Reader:
    """Bounds-checked little-endian reads from the mapped file; running off the end is a truncation."""

    def __init__(self, path: Path, buf: memoryview) -> None:
        self.path = path
        self.buf = buf
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ModelFileError(
                self.path,
                f"the file is truncated: {what} at byte {self.pos} runs past its end ({len(self.buf)} bytes)",
            )
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def string(self, what: str) -> str:
        n = self.u64(what)
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # Some vocabularies carry pieces that are not valid UTF-8 on their own; keep them readable.
            return raw.decode("utf-8", errors="surrogateescape")

    def value_type(self, what: str) -> _ValueType:
        code = self.u32(what)
        try:
            return _ValueType(code)
        except ValueError:
            raise ModelFileError(self.path, f"{what} has unknown GGUF value type {code}") from None

    def value(self, vtype: _ValueType, what: str) -> Any:
        if vtype is _ValueType.STRING:
            return self.string(what)
        if vtype is _ValueType.ARRAY:
            elem = self.value_type(what)
            count = self.u64(what)
            if elem is _ValueType.STRING:
                return [self.string(what) for _ in range(count)]
            if elem is _ValueType.ARRAY:
                return [self.value(_ValueType.ARRAY, what) for _ in range(count)]
            dtype = np.dtype(_SCALAR_FORMATS[elem])
            # One vectorised read: vocabularies carry hundreds of thousands of scores and types.
            raw = self.take(count * dtype.itemsize, what)
            return np.frombuffer(raw, dtype=dtype).tolist()
        return self.scalar(_SCALAR_FORMATS[vtype], what)


class GGUFFile:
    """An open GGUF file: `metadata`, `tensors` (name -> info) and zero-copy access to tensor data."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(self.path, "no such GGUF file")
        size = self.path.stat().st_size
        if size < 4:
            raise ModelFileError(self.path, f"the file is truncated: {size} bytes is too short to be GGUF")
        # (file_bytes,) uint8, read-only map; np.memmap refuses empty files, hence the size check above.
        self._map: np.memmap[Any, np.dtype[np.uint8]] = np.memmap(self.path, dtype=np.uint8, mode="r")
        reader = _Reader(self.path, self._map.data)

        magic = bytes(reader.take(4, "the magic"))
        if magic != GGUF_MAGIC:
            raise ModelFileError(self.path, f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        self.version = reader.u32("the version")
        byte_swapped = int.from_bytes(self.version.to_bytes(4, "little"), "big")
        if self.version not in SUPPORTED_VERSIONS and byte_swapped in SUPPORTED_VERSIONS:
            raise ModelFileError(self.path, "is a big-endian GGUF file, which is not supported")
        if self.version not in SUPPORTED_VERSIONS:
            raise ModelFileError(
                self.path,
                f"GGUF version {self.version} is not supported (only versions {', '.join(map(str, SUPPORTED_VERSIONS))})",
            )
        n_tensors = reader.u64("the tensor count")
        n_kv = reader.u64("the metadata count")

        self.metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = reader.string(f"metadata key {i}")
            self.metadata[key] = reader.value(reader.value_type(f"metadata {key!r}"), f"metadata {key!r}")

        self.alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        if self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise ModelFileError(self.path, f"general.alignment {self.alignment} is not a power of two")

        relative: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []
        for i in range(n_tensors):
            name = reader.string(f"tensor {i} name")
            n_dims = reader.u32(f"tensor {name!r} dimension count")
            dims = tuple(reader.u64(f"tensor {name!r} dims") for _ in range(n_dims))
            code = reader.u32(f"tensor {name!r} type")
            try:
                ggml_type = GGMLQuantizationType(code)
            except ValueError:
                raise ModelFileError(self.path, f"tensor {name!r} has unknown ggml type {code}") from None
            relative.append((name, dims, ggml_type, reader.u64(f"tensor {name!r} offset")))

        self.data_offset = -(-reader.pos // self.alignment) * self.alignment  # bytes
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, dims, ggml_type, rel in relative:
            block, block_bytes = GGML_QUANT_SIZES[ggml_type]
            n = math.prod(dims)
            if dims and dims[0] % block:
                raise ModelFileError(
                    self.path,
                    f"tensor {name!r} has {dims[0]} columns, not a multiple of the {ggml_type.name} block of {block}",
                )
            info = GGUFTensorInfo(name, dims, ggml_type, self.data_offset + rel, n // block * block_bytes)
            if info.offset + info.nbytes > size:
                raise ModelFileError(
                    self.path,
                    f"the file is truncated: tensor {name!r} needs bytes {info.offset}..{info.offset + info.nbytes} "
                    f"but the file has {size}",
                )
            self.tensors[name] = info

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.tensors)} tensors, {len(self.metadata)} keys)"

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def info(self, name: str) -> GGUFTensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFileError(self.path, f"has no tensor named {name!r}") from None

    def tensor_bytes(self, name: str) -> npt.NDArray[np.uint8]:
        """(nbytes,) uint8: a read-only view into the file map, never a copy."""
        info = self.info(name)
        return self._map[info.offset : info.offset + info.nbytes]

    def stored_rows(self, name: str) -> npt.NDArray[np.uint8]:
        """The tensor's bytes as (*shape[:-1], bytes per row): a view into the file map. GGUF blocks run along
        the last axis and a row holds whole blocks, so rows[a:b] is exactly the data of rows a..b-1."""
        info = self.info(name)
        block, block_bytes = GGML_QUANT_SIZES[info.ggml_type]
        return self.tensor_bytes(name).reshape(*info.shape[:-1], info.shape[-1] // block * block_bytes)

    def dequantize(self, name: str) -> npt.NDArray[np.float32]:
        """The whole tensor as float32 in numpy row-major shape (a new array)."""
        return self._decode(name, self.stored_rows(name))

    def dequantize_rows(self, name: str, rows: slice | npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        """Rows of a matrix (a slice or row indices of its first axis) as float32: only those rows are read
        and dequantized."""
        if len(self.info(name).shape) < 2:
            raise ValueError(f"{self.path}: tensor {name!r} is a vector, it has no rows to select")
        return self._decode(name, self.stored_rows(name)[rows])

    def _decode(self, name: str, stored: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        ggml_type = self.info(name).ggml_type
        if ggml_type not in decodable_types():
            raise ModelFileError(
                self.path,
                f"tensor {name!r} is {ggml_type.name}, which is not supported "
                f"(supported: {type_names(decodable_types())})",
            )
        values = dequantize_blocks(stored, ggml_type)
        # F32 comes back as a view of the map: a copy lets the file close once the caller is done with it.
        decoded: npt.NDArray[np.float32] = (
            np.array(values) if np.may_share_memory(values, stored) else np.asarray(values)
        )
        return decoded
