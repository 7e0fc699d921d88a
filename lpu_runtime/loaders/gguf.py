"""llama-architecture GGUF checkpoints (llama.cpp): config from `llama.*` metadata, tensors F32/F16/BF16/Q8_0.

Q8_0 tensors are dequantized (32-value blocks, one fp16 scale each) and then requantized by the pipeline
to our int8 with one scale per output channel, like every other format. Keeping the blocks would need a
scale per 32 columns inside every dot product, which breaks the exact int32 accumulation the chips rely on
(gemm.py); the second rounding costs at most half a per-channel step per weight (measured in
docs/checkpoints.md). GGUF keeps Q/K rows in llama.cpp's interleaved-pair RoPE order (convert_hf_to_gguf
permutes them); they are reordered to rotate-half here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.config import ModelConfig, RopeScaling
from lpu_runtime.errors import ModelFileError
from lpu_runtime.gguf_file import GGMLType, GGUFFile
from lpu_runtime.loaders.layout import interleaved_to_rotate_half
from lpu_runtime.model import Checkpoint, tensor_shapes

F32 = NDArray[np.float32]
SUPPORTED_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0)
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
    for canonical, shape in tensor_shapes(config).items():
        info = gguf.info(gguf_name(canonical, tied))
        if info.shape != shape:
            raise ModelFileError(path, f"tensor {info.name} has shape {info.shape}, expected {shape}")
        if info.ggml_type not in SUPPORTED_TYPES:
            raise ModelFileError(
                path,
                f"tensor {info.name} is {info.ggml_type.name}, which is not supported "
                f"(supported: {', '.join(t.name for t in SUPPORTED_TYPES)})",
            )
    heads = {"wq": config.n_heads, "wk": config.n_kv_heads}

    def load(canonical: str) -> F32:
        value = gguf.dequantize(gguf_name(canonical, tied))
        kind = canonical.rsplit(".", 1)[-1]
        return interleaved_to_rotate_half(value, heads[kind]) if kind in heads else value

    return Checkpoint(config, load, str(path))
