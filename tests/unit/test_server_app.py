"""The app's HTTP edges that need no engine: unknown routes, wrong methods, bad JSON, the API key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings


@pytest.fixture
def client() -> TestClient:
    # No `with`: the lifespan (which builds the engine) does not run, so these tests stay fast.
    return TestClient(create_app(Settings()), raise_server_exceptions=False)


def assert_error_shape(body: object) -> dict[str, object]:
    assert isinstance(body, dict) and set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_unknown_route_is_404_in_the_error_shape(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    error = assert_error_shape(response.json())
    assert "/v1/nothing-here" in str(error["message"])


def test_wrong_method_is_405_in_the_error_shape(client: TestClient) -> None:
    response = client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert assert_error_shape(response.json())["code"] == "method_not_allowed"


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions",
        content=b'{"model": "m", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "JSON" in str(assert_error_shape(response.json())["message"])


def test_health_is_503_before_the_engine_exists(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 503 and response.json()["status"] == "starting"


def test_metrics_are_served_before_the_engine_exists(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "lpu_generation_tokens_total 0.0" in response.text


def test_api_key_guards_the_openai_routes_only() -> None:
    client = TestClient(create_app(Settings(api_key="sesame")), raise_server_exceptions=False)
    missing = client.get("/v1/models")
    assert missing.status_code == 401
    assert assert_error_shape(missing.json())["code"] == "invalid_api_key"
    wrong = client.post("/v1/chat/completions", headers={"authorization": "Bearer nope"}, content=b"not json")
    assert wrong.status_code == 401  # before any body parsing
    assert client.get("/health").status_code == 503  # not 401: probes carry no key
    assert client.get("/metrics").status_code == 200
    # the right key passes the guard (and reaches a route that, without an engine, answers 503)
    assert client.get("/v1/models", headers={"authorization": "Bearer sesame"}).status_code == 503
