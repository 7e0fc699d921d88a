"""Bad input of every kind gets a 4xx in the OpenAI error shape, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.support import Server

WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "model"),
        ({"model": "M"}, None),  # unknown model or missing messages: either way a 4xx, never a 500
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content.0.type",
        ),
        ({"max_tokens": "lots"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"seed": 2**70}, "seed"),
        ({"stream": "maybe"}, "stream"),
        ({"frequency_penalty": 9}, "frequency_penalty"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "two words"}}]}, "tools.0.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]},
            "tools.0.function.parameters",
        ),
        (  # tools with a format: its schema is checked as without them
            {"tools": [WEATHER], "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema",
        ),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
        ({"parallel_tool_calls": "sometimes"}, "parallel_tool_calls"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "objekt"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"top_logprobs": 5}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"five": 1}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"min_tokens": 3}, "min_tokens"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": [{"role": "user", "content": "x", "name": "ann"}]}, "messages.0.name"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]}, "messages.0.tool_calls"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"modalities": ["audio"]}, "modalities"),
    ],
)
def test_bad_chat_bodies_are_400_naming_the_field(
    server: Server, body: dict[str, Any], param: str | None
) -> None:
    full = {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **body}
    if body == {}:
        full.pop("model")
    if body == {"model": "M"}:
        full.pop("messages")
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=full, timeout=30)
    assert 400 <= response.status_code < 500
    if param is not None:
        assert_error(response, 400, param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, 10**9]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": {"text": "x"}}, "prompt"),
        ({"echo": True, "logprobs": 1}, "logprobs"),
        ({"suffix": "!"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"logprobs": 6}, "logprobs"),
        ({"n": 0}, "n"),
        ({"logit_bias": {"1": -101}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"min_tokens": 3}, "min_tokens"),
    ],
)
def test_bad_completion_bodies_are_400_naming_the_field(
    server: Server, body: dict[str, Any], param: str
) -> None:
    full = {"model": server.model, "prompt": "hi", "max_tokens": 2, **body}
    assert_error(httpx.post(f"{server.base_url}/v1/completions", json=full, timeout=30), 400, param)


def test_malformed_json_is_400(server: Server) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=b'{"model": ',
        headers={"content-type": "application/json"},
    )
    assert "JSON" in assert_error(response, 400)["message"]


def test_json_that_is_not_an_object_is_400(server: Server) -> None:
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=["not", "an", "object"])
    assert_error(response, 400)


def test_form_encoded_body_explains_the_content_type(server: Server) -> None:
    # what `curl -d '{...}'` sends without -H 'Content-Type: application/json'
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=b'{"model": "m", "messages": []}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert "Content-Type: application/json" in assert_error(response, 400)["message"]


def test_unknown_route_and_wrong_method(server: Server) -> None:
    assert assert_error(httpx.get(f"{server.base_url}/v1/engines"), 404)["code"] == "not_found"
    assert (
        assert_error(httpx.delete(f"{server.base_url}/v1/chat/completions"), 405)["code"]
        == "method_not_allowed"
    )


def test_unknown_model_is_404_on_every_route(server: Server) -> None:
    chat = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    assert_error(httpx.post(f"{server.base_url}/v1/chat/completions", json=chat), 404, "model")
    assert_error(
        httpx.post(f"{server.base_url}/v1/completions", json={"model": "nope", "prompt": "x"}), 404, "model"
    )
    assert_error(httpx.get(f"{server.base_url}/v1/models/org/nope"), 404)


def test_health(server: Server) -> None:
    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and {"running", "waiting"} <= set(body)
