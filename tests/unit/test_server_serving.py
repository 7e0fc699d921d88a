"""The serving flows against a scripted engine: whatever way a response ends (answered, failed, refused by the
engine, the client gone before or during it, n > 1 with a failing choice), its place in the admission queue and
its key's lease are given back once, and every choice still running is aborted in the engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import Response
from starlette.types import Message

from lpu_runtime import (
    EngineStats,
    FinishReason,
    GenerationRequest,
    InvalidRequestError,
    ModelInfo,
    RequestOutput,
)
from server.admission import AdmissionQueue
from server.errors import ApiError
from server.limits import KeyLimits
from server.metrics import ServerMetrics
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.responses import ResponsesRequest
from server.serving import ClientDisconnected, OpenAIServing

TOKENS = 3  # what an answering choice generates


class ScriptedEngine:
    """Each request behaves as `mode(request)` says: "answer" (TOKENS tokens, then stop), "fail" (an engine
    error after one token), "refuse" (InvalidRequestError before any output) or "hang" (one token, then
    nothing until aborted)."""

    def __init__(self, mode: Callable[[GenerationRequest], str]) -> None:
        self.mode = mode
        self.aborted: list[str] = []
        self._hanging: dict[str, asyncio.Event] = {}
        self.model_info = ModelInfo("fake", "", 64, 256, 1, 1, 1, "chip", 0)
        self.chat_template_text: str | None = None
        self.restarts = 0

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def encode_chat(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        return [1, 2, 3]

    def encode_text(self, prompt: str) -> list[int]:
        return list(prompt.encode())

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([token_id])

    def check_fits(self, n_prompt: int, max_tokens: int | None) -> None: ...

    def stats(self) -> EngineStats:
        return EngineStats(0, 0, 0, 0, 0, 0)

    def is_healthy(self) -> bool:
        return True

    def abort_all(self) -> None: ...

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        if request_id in self._hanging:
            self._hanging[request_id].set()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        mode = self.mode(request)
        if mode == "refuse":
            raise InvalidRequestError("max_tokens", "refused by the engine")
        rid, prompt = request.request_id, len(request.prompt_token_ids)
        yield RequestOutput(rid, (97,), "a", prompt, 1)
        if mode == "hang":
            aborted = self._hanging[rid] = asyncio.Event()
            await aborted.wait()
            yield RequestOutput(rid, (), "", prompt, 1, True, FinishReason.ABORT)
        elif mode == "fail":
            yield RequestOutput(rid, (), "", prompt, 1, True, FinishReason.ERROR, error="boom")
        else:
            for n in range(2, TOKENS + 1):
                yield RequestOutput(
                    rid, (97,), "a", prompt, n, n == TOKENS, FinishReason.STOP if n == TOKENS else None
                )


class Setup:
    def __init__(self, mode: Callable[[GenerationRequest], str]) -> None:
        self.engine = ScriptedEngine(mode)
        self.admission = AdmissionQueue(max_waiting=4, max_waiting_tokens=1000)
        self.limits = KeyLimits(max_concurrency=1, tokens_per_minute=6000)
        self.metrics = ServerMetrics(4, lambda: None)
        self.serving = OpenAIServing(
            self.engine, self.metrics, "fake", frozenset({"fake"}), self.admission, self.limits
        )

    def assert_released(self) -> None:
        assert (self.admission.waiting, self.admission.waiting_tokens) == (0, 0)
        self.limits.acquire(None, 0).release(0)  # concurrency 1: free again only if the lease was given back

    def finished(self, reason: str) -> float:
        return float(self.metrics.requests_finished.labels(reason)._value.get())


def raw_request(disconnect_after_s: float | None = None) -> Request:
    async def receive() -> Message:
        if disconnect_after_s is None:
            await asyncio.Event().wait()
        await asyncio.sleep(disconnect_after_s or 0)
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": [], "state": {}}, receive)


async def stream_events(response: Response, disconnect_after_s: float | None = None) -> list[str]:
    """Runs the SSE response as the ASGI server would; the `data:` payloads it sent."""
    sent: list[bytes] = []

    async def send(message: Message) -> None:
        sent.append(message.get("body", b""))

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    await response(scope, raw_request(disconnect_after_s).receive, send)
    text = b"".join(sent).decode()
    return [line.removeprefix("data: ") for line in text.split("\n") if line.startswith("data: ")]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "fake", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_an_answer_gives_everything_back_and_charges_every_choice() -> None:
    setup = Setup(lambda r: "answer")
    response = asyncio.run(setup.serving.chat(chat(n=2), raw_request()))
    body = json.loads(bytes(response.body))
    assert [c["message"]["content"] for c in body["choices"]] == ["aaa", "aaa"]
    assert body["usage"]["completion_tokens"] == 2 * TOKENS
    setup.assert_released()
    assert setup.engine.aborted == [] and setup.finished("stop") == 2
    # the key paid the prompt once and every choice's tokens
    headers = setup.limits.acquire(None, 0).headers
    assert int(headers["x-ratelimit-remaining-tokens"]) == 6000 - 3 - 2 * TOKENS


def test_a_failed_choice_fails_the_response_and_aborts_its_sibling() -> None:
    setup = Setup(lambda r: "fail" if r.request_id.endswith("-1") else "hang")
    with pytest.raises(ApiError) as failed:
        asyncio.run(setup.serving.chat(chat(n=2), raw_request()))
    assert failed.value.status_code == 500
    setup.assert_released()
    assert [r.endswith("-0") for r in setup.engine.aborted] == [True]
    assert setup.finished("error") == 1 and setup.finished("abort") == 1


def test_a_request_the_engine_refuses_is_a_400_and_gives_everything_back() -> None:
    setup = Setup(lambda r: "refuse")
    with pytest.raises(InvalidRequestError):
        asyncio.run(
            setup.serving.completion(CompletionRequest(model="fake", prompt="hi", n=3), raw_request())
        )
    setup.assert_released()
    assert setup.finished("error") == 3


def test_a_client_gone_while_waiting_for_the_answer_aborts_it() -> None:
    setup = Setup(lambda r: "hang")
    with pytest.raises(ClientDisconnected):
        asyncio.run(setup.serving.chat(chat(), raw_request(disconnect_after_s=0.05)))
    setup.assert_released()
    assert len(setup.engine.aborted) == 1 and setup.finished("abort") == 1


def test_a_stream_ends_its_run_with_the_last_event() -> None:
    setup = Setup(lambda r: "answer")

    async def run() -> list[str]:
        response = await setup.serving.chat(chat(n=2, stream=True), raw_request())
        assert setup.admission.waiting == 0  # started: no longer waiting, still leased
        return await stream_events(response)

    events = asyncio.run(run())
    assert events[-1] == "[DONE]" and len(events) == 2 + 2 * TOKENS + 2 + 1
    setup.assert_released()


def test_a_failed_choice_ends_a_stream_with_an_error_event_and_aborts_its_sibling() -> None:
    setup = Setup(lambda r: "fail" if r.request_id.endswith("-1") else "hang")

    async def run() -> list[str]:
        return await stream_events(await setup.serving.chat(chat(n=2, stream=True), raw_request()))

    events = asyncio.run(run())
    assert json.loads(events[-2])["error"]["type"] == "server_error" and events[-1] == "[DONE]"
    setup.assert_released()
    assert len(setup.engine.aborted) == 1


def test_a_client_gone_mid_stream_or_before_it_starts_gives_everything_back() -> None:
    for disconnect_after_s in (0.05, 0.0):
        setup = Setup(lambda r: "hang")

        async def run(after: float = disconnect_after_s, s: Setup = setup) -> None:
            response = await s.serving.completion(
                CompletionRequest(model="fake", prompt="hi", stream=True), raw_request()
            )
            await stream_events(response, disconnect_after_s=after)

        asyncio.run(run())
        setup.assert_released()
        assert len(setup.engine.aborted) == 1 and setup.finished("abort") == 1


def test_a_stream_whose_first_send_fails_gives_everything_back() -> None:
    setup = Setup(lambda r: "hang")

    async def reset(message: Message) -> None:
        raise OSError("connection reset by peer")

    async def run() -> None:
        response = await setup.serving.chat(chat(stream=True), raw_request())
        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        await response(scope, raw_request().receive, reset)  # its events are never even started

    with pytest.raises(OSError):
        asyncio.run(run())
    setup.assert_released()
    assert len(setup.engine.aborted) == 1 and setup.finished("abort") == 1


def test_a_full_queue_refuses_with_429_and_keeps_nothing() -> None:
    setup = Setup(lambda r: "answer")
    setup.admission.max_waiting = 0  # a request already waits...
    setup.admission.waiting = 1
    with pytest.raises(ApiError) as refused:
        asyncio.run(setup.serving.chat(chat(), raw_request()))
    assert refused.value.status_code == 429 and "x-ratelimit-limit-requests" in refused.value.headers
    setup.admission.waiting = 0
    setup.assert_released()


def test_more_choices_than_the_queue_holds_are_one_request_not_a_429_for_ever() -> None:
    setup = Setup(lambda r: "answer")
    response = asyncio.run(setup.serving.chat(chat(n=8), raw_request()))  # the queue holds 4
    assert len(json.loads(bytes(response.body))["choices"]) == 8
    setup.assert_released()


def test_a_responses_stream_ends_with_response_completed_and_gives_everything_back() -> None:
    setup = Setup(lambda r: "answer")
    body = ResponsesRequest(model="fake", input="hi", stream=True)

    async def run() -> list[str]:
        return await stream_events(await setup.serving.responses(body, raw_request()))

    kinds = [json.loads(e)["type"] for e in asyncio.run(run())]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    setup.assert_released()
