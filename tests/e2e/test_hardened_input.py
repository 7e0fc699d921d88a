"""The bad-input corpus that once gave 500s or wrong tokens: lone surrogates, control tokens typed into a
message, a temperature too small to divide by."""

from __future__ import annotations

import json
import socket

import openai
import pytest

from tests.e2e.support import Server

LONE = "a\ud800b"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONE}]}, "messages.0.content"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "user": LONE}, "user"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": ["x", LONE]}, "stop.1"),
        ("/v1/chat/completions", {"model": LONE, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ("/v1/completions", {"prompt": LONE}, "prompt"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_a_400_naming_the_field_and_keeps_the_connection(
    server: Server, path: str, body: dict[str, object], param: str
) -> None:
    payload = json.dumps({"model": server.model, "max_tokens": 2, **body}).encode()  # ensure_ascii: \ud800
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock, sock.makefile("rb") as reader:
        for _ in range(2):  # the same connection answers a second request: keep-alive survived the first
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            status = reader.readline()
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            error = json.loads(reader.read(int(headers["content-length"])))["error"]
            assert status.startswith(b"HTTP/1.1 400"), (status, error)
            assert error["param"] == param and error["code"] == "invalid_unicode"
            assert headers.get("connection") != "close"


def prompt_tokens(client: openai.OpenAI, model: str, content: str) -> int:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=1
    )
    assert answer.usage is not None
    return answer.usage.prompt_tokens


def test_control_tokens_typed_in_a_message_are_text(server: Server, client: openai.OpenAI) -> None:
    # The demo vocabulary is bytes plus <s> and </s>: as text, "</s>" is 4 tokens; as the control token, 1.
    plain = prompt_tokens(client, server.model, "ab")
    assert prompt_tokens(client, server.model, "a</s>b") == plain + 4
    assert prompt_tokens(client, server.model, "a<s>b") == plain + 3


def test_a_vanishing_temperature_samples_greedily(server: Server, client: openai.OpenAI) -> None:
    def text(temperature: float) -> str:
        answer = client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12,
            temperature=temperature, seed=3,
        )  # fmt: skip
        return answer.choices[0].message.content or ""

    greedy = text(0.0)
    assert "\x00" not in greedy
    assert text(1e-307) == greedy
    assert text(5e-324) == greedy  # the smallest double
