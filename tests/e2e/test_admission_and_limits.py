"""Admission control, per-key limits and slow or large clients, against a server with small bounds.

At most 2 requests may wait to start streaming (and 2 run at once); each key may run 1 at once and use 120 tokens a minute;
headers and bodies must arrive within 1 s, bodies are at most 1 MiB.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from lpu_runtime import DEMO_MODEL
from tests.e2e.support import Server, Streamed, running_server, sample, stream_chat

KEYS = {f"team{i}": f"key-{i}" for i in range(1, 7)}


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = [
        "--model", DEMO_MODEL.name, "--max-num-seqs", "2", "--max-waiting-requests", "2",
        "--api-keys", ",".join(f"{name}={key}" for name, key in KEYS.items()),
        "--key-max-concurrency", "1", "--key-tokens-per-minute", "120",
        "--header-timeout", "1", "--body-timeout", "1", "--max-body-mb", "1", "--max-connections", "16",
    ]  # fmt: skip
    with running_server(tmp_path_factory.mktemp("bounded"), DEMO_MODEL.name, extra) as running:
        yield running


def chat(server: Server, max_tokens: int = 24) -> dict[str, object]:
    messages = [{"role": "user", "content": "Count."}]
    return {"model": server.model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True}


async def burst(server: Server, keys: list[str], max_tokens: int = 24) -> list[Streamed]:
    async def one(key: str) -> Streamed:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60, headers=headers) as client:
            return await stream_chat(client, chat(server, max_tokens))

    return list(await asyncio.gather(*(one(k) for k in keys)))


def assert_rate_limited(s: Streamed) -> None:
    assert s.status == 429 and s.body is not None
    assert s.body["error"]["code"] == "rate_limit_exceeded"
    assert int(s.headers["retry-after"]) >= 1 and int(s.headers["retry-after-ms"]) >= 1


def test_a_full_queue_answers_429_with_retry_after_and_every_admitted_stream_ends(bounded: Server) -> None:
    streams = asyncio.run(burst(bounded, [KEYS[f"team{i}"] for i in range(1, 5) for _ in range(3)]))
    admitted = [s for s in streams if s.status == 200]
    rejected = [s for s in streams if s.status != 200]
    # a burst fills the queue before anything streams: the 2 waiting places are all there is at first
    assert len(admitted) >= 2 and rejected, [s.status for s in streams]
    for s in rejected:
        assert_rate_limited(s)
    for s in admitted:
        assert s.done and (s.finish_reason == "length" or s.error is not None)
    samples = bounded.scrape()
    assert (sample(samples, "lpu_requests_rejected_total", reason="queue_requests") or 0) >= 1
    assert sample(samples, "lpu_admission_waiting_requests") == 0


def test_one_key_may_run_only_so_many_requests_at_once(bounded: Server) -> None:
    streams = asyncio.run(burst(bounded, [KEYS["team5"]] * 4))
    rejected = [s for s in streams if s.status == 429 and "API key" in str(s.body)]
    assert rejected, [(s.status, s.body) for s in streams]
    assert_rate_limited(rejected[0])
    assert rejected[0].headers["x-ratelimit-limit-requests"] == "1"
    assert rejected[0].headers["x-ratelimit-remaining-requests"] == "0"
    assert (sample(bounded.scrape(), "lpu_requests_rejected_total", reason="key_concurrency") or 0) >= 1


def test_tokens_per_minute_are_reported_and_enforced(bounded: Server) -> None:
    client = openai.OpenAI(base_url=f"{bounded.base_url}/v1", api_key=KEYS["team6"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=bounded.model, messages=[{"role": "user", "content": "Count."}], max_tokens=200,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert raw.headers["x-ratelimit-limit-tokens"] == "120"
    assert 0 < int(raw.headers["x-ratelimit-remaining-tokens"]) < 120
    assert raw.headers["x-ratelimit-reset-tokens"].endswith("s")
    with pytest.raises(openai.RateLimitError) as refused:  # the 200 generated tokens overdrew the bucket
        client.chat.completions.create(model=bounded.model, messages=[{"role": "user", "content": "x"}])
    assert int(refused.value.response.headers["retry-after"]) > 1
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] == "0"


def test_a_key_cannot_be_counted_as_another_user(bounded: Server) -> None:
    client = openai.OpenAI(base_url=f"{bounded.base_url}/v1", api_key=KEYS["team1"], max_retries=3)
    client.chat.completions.create(
        model=bounded.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, user="alice"
    )
    samples = bounded.scrape()
    assert (sample(samples, "lpu_user_generation_tokens_total", user="team1") or 0) >= 3
    assert sample(samples, "lpu_user_generation_tokens_total", user="alice") is None


def connect(server: Server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """Everything the server sent until it closed the connection, or None if it stayed open."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    return received


def test_clients_that_never_finish_their_headers_are_cut_off(bounded: Server) -> None:
    sockets = [connect(bounded) for _ in range(50)]
    for i, sock in enumerate(sockets):
        if i % 2:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")  # half a request
    start = time.monotonic()
    assert all(closed_within(sock, 5) == b"" for sock in sockets)
    assert time.monotonic() - start < 4
    assert httpx.get(f"{bounded.base_url}/health", timeout=5).status_code == 200


def test_a_request_past_the_connection_limit_gets_an_openai_shaped_503(bounded: Server) -> None:
    idle = [connect(bounded) for _ in range(16)]  # each counts from its connect, until the header timeout
    try:
        response = httpx.get(f"{bounded.base_url}/v1/models", timeout=5)
    finally:
        for sock in idle:
            sock.close()
    assert response.status_code == 503 and response.json()["error"]["code"] == "server_overloaded"
    assert int(response.headers["retry-after"]) >= 1


def test_a_body_that_does_not_arrive_in_time_gets_408(bounded: Server) -> None:
    sock = connect(bounded)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Authorization: Bearer key-1\r\nContent-Length: 1000\r\n\r\n{"model": '
    )
    answer = closed_within(sock, 5)
    assert answer is not None and answer.startswith(b"HTTP/1.1 408")


def test_a_body_over_the_limit_gets_413_without_being_read(bounded: Server) -> None:
    headers = {"Authorization": f"Bearer {KEYS['team1']}"}
    response = httpx.post(
        f"{bounded.base_url}/v1/completions", content=b"x" * (2 * 1024 * 1024), headers=headers, timeout=30
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
