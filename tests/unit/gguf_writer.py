"""Hand-built GGUF files for tests: malformed ones, and small vocabularies with exactly the keys a test needs."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path


def gguf_string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_value(value: object) -> tuple[int, bytes]:
    """(GGUF value type, encoding) for str, bool, int (as int32 / uint64 when large), float and lists."""
    if isinstance(value, str):
        return 8, gguf_string(value)
    if isinstance(value, bool):
        return 7, struct.pack("<?", value)
    if isinstance(value, int):
        return (5, struct.pack("<i", value)) if -(2**31) <= value < 2**31 else (10, struct.pack("<Q", value))
    if isinstance(value, float):
        return 6, struct.pack("<f", value)
    if isinstance(value, list):
        encoded = [gguf_value(v) for v in value]
        elem = encoded[0][0] if encoded else 8
        return 9, struct.pack("<IQ", elem, len(value)) + b"".join(e for _, e in encoded)
    raise TypeError(type(value))


def write_gguf(
    path: Path,
    *,
    version: int = 3,
    kv: Sequence[tuple[str, int, bytes]] = (),
    tensors: Sequence[tuple[str, tuple[int, ...], int, bytes]] = (),
    alignment: int = 32,
) -> Path:
    """A GGUF file built by hand: kv entries are (key, value type code, encoded value), tensors are
    (name, GGUF dims, ggml type code, raw data)."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv))
    for key, vtype, value in kv:
        head += gguf_string(key) + struct.pack("<I", vtype) + value
    offset = 0
    blobs = b""
    for name, dims, ggml_type, data in tensors:
        head += gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        head += struct.pack("<IQ", ggml_type, offset)
        pad = -len(data) % alignment
        blobs += data + b"\0" * pad
        offset += len(data) + pad
    head += b"\0" * (-len(head) % alignment)
    path.write_bytes(head + blobs)
    return path


def write_metadata_gguf(path: Path, metadata: dict[str, object]) -> Path:
    """A tensor-less GGUF holding `metadata` (a vocabulary-only file like llama.cpp's ggml-vocab-*.gguf)."""
    return write_gguf(path, kv=[(key, *gguf_value(value)) for key, value in metadata.items()])
