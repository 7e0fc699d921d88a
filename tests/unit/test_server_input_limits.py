"""Body size and read timeouts, and the lone-surrogate check, through the app's middleware."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from server.text_check import lone_surrogate


def test_lone_surrogates_are_found_where_they_are() -> None:
    def find(value: object) -> str | None:
        detail = lone_surrogate(json.dumps(value).encode())
        return None if detail is None else detail.param

    assert find({"messages": [{"role": "user", "content": "fine \U0001f600"}]}) is None  # a pair is valid
    assert find({"messages": [{"role": "user", "content": "a\ud800b"}]}) == "messages.0.content"
    assert find({"stop": ["ok", "\udfff"]}) == "stop.1"
    assert find({"extra": {"\ud800": 1}}) == "extra.\\ud800"
    assert lone_surrogate(b'{"text": "a\\\\ud800"}') is None  # an escaped backslash, then plain text
    assert lone_surrogate(b'{"broken": "\\ud800') is None  # not JSON: the app reports that itself


def test_bodies_over_the_limit_get_413_and_surrogates_400() -> None:
    client = TestClient(create_app(Settings(max_body_mib=0.001)), raise_server_exceptions=False)
    response = client.post(
        "/v1/completions", content=b"x" * 2000, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and response.headers["connection"] == "close"
    response = client.post("/v1/completions", content=b'{"prompt": "\\ud800"}')
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
