"""The SSE wire format read byte by byte with httpx, concurrency, and what a disconnect does to the engine."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from tests.e2e.support import Server, sample

MESSAGES = [{"role": "user", "content": "Tell me a story."}]


def chat_body(server: Server, **fields: Any) -> dict[str, Any]:
    return {"model": server.model, "messages": MESSAGES, "temperature": 0, **fields}


def read_sse(response: httpx.Response) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON payloads of a stream and every non-empty line as sent."""
    payloads: list[dict[str, Any]] = []
    lines: list[str] = []
    for line in response.iter_lines():
        if not line:
            continue
        lines.append(line)
        if line.startswith("data: ") and line != "data: [DONE]":
            payloads.append(json.loads(line.removeprefix("data: ")))
    return payloads, lines


def test_stream_is_openai_sse_and_matches_the_non_streamed_text(server: Server) -> None:
    body = chat_body(server, max_tokens=16, ignore_eos=True)
    plain = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30).json()
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks, lines = read_sse(response)
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)  # no pings or comments in a short stream
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert len({c["created"] for c in chunks}) == 1 and len({c["system_fingerprint"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all("usage" not in c for c in chunks)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == plain["choices"][0]["message"]["content"]


def test_completion_stream_wire_format(server: Server) -> None:
    body = {"model": server.model, "prompt": "abc", "max_tokens": 4, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=30) as response:
        chunks, lines = read_sse(response)
    assert lines[-1] == "data: [DONE]"
    assert {c["object"] for c in chunks} == {"text_completion"} and chunks[0]["id"].startswith("cmpl-")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert chunks[-1]["x_lpu"]["chips"] == server.chips
    assert all(c["usage"] is None for c in chunks[:-1])


async def _one_stream(client: httpx.AsyncClient, server: Server, i: int) -> tuple[str | None, int, str]:
    # no `user`: named users belong to test_metrics, which counts them against the label bound
    body = chat_body(server, max_tokens=12, ignore_eos=True, stream=True, temperature=1.0, seed=i)
    finish: str | None = None
    pieces = 0
    last = ""
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            last = line
            if line == "data: [DONE]":
                break
            choice = json.loads(line.removeprefix("data: "))["choices"][0]
            finish = choice["finish_reason"] or finish
            pieces += 1
    return finish, pieces, last


def test_eight_concurrent_streams_all_finish(server: Server) -> None:
    async def run() -> list[tuple[str | None, int, str]]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            return await asyncio.gather(*(_one_stream(client, server, i) for i in range(8)))

    results = asyncio.run(run())
    assert [r[0] for r in results] == ["length"] * 8
    assert all(r[2] == "data: [DONE]" for r in results)
    assert all(r[1] >= 2 for r in results)  # role chunk + content + finish at least
    server.wait_until_idle()


def _aborted(server: Server) -> float:
    return sample(server.scrape(), "lpu_requests_finished_total", finish_reason="abort") or 0.0


def _assert_running(server: Server) -> None:
    health = httpx.get(f"{server.base_url}/health", timeout=5).json()
    assert health["running"] + health["waiting"] >= 1, health


def test_client_disconnect_mid_stream_aborts_the_request(server: Server) -> None:
    server.wait_until_idle()
    aborted_before = _aborted(server)
    # Long enough (ignore_eos, 1500 tokens) that only an abort can end it within the wait below.
    body = chat_body(server, max_tokens=1500, ignore_eos=True, stream=True)
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=30) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen == 4:
                _assert_running(server)
                break  # closing the line iterator closes the connection mid-stream
    took = server.wait_until_idle(timeout_s=5.0)
    assert took < 5.0
    assert _aborted(server) == aborted_before + 1


def test_client_disconnect_during_a_non_streamed_request_aborts_it(server: Server) -> None:
    server.wait_until_idle()
    aborted_before = _aborted(server)
    body = chat_body(server, max_tokens=1500, ignore_eos=True)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
    assert time.monotonic() - started < 5
    server.wait_until_idle(timeout_s=5.0)
    assert _aborted(server) == aborted_before + 1
