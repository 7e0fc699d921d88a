"""The safetensors format, read and written without the `safetensors` package.

Layout: an 8-byte little-endian header length N, N bytes of JSON (name -> dtype, shape, [begin, end) byte
offsets into the data section, plus an optional "__metadata__" of strings), then the raw little-endian
tensor data. Reading memory-maps the file and hands out views, so a model larger than RAM is never read whole.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.errors import ModelFileError

F32 = NDArray[np.float32]

HEADER_LIMIT = 100 * 1024 * 1024  # bytes; the reference implementation refuses larger headers too
# dtype name -> numpy dtype of the stored bits; BF16 is read as uint16 bit patterns and widened below.
DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # bytes from the start of the data section
    end: int


def bf16_to_f32(bits: NDArray[np.uint16]) -> F32:
    """bfloat16 is the high half of a float32: shifting its bits up 16 is exact."""
    widened: F32 = (bits.astype(np.uint32) << 16).view(np.float32)
    return widened


class SafetensorsFile:
    """One memory-mapped .safetensors file; `tensor(name)` converts one tensor to float32 on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise ModelFileError(path, "no such safetensors file")
        size = path.stat().st_size
        if size < 8:
            raise ModelFileError(path, f"is truncated: {size} bytes cannot hold a safetensors header")
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(HEADER_LIMIT, size - 8):
                raise ModelFileError(
                    path,
                    f"is not a safetensors file or is truncated: header length {n:,} exceeds its {size:,} bytes",
                )
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(path, f"is not a safetensors file: its header is not JSON ({exc})") from None
        if not isinstance(header, dict):
            raise ModelFileError(path, "is not a safetensors file: its header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_offset = 8 + n  # bytes
        data_bytes = size - self.data_offset
        self.entries: dict[str, TensorEntry] = {}
        for name, spec in header.items():
            entry = self._entry(name, spec)
            if entry.end > data_bytes:
                raise ModelFileError(
                    path,
                    f"is truncated: tensor {name} ends at data byte {entry.end:,} but the file holds {data_bytes:,}",
                )
            self.entries[name] = entry
        self._map: np.memmap[Any, np.dtype[np.uint8]] | None = None

    def _entry(self, name: str, spec: Any) -> TensorEntry:
        try:
            dtype, shape, (begin, end) = (
                spec["dtype"],
                tuple(int(s) for s in spec["shape"]),
                spec["data_offsets"],
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise ModelFileError(self.path, f"has a malformed header entry for {name}: {exc!r}") from None
        if dtype not in DTYPES:
            raise ModelFileError(
                self.path, f"tensor {name} is {dtype}, which is not supported (only {', '.join(DTYPES)})"
            )
        if end - begin != math.prod(shape) * DTYPES[dtype].itemsize or begin < 0:
            raise ModelFileError(
                self.path, f"tensor {name}: offsets {begin}..{end} do not match {dtype} {shape}"
            )
        return TensorEntry(dtype, shape, int(begin), int(end))

    def raw(self, name: str) -> NDArray[Any]:
        """The stored values as a read-only view into the file map, in their own dtype and shape."""
        e = self.entries[name]
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        data = self._map[self.data_offset + e.begin : self.data_offset + e.end]
        return data.view(DTYPES[e.dtype]).reshape(e.shape)

    def tensor(self, name: str) -> F32:
        """float32 values: a view for F32 (no copy), a converted copy of this one tensor otherwise."""
        e = self.entries[name]
        data = self.raw(name)
        if e.dtype == "BF16":
            return bf16_to_f32(data)
        if e.dtype == "F32":
            view: F32 = data
            return view
        converted: F32 = data.astype(np.float32)
        return converted


def write_safetensors(
    path: Path,
    shapes: Mapping[str, tuple[int, ...]],
    produce: Callable[[str], F32],
    metadata: Mapping[str, str] | None = None,
    on_tensor: Callable[[str, int], None] | None = None,
) -> None:
    """Writes float32 tensors one at a time (`produce(name)` is called once per name, in order), so a file
    larger than memory can be written. The header is padded with spaces to 8 bytes, as the reference does."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in shapes.items():
            value = np.ascontiguousarray(produce(name), dtype="<f4")
            if value.shape != tuple(shape):
                raise ValueError(f"{name}: produced shape {value.shape}, declared {tuple(shape)}")
            f.write(value.tobytes())
            if on_tensor is not None:
                on_tensor(name, value.nbytes)


def tensor_names(files: Iterable[SafetensorsFile]) -> dict[str, SafetensorsFile]:
    """Which file holds each tensor, refusing a tensor stored twice."""
    owner: dict[str, SafetensorsFile] = {}
    for f in files:
        for name in f.entries:
            if name in owner:
                raise ModelFileError(f.path, f"tensor {name} is also in {owner[name].path.name}")
            owner[name] = f
    return owner
