"""llama-architecture GGUF checkpoints (llama.cpp): config from `llama.*` metadata, tensors of every type the
`gguf` package dequantizes (F32, F16, BF16, Q4_0 ... Q8_0, the K-quants, IQ and ternary types).

Quantized tensors are dequantized to float32 and then requantized by the pipeline to our int8 with one
scale per output channel, like every other format. Keeping llama.cpp's blocks would need a scale per 32 or
256 columns inside every dot product, which breaks the exact int32 accumulation the chips rely on (gemm.py);
the cost of the second rounding is measured in docs/checkpoints.md. A stage reads only the rows its chips
hold: a GGUF row is whole blocks, so those rows' bytes are dequantized and no others. GGUF keeps Q/K rows in
llama.cpp's interleaved-pair RoPE order (convert_hf_to_gguf permutes them); they are reordered to
rotate-half here, row by row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.config import ModelConfig, RopeScaling
from lpu_runtime.errors import ModelFileError
from lpu_runtime.gguf_file import GGUFFile, decodable_types, type_names
from lpu_runtime.loaders.layout import rotate_half_order
from lpu_runtime.model import Checkpoint, tensor_shapes

F32 = NDArray[np.float32]
_LAYER_NAMES = {
    "attn_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
    "ffn_norm": "ffn_norm", "w1": "ffn_gate", "w3": "ffn_up", "w2": "ffn_down",
}  # fmt: skip
_TOP_NAMES = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}


def gguf_name(name: str, tied: bool) -> str:
    if name == "output" and tied:
        name = "tok_embeddings"
    if name in _TOP_NAMES:
        return f"{_TOP_NAMES[name]}.weight"
    _, index, field = name.split(".", 2)
    return f"blk.{index}.{_LAYER_NAMES[field]}.weight"


def gguf_model_config(gguf: GGUFFile, name: str) -> ModelConfig:
    arch = gguf.get("general.architecture")
    if arch != "llama":
        raise ModelFileError(gguf.path, f"GGUF architecture {arch!r} is not supported (only 'llama')")
    if "rope_freqs.weight" in gguf.tensors:
        raise ModelFileError(gguf.path, "per-frequency RoPE factors (rope_freqs.weight) are not supported")

    def key(k: str, default: Any = None) -> Any:
        value = gguf.get(f"llama.{k}", default)
        if value is None:
            raise ModelFileError(gguf.path, f"misses the metadata key llama.{k}")
        return value

    dim, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", dim // heads))  # llama.cpp's default: embedding / heads
    for k in ("attention.value_length", "rope.dimension_count"):
        if int(key(k, head_dim)) != head_dim:
            raise ModelFileError(
                gguf.path, f"llama.{k} {key(k)} != {head_dim} (the key length) is not supported"
            )
    scaling = None
    kind = gguf.get("llama.rope.scaling.type", "none")
    if kind == "linear":
        scaling = RopeScaling("linear", float(key("rope.scaling.factor")))
    elif kind != "none":
        raise ModelFileError(gguf.path, f"RoPE scaling type {kind!r} is not supported")
    vocab = int(gguf.get("llama.vocab_size") or gguf.info("token_embd.weight").shape[0])
    try:
        return ModelConfig(
            name=name,
            dim=dim,
            n_layers=int(key("block_count")),
            n_heads=heads,
            n_kv_heads=int(key("attention.head_count_kv", heads)),
            head_dim=head_dim,
            ffn_dim=int(key("feed_forward_length")),
            vocab_size=vocab,
            rope_theta=float(key("rope.freq_base", 10000.0)),
            norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            max_context=int(key("context_length")),
            tied_embeddings="output.weight" not in gguf.tensors,
            rope_scaling=scaling,
        )
    except ValueError as exc:
        raise ModelFileError(gguf.path, f"its llama.* metadata is not a model: {exc}") from None


def load_gguf_checkpoint(path: Path, name: str | None = None, gguf: GGUFFile | None = None) -> Checkpoint:
    gguf = gguf or GGUFFile(path)
    config = gguf_model_config(gguf, name or path.stem)
    tied = config.tied_embeddings
    shapes = tensor_shapes(config)
    for canonical, shape in shapes.items():
        info = gguf.info(gguf_name(canonical, tied))
        if info.shape != shape:
            raise ModelFileError(path, f"tensor {info.name} has shape {info.shape}, expected {shape}")
        if info.ggml_type not in decodable_types():
            raise ModelFileError(
                path,
                f"tensor {info.name} is {info.ggml_type.name}, which is not supported "
                f"(supported: {type_names(decodable_types())})",
            )
    heads = {"wq": config.n_heads, "wk": config.n_kv_heads}

    def rows(canonical: str, start: int, stop: int) -> F32:
        key, kind = gguf_name(canonical, tied), canonical.rsplit(".", 1)[-1]
        if kind in heads:  # the rotate-half rows asked for, wherever they are in the interleaved order
            order = rotate_half_order(shapes[canonical][0], heads[kind])
            return gguf.dequantize_rows(key, order[start:stop])
        return gguf.dequantize_rows(key, slice(start, stop))

    def load(canonical: str) -> F32:
        shape = shapes[canonical]
        if len(shape) == 1:
            return gguf.dequantize(gguf_name(canonical, tied))
        return rows(canonical, 0, shape[0])

    return Checkpoint(config, load, str(path), row_loader=rows)
