"""HuggingFace checkpoints: a directory with config.json and model.safetensors (or shards and their index).

Architectures: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (q/k/v biases), MixtralForCausalLM
(mixture of experts: each layer's router and its experts' matrices, stacked in expert order). Weights are
F32, F16 or BF16, memory-mapped; every tensor's name and shape is checked against the config before any data
is read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lpu_runtime.config import ModelConfig, RopeScaling
from lpu_runtime.errors import ModelFileError
from lpu_runtime.loaders.safetensors import SafetensorsFile, tensor_names
from lpu_runtime.model import Checkpoint, tensor_shapes

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "MixtralForCausalLM")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "wq.bias": "self_attn.q_proj.bias",
    "wk.bias": "self_attn.k_proj.bias",
    "wv.bias": "self_attn.v_proj.bias",
    "ffn_norm": "post_attention_layernorm.weight",
    "w1": "mlp.gate_proj.weight",
    "w3": "mlp.up_proj.weight",
    "w2": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "tok_embeddings": "model.embed_tokens.weight",
    "norm": "model.norm.weight",
    "output": "lm_head.weight",
}


_MOE_ROUTER = "block_sparse_moe.gate.weight"
_MOE_EXPERTS = ("w1", "w2", "w3")  # block_sparse_moe.experts.{e}.{w}.weight, Mixtral's names as ours


def hf_keys(name: str, config: ModelConfig, tied: bool = False) -> tuple[str, ...]:
    """The transformers parameters holding a canonical tensor: one, or, for a MoE layer's expert-stacked
    matrices, one per expert in expert order."""
    if config.is_moe and name.startswith("layers."):
        _, index, field = name.split(".", 2)
        if field == "router":
            return (f"model.layers.{index}.{_MOE_ROUTER}",)
        if field in _MOE_EXPERTS:
            return tuple(
                f"model.layers.{index}.block_sparse_moe.experts.{e}.{field}.weight"
                for e in range(config.n_experts)
            )
    return (hf_name(name, tied),)


def hf_name(name: str, tied: bool = False) -> str:
    """The transformers parameter name of a canonical tensor name ("layers.3.wq" -> model.layers.3...)."""
    if name == "output" and tied:
        return _TOP_NAMES["tok_embeddings"]
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    _, index, field = name.split(".", 2)
    return f"model.layers.{index}.{_LAYER_NAMES[field]}"


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(path, "is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelFileError(path, "is not a JSON object")
    return value


def _rope_scaling(path: Path, raw: Any) -> RopeScaling | None:
    if raw is None:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    try:
        if kind == "llama3":
            return RopeScaling(
                "llama3",
                float(raw["factor"]),
                float(raw.get("low_freq_factor", 1.0)),
                float(raw.get("high_freq_factor", 4.0)),
                int(raw.get("original_max_position_embeddings", 8192)),
            )
        return RopeScaling(str(kind), float(raw["factor"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(path, f"rope_scaling {raw} is not supported: {exc}") from None


def read_hf_config(directory: Path, name: str) -> ModelConfig:
    """The architecture in a model directory's config.json, or ModelFileError naming what it cannot serve."""
    return read_hf_config_file(directory / "config.json", name)


def read_hf_config_file(path: Path, name: str) -> ModelConfig:
    """A HuggingFace config.json -> ModelConfig."""
    cfg = _json(path)
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise ModelFileError(
            path, f"architecture {arch} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    if cfg.get("hidden_act", "silu") != "silu" or cfg.get("mlp_bias"):
        raise ModelFileError(path, "only SwiGLU MLPs without biases (hidden_act silu) are supported")
    qwen2 = arch == "Qwen2ForCausalLM"
    if cfg.get("attention_bias") and not qwen2:
        raise ModelFileError(path, "attention_bias with an o_proj bias is not supported")
    try:
        dim, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        context = int(cfg.get("max_position_embeddings", 2048))
        window = cfg.get("sliding_window")
        if window and (not qwen2 or cfg.get("use_sliding_window")):
            # Within the window sliding-window attention is full attention: capping the context is exact.
            context = min(context, int(window))
        return ModelConfig(
            name=name,
            dim=dim,
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or 0),  # absent or null: hidden_size / heads
            ffn_dim=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_context=context,
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=qwen2,
            rope_scaling=_rope_scaling(path, cfg.get("rope_scaling")),
            n_experts=int(cfg.get("num_local_experts", 1)),
            n_experts_per_token=int(cfg.get("num_experts_per_tok", 1)),
        )
    except KeyError as exc:
        raise ModelFileError(path, f"misses the field {exc.args[0]}") from None
    except (TypeError, ValueError) as exc:
        raise ModelFileError(path, f"holds an unusable value: {exc}") from None


def weight_files(directory: Path) -> list[SafetensorsFile]:
    if (directory / SINGLE_FILE).is_file():
        return [SafetensorsFile(directory / SINGLE_FILE)]
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = _json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFileError(index, "has no weight_map")
        return [SafetensorsFile(directory / shard) for shard in sorted(set(weight_map.values()))]
    other = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pth"))
    hint = f" (it has {other[0]}: convert PyTorch pickles to safetensors)" if other else ""
    raise ModelFileError(directory, f"holds neither {SINGLE_FILE} nor {INDEX_FILE}{hint}")


def load_hf_checkpoint(directory: Path, name: str | None = None) -> Checkpoint:
    config = read_hf_config(directory, name or directory.resolve().name)
    owner = tensor_names(weight_files(directory))
    tied = config.tied_embeddings or (hf_name("output") not in owner)
    if tied != config.tied_embeddings:
        # Some exports drop lm_head.weight without setting tie_word_embeddings; transformers ties them then.
        config = ModelConfig(**{**config.__dict__, "tied_embeddings": True})
    for name_, shape in tensor_shapes(config).items():
        keys = hf_keys(name_, config, tied)
        each = (shape[0] // len(keys), *shape[1:])  # a MoE matrix: one expert's rows per key
        for key in keys:
            if key not in owner:
                raise ModelFileError(directory, f"misses tensor {key}")
            got = owner[key].entries[key].shape
            if got != each:
                raise ModelFileError(
                    owner[key].path, f"tensor {key} has shape {got}, expected {each} from config.json"
                )

    def tensor(key: str) -> Any:
        return owner[key].tensor(key)

    def load(name_: str) -> Any:
        return _stacked(hf_keys(name_, config, tied), tensor)

    def rows(name_: str, start: int, stop: int) -> Any:
        """Only the experts holding rows [start, stop) are read."""
        keys = hf_keys(name_, config, tied)
        per = tensor_shapes(config)[name_][0] // len(keys)
        first, last = start // per, -(-stop // per)
        return _stacked(keys[first:last], tensor)[start - first * per : stop - first * per]

    return Checkpoint(config, load, str(directory), row_loader=rows if config.is_moe else None)


def _stacked(keys: tuple[str, ...], tensor: Callable[[str], Any]) -> Any:
    """One tensor, or several (experts) stacked along their rows."""
    return tensor(keys[0]) if len(keys) == 1 else np.concatenate([tensor(k) for k in keys])
