"""Faults stay with the request that caused them; a dead engine is restarted in place, its in-flight requests
failed cleanly, until the restart budget is spent, and then the server exits with status 1 for its supervisor.

The server runs with `LPU_INJECT_FAULT=forward:258`: its forward pass really raises, in the engine process,
whenever a step computes token 258 (the demo vocabulary's <pad>, which no text encodes to). The engine dies
for real too: the tests kill its process with SIGKILL. The tests run in file order, on one server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from lpu_runtime import DEMO_MODEL
from lpu_runtime.faults import ENV
from tests.e2e.support import Server, Streamed, engine_pid, running_server, sample, stream_chat

FAULT_TOKEN = 258
RESTART_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = ["--model", DEMO_MODEL.name, "--engine-max-restarts", "1"]
    env = {ENV: f"forward:{FAULT_TOKEN}"}
    with running_server(tmp_path_factory.mktemp("faults"), DEMO_MODEL.name, extra, env) as running:
        yield running


def chat(server: Server, max_tokens: int) -> dict[str, object]:
    messages = [{"role": "user", "content": "Tell me a story."}]
    return {"model": server.model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True}


def test_a_request_whose_forward_pass_raises_fails_alone(faulty: Server) -> None:
    errors_before = sample(faulty.scrape(), "lpu_requests_finished_total", finish_reason="error") or 0.0

    async def run() -> tuple[list[Streamed], httpx.Response]:
        async with httpx.AsyncClient(base_url=faulty.base_url, timeout=60) as client:
            decoding = asyncio.Event()
            good = [asyncio.create_task(stream_chat(client, chat(faulty, 48), decoding)) for _ in range(3)]
            await decoding.wait()  # the poisoned prompt lands in a step with the others' decodes
            bad = await client.post(
                "/v1/completions",
                json={"model": faulty.model, "prompt": [65, FAULT_TOKEN, 66], "max_tokens": 4},
            )
            return list(await asyncio.gather(*good)), bad

    streams, bad = asyncio.run(run())
    assert bad.status_code == 500, bad.text
    error = bad.json()["error"]
    assert error["type"] == "server_error"
    assert "injected" not in error["message"].lower() and "Fault" not in error["message"]  # never echoed
    for s in streams:
        assert s.status == 200 and s.done and s.finish_reason == "length" and s.error is None
    after = sample(faulty.scrape(), "lpu_requests_finished_total", finish_reason="error")
    assert after == errors_before + 1
    assert "injected forward fault" in faulty.log_tail(200_000)  # the log keeps what the client is not told


def wait_for_health(server: Server, status: int, timeout_s: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if httpx.get(f"{server.base_url}/health", timeout=5).status_code == status:
            return
        time.sleep(0.05)
    pytest.fail(f"/health never answered {status} within {timeout_s} s; log:\n{server.log_tail()}")


def test_a_killed_engine_is_restarted_and_its_requests_fail_cleanly(
    faulty: Server,
) -> None:
    errors_before = sample(faulty.scrape(), "lpu_requests_finished_total", finish_reason="error") or 0.0

    async def run() -> list[Streamed]:
        async with httpx.AsyncClient(base_url=faulty.base_url, timeout=60) as http:
            started = asyncio.Event()
            streams = [asyncio.create_task(stream_chat(http, chat(faulty, 1500), started)) for _ in range(2)]
            await started.wait()
            os.kill(engine_pid(faulty), signal.SIGKILL)
            return list(await asyncio.gather(*streams))

    for s in asyncio.run(run()):
        # headers were sent: the failure is an error event, then [DONE]; what killed it is not echoed
        assert s.status == 200 and s.done and s.error is not None, s
        assert "status" not in s.error["message"] and s.error["type"] == "server_error"
    assert httpx.get(f"{faulty.base_url}/health", timeout=5).status_code == 503  # not ready while restarting
    wait_for_health(faulty, 200, RESTART_TIMEOUT_S)
    samples = faulty.scrape()
    assert sample(samples, "lpu_engine_restarts_total") == 1
    assert sample(samples, "lpu_requests_finished_total", finish_reason="error") == errors_before + 2
    client = openai.OpenAI(base_url=f"{faulty.base_url}/v1", api_key="x", max_retries=0)
    answer = client.chat.completions.create(
        model=faulty.model, messages=[{"role": "user", "content": "Again?"}], max_tokens=4
    )
    assert answer.choices[0].finish_reason in ("length", "stop")


def test_past_the_restart_budget_the_server_exits_non_zero(faulty: Server) -> None:
    os.kill(engine_pid(faulty), signal.SIGKILL)
    assert faulty.process.wait(timeout=30) == 1
