"""`lpu export`: any model we can load, written as a HuggingFace directory other engines load as is.

config.json (LlamaForCausalLM, Qwen2ForCausalLM for q/k/v biases, MixtralForCausalLM for experts), generation_config.json,
model.safetensors in float32 written tensor by tensor (a synthetic 7B never exists whole in memory), and the
tokenizer: a tokenizer.json source's files as they are; any other vocabulary (GGUF, llama2.c tokenizer.bin,
the demo's bytes) converted to tokenizer.json through the `tokenizers` library, with BOS/EOS and the chat
template in tokenizer_config.json. The weights are exactly the float32 tensors our pipeline quantizes, so
another engine and this one start from identical bytes, and `lpu serve` on the export gives the source's
greedy text.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lpu_runtime.catalog import LoadedModel, load_model
from lpu_runtime.config import ModelConfig
from lpu_runtime.errors import ModelFileError
from lpu_runtime.loaders.assets import ServedTokenizer
from lpu_runtime.loaders.hf import SINGLE_FILE, hf_keys
from lpu_runtime.loaders.safetensors import write_safetensors
from lpu_runtime.model import Checkpoint, tensor_shapes
from lpu_runtime.tokenizer import Tokenizer
from lpu_runtime.tokenizers.hf import HFTokenizer
from lpu_runtime.tokenizers.hf_export import to_tokenizer_json

# Files that travel with a tokenizer.json in a HuggingFace directory.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)


def hf_config(config: ModelConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    biased = config.attention_bias
    scaling: dict[str, Any] | None = None
    if config.rope_scaling is not None:
        rs = config.rope_scaling
        scaling = {"rope_type": rs.kind, "factor": rs.factor}
        if rs.kind == "llama3":
            scaling |= {
                "low_freq_factor": rs.low_freq_factor,
                "high_freq_factor": rs.high_freq_factor,
                "original_max_position_embeddings": rs.original_max_context,
            }
    eos = sorted(tokenizer.eos_ids)
    arch, kind = ("Qwen2ForCausalLM", "qwen2") if biased else ("LlamaForCausalLM", "llama")
    experts: dict[str, Any] = {}
    if config.is_moe:
        arch, kind = "MixtralForCausalLM", "mixtral"
        experts = {"num_local_experts": config.n_experts, "num_experts_per_tok": config.n_experts_per_token}
    return {
        "architectures": [arch],
        "model_type": kind,
        **experts,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_context,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": scaling,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tied_embeddings,
        "attention_bias": biased,
        "mlp_bias": False,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "torch_dtype": "float32",
    }


def export_model(
    model: str,
    out: Path,
    *,
    tokenizer: str | None = None,
    chat_template: str | None = None,
    seed: int = 0,
    on_tensor: Callable[[str, int], None] | None = None,
) -> list[Path]:
    """Writes `model` to the directory `out` (created; must be empty) and returns the files written."""
    loaded = load_model(model, seed=seed, tokenizer=tokenizer, chat_template=chat_template)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelFileError(out, "exists and is not an empty directory: choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    written = write_hf_directory(loaded.source.open(), loaded.tokenizer, out, on_tensor)
    served = loaded.tokenizer
    inner = served.inner if isinstance(served, ServedTokenizer) else served
    if isinstance(inner, HFTokenizer):
        written += _copy_tokenizer_files(inner.path.parent, out)
        if chat_template is not None:
            shutil.copyfile(chat_template, out / "chat_template.jinja")
            written.append(out / "chat_template.jinja")
    else:
        written += _write_converted_tokenizer(inner, loaded, out)
    return written


def write_hf_directory(
    checkpoint: Checkpoint,
    tokenizer: Tokenizer,
    out: Path,
    on_tensor: Callable[[str, int], None] | None = None,
) -> list[Path]:
    """config.json, generation_config.json and model.safetensors (float32, one tensor in memory at a time)."""
    cfg = checkpoint.config
    config = hf_config(cfg, tokenizer)
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    written = []
    for name, content in (("config.json", config), ("generation_config.json", generation)):
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
        written.append(out / name)
    # Tied models store the embedding once, under embed_tokens, as transformers does. A MoE layer's stacked
    # matrices are written expert by expert: key -> (canonical name, its rows).
    sources: dict[str, tuple[str, int, int]] = {}
    for name, shape in tensor_shapes(cfg).items():
        if cfg.tied_embeddings and name == "output":
            continue
        keys = hf_keys(name, cfg)
        per = shape[0] // len(keys)
        sources |= {key: (name, i * per, (i + 1) * per) for i, key in enumerate(keys)}
    shapes = {key: (b - a, *tensor_shapes(cfg)[name][1:]) for key, (name, a, b) in sources.items()}
    write_safetensors(
        out / SINGLE_FILE,
        shapes,
        lambda key: checkpoint.rows(*sources[key]),
        {"format": "pt", "exported_by": "lpu-serve", "source": checkpoint.origin},
        on_tensor,
    )
    written.append(out / SINGLE_FILE)
    return written


def _copy_tokenizer_files(folder: Path, out: Path) -> list[Path]:
    """A tokenizer.json's HuggingFace siblings, as they are."""
    copied = []
    for name in TOKENIZER_FILES:
        if (folder / name).is_file() and not (out / name).exists():
            shutil.copyfile(folder / name, out / name)
            copied.append(out / name)
    return copied


def _write_converted_tokenizer(tokenizer: Tokenizer, loaded: LoadedModel, out: Path) -> list[Path]:
    """tokenizer.json converted from our own vocabulary, and a tokenizer_config.json with its special tokens
    and the model's chat template, which transformers' PreTrainedTokenizerFast and our HF loader both read."""
    to_tokenizer_json(tokenizer).save(str(out / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token or None,
        "eos_token": tokenizer.eos_token or None,
        "add_bos_token": tokenizer.adds_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": loaded.config.max_context,
    }
    if loaded.chat_template is not None:
        source = loaded.chat_template.source
        config["chat_template"] = (
            source if isinstance(source, str) else [{"name": k, "template": v} for k, v in source.items()]
        )
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return [out / "tokenizer.json", out / "tokenizer_config.json"]
