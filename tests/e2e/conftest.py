"""One real `lpu serve` subprocess for the whole e2e session, on a free localhost port with the embedded
demo model (no download); and, for the modules that need a trained model, one of `lpu serve` with no --model
(SmolLM2-135M-Instruct, as `make run` starts it). Tests talk to them only over HTTP, exactly as users do."""

from __future__ import annotations

import os
from collections.abc import Iterator

import openai
import pytest

from lpu_runtime import DEMO_MODEL
from lpu_runtime.loaders.wheel_models import CACHE_ENV, SMOLLM2, cached_path
from tests.e2e.support import METRICS_MAX_USERS, Server, running_server
from tests.shared_models import require


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = ["--model", DEMO_MODEL.name, "--metrics-max-users", str(METRICS_MAX_USERS)]
    with running_server(tmp_path_factory.mktemp("server"), DEMO_MODEL.name, extra) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    # max_retries=0: a retried 5xx or a retried timeout would hide exactly what these tests look for
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SmolLM2 on 8 chips from lpu-serve's cache, seeded here from the shared copy with pip pointed at nothing,
    so a broken cache fails instead of downloading."""
    gguf = require("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    cache = tmp_path_factory.mktemp("lpu-cache")
    env = {CACHE_ENV: str(cache), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))
        target = cached_path(SMOLLM2)
    target.parent.mkdir(parents=True)
    target.symlink_to(gguf)  # what the one-time fetch leaves there (tests/unit/test_wheel_models.py)
    with running_server(tmp_path_factory.mktemp("default"), SMOLLM2.name, ["--chips", "8"], env) as server:
        yield server
