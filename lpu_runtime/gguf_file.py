"""GGUF v2/v3 files (llama.cpp's single-file format): metadata, tensor directory and memory-mapped tensor data.

Layout: magic "GGUF", uint32 version, uint64 tensor count, uint64 metadata count, the metadata key/value
pairs, one info record per tensor (name, dims, ggml type, offset relative to the data section), then the
data section, which starts at the next multiple of `general.alignment` (default 32). Everything is
little-endian. The file is memory-mapped once; tensor data is only ever returned as views into that map,
so a file larger than RAM is never read whole.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lpu_runtime.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32  # bytes


class GGMLType(enum.IntEnum):
    """ggml tensor types as numbered in ggml.h (gaps are types llama.cpp removed)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35


# (elements per block, bytes per block) for every type, so the directory of a file holding types we cannot
# decode is still exact; only reading such a tensor's values is refused.
_BLOCK: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 36),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
}

# Q8_0: one fp16 scale then 32 int8 quants; value = d * q.
Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])

# The types `tensor_array` returns typed views of. BF16 comes back as its raw uint16 bit patterns
# (numpy has no bfloat16); `dequantize` widens it.
_ELEMENT_DTYPES: dict[GGMLType, np.dtype[Any]] = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.BF16: np.dtype("<u2"),
    GGMLType.F64: np.dtype("<f8"),
    GGMLType.I8: np.dtype("i1"),
    GGMLType.I16: np.dtype("<i2"),
    GGMLType.I32: np.dtype("<i4"),
    GGMLType.I64: np.dtype("<i8"),
}


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
    ggml_type: GGMLType
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

        relative: list[tuple[str, tuple[int, ...], GGMLType, int]] = []
        for i in range(n_tensors):
            name = reader.string(f"tensor {i} name")
            n_dims = reader.u32(f"tensor {name!r} dimension count")
            dims = tuple(reader.u64(f"tensor {name!r} dims") for _ in range(n_dims))
            code = reader.u32(f"tensor {name!r} type")
            try:
                ggml_type = GGMLType(code)
            except ValueError:
                raise ModelFileError(self.path, f"tensor {name!r} has unknown ggml type {code}") from None
            relative.append((name, dims, ggml_type, reader.u64(f"tensor {name!r} offset")))

        self.data_offset = -(-reader.pos // self.alignment) * self.alignment  # bytes
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, dims, ggml_type, rel in relative:
            block, block_bytes = _BLOCK[ggml_type]
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

    def tensor_array(self, name: str) -> npt.NDArray[Any]:
        """A typed view in numpy row-major shape: F32/F16/F64/I* as themselves, BF16 as uint16 bit patterns,
        Q8_0 as Q8_0_BLOCK records of shape (*shape[:-1], shape[-1] // 32)."""
        info = self.info(name)
        raw = self.tensor_bytes(name)
        if info.ggml_type is GGMLType.Q8_0:
            return raw.view(Q8_0_BLOCK).reshape(*info.shape[:-1], info.shape[-1] // 32)
        dtype = _ELEMENT_DTYPES.get(info.ggml_type)
        if dtype is None:
            raise ModelFileError(
                self.path,
                f"tensor {name!r} is {info.ggml_type.name}, which is not supported "
                f"(supported: {', '.join(t.name for t in (*_ELEMENT_DTYPES, GGMLType.Q8_0))})",
            )
        return raw.view(dtype).reshape(info.shape)

    def dequantize(self, name: str) -> npt.NDArray[np.float32]:
        """The tensor's values as float32 in numpy row-major shape (a new array)."""
        info = self.info(name)
        data = self.tensor_array(name)
        if info.ggml_type is GGMLType.Q8_0:
            # (..., n_blocks, 32) float32 = per-block scale x int8 quants
            values = data["d"].astype(np.float32)[..., None] * data["qs"].astype(np.float32)
            return values.reshape(info.shape)
        if info.ggml_type is GGMLType.BF16:
            return (data.astype(np.uint32) << 16).view(np.float32)
        return data.astype(np.float32)
