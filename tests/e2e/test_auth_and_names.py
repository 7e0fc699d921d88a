"""A second server with an API key and a served model name containing a slash, through the official SDK."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from lpu_runtime import DEMO_MODEL
from tests.e2e.support import Server, running_server

SERVED_NAME = "lpu/demo-13m"
API_KEY = "sesame"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = ["--model", DEMO_MODEL.name, "--served-model-name", SERVED_NAME, "--api-key", API_KEY]
    with running_server(tmp_path_factory.mktemp("keyed"), SERVED_NAME, extra) as server:
        yield server


def sdk(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def test_wrong_or_missing_key_is_authentication_error(keyed_server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(keyed_server, "wrong").models.list()
    assert info.value.code == "invalid_api_key"
    response = httpx.post(f"{keyed_server.base_url}/v1/chat/completions", content=b"{not json")
    assert response.status_code == 401  # the key is checked before the body is parsed


def test_probes_need_no_key(keyed_server: Server) -> None:
    assert httpx.get(f"{keyed_server.base_url}/health").status_code == 200
    assert httpx.get(f"{keyed_server.base_url}/metrics").status_code == 200


def test_served_name_with_a_slash(keyed_server: Server) -> None:
    client = sdk(keyed_server, API_KEY)
    assert [m.id for m in client.models.list().data] == [SERVED_NAME]
    assert client.models.retrieve(SERVED_NAME).id == SERVED_NAME
    response = client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert response.model == SERVED_NAME and response.usage is not None
    with pytest.raises(openai.NotFoundError):  # the underlying id is not an alias: clients see one name
        client.chat.completions.create(
            model="lpu-demo-untrained-13m", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
