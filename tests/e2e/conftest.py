"""One real `lpu serve` subprocess for the whole e2e session, on a free localhost port with the embedded
demo model (no download). Tests talk to it only over HTTP, exactly as users do."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from lpu_runtime import DEMO_MODEL
from tests.e2e.support import METRICS_MAX_USERS, Server, running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = ["--model", DEMO_MODEL.name, "--metrics-max-users", str(METRICS_MAX_USERS)]
    with running_server(tmp_path_factory.mktemp("server"), DEMO_MODEL.name, extra) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    # max_retries=0: a retried 5xx or a retried timeout would hide exactly what these tests look for
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60)
