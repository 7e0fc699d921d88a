"""llama2.c checkpoints (karpathy/llama2.c): legacy v0, v1 ("ak42", fp32) and v2 ("ak42", int8 Q8_0 groups).

- v0 (run.c): seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), a negative
  vocab_size meaning an untied classifier; fp32 tensors grouped by kind over all layers: embeddings, attention
  norms, wq, wk, wv, wo, ffn norms, w1, w2, w3, final norm, RoPE tables (skipped), classifier when untied.
- v1/v2 (export.py): uint32 magic 0x616b3432, int32 version, the same seven int32, a uint8 shared-classifier
  flag (v2 then an int32 group size), zero padding to 256 bytes; fp32 norms (attention, ffn, final) first,
  then the matrices: embeddings, wq, wk, wv, wo, w1, w2, w3, classifier when untied. v2 stores each matrix as
  its int8 values then one fp32 scale per group of `group_size` consecutive values (value = q * scale).

Every matrix is PyTorch's (out_features, in_features). Q/K rows are in the interleaved-pair RoPE order and are
reordered to rotate-half here.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.config import ModelConfig
from lpu_runtime.errors import ModelFileError
from lpu_runtime.loaders.layout import interleaved_to_rotate_half
from lpu_runtime.model import Checkpoint

F32 = NDArray[np.float32]
MAGIC = 0x616B3432  # "ak42"
HEADER_BYTES = 256  # v1/v2 header, zero-padded
V0_HEADER = struct.Struct("<7i")


def _read_header(path: Path, buf: NDArray[np.uint8]) -> tuple[int, tuple[int, ...], bool, int, int]:
    """(version, the seven sizes, tied classifier, group size, offset of the first weight)."""
    if len(buf) < V0_HEADER.size:
        raise ModelFileError(path, f"is truncated: {len(buf)} bytes cannot hold a llama2.c header")
    head = bytes(buf[:HEADER_BYTES])
    (magic,) = struct.unpack_from("<I", head, 0)
    if magic != MAGIC:
        sizes = V0_HEADER.unpack_from(head, 0)
        tied = sizes[5] > 0
        return 0, (*sizes[:5], abs(sizes[5]), sizes[6]), tied, 0, V0_HEADER.size
    if len(buf) < HEADER_BYTES:
        raise ModelFileError(path, f"is truncated: {len(buf)} bytes cannot hold a llama2.c v1/v2 header")
    (version,) = struct.unpack_from("<i", head, 4)
    if version not in (1, 2):
        raise ModelFileError(path, f"llama2.c version {version} is not supported (0, 1 and 2 are)")
    sizes = struct.unpack_from("<7i", head, 8)
    tied = bool(head[36])
    group = struct.unpack_from("<i", head, 37)[0] if version == 2 else 0
    return version, sizes, tied, group, HEADER_BYTES


def _config(path: Path, sizes: tuple[int, ...], tied: bool, name: str) -> ModelConfig:
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = sizes
    try:
        return ModelConfig(
            name=name, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, ffn_dim=hidden,
            vocab_size=vocab, max_context=seq_len, tied_embeddings=tied,
        )  # fmt: skip
    except ValueError as exc:
        raise ModelFileError(
            path, f"is not a llama2.c checkpoint: its header {sizes} is not a model ({exc})"
        ) from None


class _Cursor:
    """Walks the weight section, refusing to run past the end of the file."""

    def __init__(self, path: Path, buf: NDArray[np.uint8], offset: int) -> None:
        self.path, self.buf, self.pos = path, buf, offset

    def take(self, dtype: str, count: int, what: str) -> NDArray[Any]:
        nbytes = count * np.dtype(dtype).itemsize
        if self.pos + nbytes > len(self.buf):
            raise ModelFileError(
                self.path,
                f"is truncated: {what} needs bytes {self.pos:,}..{self.pos + nbytes:,} of {len(self.buf):,}",
            )
        out = self.buf[self.pos : self.pos + nbytes].view(dtype)
        self.pos += nbytes
        return out


def _matrix_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    return {
        "wq": (cfg.dim, cfg.dim), "wk": (cfg.kv_dim, cfg.dim), "wv": (cfg.kv_dim, cfg.dim),
        "wo": (cfg.dim, cfg.dim), "w1": (cfg.ffn_dim, cfg.dim), "w2": (cfg.dim, cfg.ffn_dim),
        "w3": (cfg.ffn_dim, cfg.dim),
    }  # fmt: skip


def _layout(cfg: ModelConfig, version: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(canonical name, shape) of every stored tensor, in file order; "" names a skipped block."""
    layers = range(cfg.n_layers)
    mats = _matrix_shapes(cfg)
    if version == 0:
        yield "tok_embeddings", (cfg.vocab_size, cfg.dim)
        yield from ((f"layers.{i}.attn_norm", (cfg.dim,)) for i in layers)
        for kind in ("wq", "wk", "wv", "wo"):
            yield from ((f"layers.{i}.{kind}", mats[kind]) for i in layers)
        yield from ((f"layers.{i}.ffn_norm", (cfg.dim,)) for i in layers)
        for kind in ("w1", "w2", "w3"):
            yield from ((f"layers.{i}.{kind}", mats[kind]) for i in layers)
        yield "norm", (cfg.dim,)
        yield "", (cfg.max_context * cfg.head_dim,)  # freq_cis_real and freq_cis_imag
    else:
        yield from ((f"layers.{i}.attn_norm", (cfg.dim,)) for i in layers)
        yield from ((f"layers.{i}.ffn_norm", (cfg.dim,)) for i in layers)
        yield "norm", (cfg.dim,)
        yield "tok_embeddings", (cfg.vocab_size, cfg.dim)
        for kind in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            yield from ((f"layers.{i}.{kind}", mats[kind]) for i in layers)
    if not cfg.tied_embeddings:
        yield "output", (cfg.vocab_size, cfg.dim)


