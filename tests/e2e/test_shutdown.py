"""SIGTERM under load: new requests get a 503 with Retry-After (not connection refused) while running ones
finish up to the drain deadline; the rest end cleanly (streams: an error event and [DONE]; non-streaming: an
OpenAI-shaped 503), and the server exits 0 within the deadline + 2 s."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from lpu_runtime import DEMO_MODEL
from tests.e2e.support import Streamed, running_server, stream_chat

DRAIN_S = 2.0


def chat(model: str, max_tokens: int) -> dict[str, object]:
    messages = [{"role": "user", "content": "Go on."}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True}


def test_sigterm_drains_then_aborts_and_exits_zero(tmp_path_factory: pytest.TempPathFactory) -> None:
    extra = ["--model", DEMO_MODEL.name, "--drain-timeout", str(DRAIN_S)]
    with running_server(tmp_path_factory.mktemp("shutdown"), DEMO_MODEL.name, extra) as server:

        async def run() -> tuple[list[Streamed], list[httpx.Response], Streamed, httpx.Response, float]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                started = asyncio.Event()
                long_streams = [
                    asyncio.create_task(stream_chat(client, chat(server.model, 1800), started))
                    for _ in range(2)
                ]
                long_plain = [
                    asyncio.create_task(client.post("/v1/chat/completions", json=chat(server.model, 1800)))
                    for _ in range(2)
                ]
                await started.wait()
                short = asyncio.create_task(stream_chat(client, chat(server.model, 8)))  # finishes in time
                await asyncio.sleep(0.2)
                server.process.terminate()
                sigterm_at = time.monotonic()
                await asyncio.sleep(0.3)
                refused = await client.post("/v1/chat/completions", json=chat(server.model, 4))
                health = await client.get("/health")
                assert health.status_code == 503 and health.json()["status"] == "draining"
                streams = list(await asyncio.gather(*long_streams))
                plain = list(await asyncio.gather(*long_plain))
                return streams, plain, await short, refused, sigterm_at

        streams, plain, short, refused, sigterm_at = asyncio.run(run())
        status = server.process.wait(timeout=30)
        took = time.monotonic() - sigterm_at
    assert status == 0, server.log_tail()
    assert took <= DRAIN_S + 2.0, f"exited {took:.1f} s after SIGTERM"
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "server_shutting_down"
    assert short.done and short.finish_reason == "length"
    for s in streams:
        assert s.status == 200 and s.done and s.error is not None and s.error["code"] == "request_aborted"
    for response in plain:
        assert response.status_code == 503 and response.json()["error"]["code"] == "request_aborted"