def _open(path: Path) -> NDArray[np.uint8]:
    if not path.is_file():
        raise ModelFileError(path, "no such llama2.c checkpoint")
    return np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)


def read_llama2c_config(path: Path, name: str | None = None) -> ModelConfig:
    _, sizes, tied, _, _ = _read_header(path, _open(path))
    return _config(path, sizes, tied, name or path.stem)


def load_llama2c_checkpoint(path: Path, name: str | None = None) -> Checkpoint:
    buf = _open(path)
    version, sizes, tied, group, offset = _read_header(path, buf)
    cfg = _config(path, sizes, tied, name or path.stem)
    cursor = _Cursor(path, buf, offset)
    # Only the offsets are taken here; each tensor is read (and dequantized) when the pipeline asks for it.
    stored: dict[str, Callable[[], F32]] = {}
    for tensor, shape in _layout(cfg, version):
        count = math.prod(shape)
        if version == 2 and len(shape) == 2:
            if group <= 0 or count % group:
                raise ModelFileError(path, f"group size {group} does not divide {tensor} ({count} values)")
            q = cursor.take("i1", count, tensor)
            scale = cursor.take("<f4", count // group, f"{tensor} scales")
            stored[tensor] = partial(_dequantize, q, scale, group, shape)
        else:
            stored[tensor] = partial(cursor.take("<f4", count, tensor or "RoPE tables").reshape, shape)
    if cursor.pos != len(buf):
        raise ModelFileError(
            path,
            f"has {len(buf) - cursor.pos:,} bytes after the last tensor: its header does not describe it",
        )
    heads = {"wq": cfg.n_heads, "wk": cfg.n_kv_heads}

    def load(tensor: str) -> F32:
        if tensor == "output" and cfg.tied_embeddings:
            tensor = "tok_embeddings"
        value = stored[tensor]()
        kind = tensor.rsplit(".", 1)[-1]
        return interleaved_to_rotate_half(value, heads[kind]) if kind in heads else value

    return Checkpoint(cfg, load, str(path))


def _dequantize(q: NDArray[np.int8], scale: F32, group: int, shape: tuple[int, ...]) -> F32:
    # Groups run over the flattened matrix, so they may straddle rows (llama2.c's quantize_q80).
    value: F32 = (q.reshape(-1, group).astype(np.float32) * scale[:, None]).reshape(shape)
    return value
