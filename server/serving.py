"""The chat and completion flows: prompt -> tokens -> engine -> one JSON response or an SSE stream.

A request is validated, tokenized, checked against the context and started before the HTTP status is chosen:
the engine reports bad requests before its first output, and after a 200 has been sent an error can only be
an event in the stream. Whoever stops reading (the client disconnecting, a failed send) closes the output
iterator, which aborts the engine request and frees its KV cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from lpu_runtime import (
    ContextLengthExceededError,
    FinishReason,
    GenerationRequest,
    InvalidRequestError,
    RequestOutput,
    SamplingParams,
)
from server.auth import api_key_name
from server.chunks import DONE, ChatChunks, ChunkFormat, CompletionChunks, ResponseMeta
from server.engine import EngineClient
from server.errors import SERVER_ERROR, ApiError, context_length_exceeded, model_not_found
from server.metrics import RequestTracker, ServerMetrics, sanitize_user
from server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorBody,
    ErrorDetail,
    LpuInfo,
    Usage,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Below this many characters tokenizing (and rendering a template) takes well under a millisecond, less than a
# thread hop; above it, it runs in a worker thread so one long prompt cannot stall every other stream.
INLINE_TOKENIZE_CHARS = 4096

# How long a stream may take to wind down (abort, error event, [DONE]) when the server stops.
SHUTDOWN_GRACE_S = 2.0

_FINISH_REASONS = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}


class ClientDisconnected(ApiError):
    def __init__(self) -> None:
        super().__init__(499, "The client closed the request.")  # nginx's status; nobody is left to read it


def system_fingerprint(engine: EngineClient) -> str:
    """Changes when what produces the tokens changes: the model, the chips and the pipeline."""
    info = engine.model_info
    key = f"{info.id}:{info.n_params}:{info.chip_name}:{info.n_chips}:{info.n_stages}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]


def usage_of(output: RequestOutput) -> Usage:
    host = output.host
    return Usage(
        prompt_tokens=output.prompt_tokens,
        completion_tokens=output.completion_tokens,
        total_tokens=output.prompt_tokens + output.completion_tokens,
        queue_time=host.queue_time,
        prompt_time=host.prompt_time,
        completion_time=host.completion_time,
        total_time=host.total_time,
    )


def lpu_info_of(output: RequestOutput) -> LpuInfo:
    emulated = output.emulated
    return LpuInfo(
        emulated_prompt_time=emulated.prompt_time,
        emulated_completion_time=emulated.completion_time,
        emulated_tokens_per_second=output.emulated_tokens_per_second,
        chips=emulated.n_chips,
        pipeline_stages=emulated.n_stages,
    )


def failure_of(output: RequestOutput) -> ApiError:
    """The error for a final output that carries no answer (engine error or abort)."""
    if output.finish_reason == FinishReason.ERROR:
        logger.error("request %s failed in the engine: %s", output.request_id, output.error)
    if output.finish_reason == FinishReason.ABORT:
        return ApiError(
            503,
            "The request was aborted before it finished (the server may be shutting down).",
            type=SERVER_ERROR,
            code="request_aborted",
        )
    return ApiError(
        500, f"The engine failed while generating: {output.error or 'unknown error'}", type=SERVER_ERROR
    )


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    aclose: Callable[[], Awaitable[None]] | None = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def _chain(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    try:
        yield first
        async for output in rest:
            yield output
    finally:
        await _aclose(rest)


async def _wait_for_disconnect(raw: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect (or the response's end).
    while (await raw.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(raw: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first: the ASGI server does not cancel handlers."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(raw))
    try:
        await asyncio.wait((work_task, watch_task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, watch_task):
            if not task.done():
                task.cancel()
        await asyncio.gather(work_task, watch_task, return_exceptions=True)
    if work_task.cancelled():
        raise ClientDisconnected
    return work_task.result()


async def _tokenize(chars: int, encode: Callable[[T], list[int]], value: T) -> list[int]:
    if chars <= INLINE_TOKENIZE_CHARS:
        return encode(value)
    return await asyncio.to_thread(encode, value)


@dataclass(frozen=True)
class _Endpoint:
    """What differs between chat and completions."""

    id_prefix: str
    prompt_param: str  # the field a too-long prompt is blamed on
    chunks: Callable[[ResponseMeta, bool], ChunkFormat]
    respond: Callable[[ResponseMeta, str, str, Usage, LpuInfo], BaseModel]


def _chat_response(meta: ResponseMeta, text: str, reason: str, usage: Usage, x_lpu: LpuInfo) -> BaseModel:
    return ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        system_fingerprint=meta.system_fingerprint,
        choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=reason)],
        usage=usage,
        x_lpu=x_lpu,
    )


def _completion_response(
    meta: ResponseMeta, text: str, reason: str, usage: Usage, x_lpu: LpuInfo
) -> BaseModel:
    return Completion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        system_fingerprint=meta.system_fingerprint,
        choices=[CompletionChoice(text=text, finish_reason=reason)],
        usage=usage,
        x_lpu=x_lpu,
    )


CHAT = _Endpoint("chatcmpl", "messages", ChatChunks, _chat_response)
COMPLETION = _Endpoint("cmpl", "prompt", CompletionChunks, _completion_response)


class OpenAIServing:
    def __init__(
        self, engine: EngineClient, metrics: ServerMetrics, served_model: str, model_ids: frozenset[str]
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.served_model = served_model  # what responses name
        self.model_ids = model_ids  # what requests may name: the served id and its aliases
        self.fingerprint = system_fingerprint(engine)

    async def chat(self, body: ChatCompletionRequest, raw: Request) -> Response:
        self._check_model(body.model)
        params = body.sampling_params()
        messages = body.template_messages()
        chars = sum(len(m["content"]) for m in messages)
        prompt_ids = await _tokenize(chars, self.engine.encode_chat, messages)
        return await self._serve(CHAT, body.user, body.stream, body.include_usage, params, prompt_ids, raw)

    async def completion(self, body: CompletionRequest, raw: Request) -> Response:
        self._check_model(body.model)
        params = body.sampling_params()
        prompt = body.single_prompt()
        if isinstance(prompt, str):
            prompt_ids = await _tokenize(len(prompt), self.engine.encode_text, prompt)
        else:
            vocab = self.engine.model_info.vocab_size
            bad = next((t for t in prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequestError(
                    "prompt", f"token id {bad} is out of range: the vocabulary has {vocab}"
                )
            prompt_ids = prompt
        return await self._serve(
            COMPLETION, body.user, body.stream, body.include_usage, params, prompt_ids, raw
        )

    def _check_model(self, model: str) -> None:
        if model not in self.model_ids:
            raise model_not_found(model, self.served_model)

    async def _serve(
        self,
        endpoint: _Endpoint,
        user: str | None,
        stream: bool | None,
        include_usage: bool,
        params: SamplingParams,
        prompt_ids: list[int],
        raw: Request,
    ) -> Response:
        if not prompt_ids:
            raise InvalidRequestError(endpoint.prompt_param, "the prompt is empty after tokenization")
        try:
            self.engine.check_fits(len(prompt_ids), params.max_tokens)
        except ContextLengthExceededError as exc:
            raise context_length_exceeded(exc, endpoint.prompt_param) from None
        meta = ResponseMeta(
            id=f"{endpoint.id_prefix}-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=self.served_model,
            system_fingerprint=self.fingerprint,
        )
        user = user or api_key_name(raw)  # the request's own `user` first, else the key's name
        request = GenerationRequest(meta.id, tuple(prompt_ids), params, user=sanitize_user(user))
        tracker = self.metrics.track(user)
        outputs = await self._start(request, endpoint.prompt_param, tracker, raw)
        if stream:
            events = self._events(
                endpoint.chunks(meta, include_usage), include_usage, request, outputs, tracker
            )
            return self._event_source(events, request.request_id)
        try:
            text, final = await _unless_disconnected(raw, self._collect(outputs, tracker))
        except (ClientDisconnected, asyncio.CancelledError):
            self._abandon(request, tracker)
            raise
        except Exception:
            self._abandon(request, tracker, FinishReason.ERROR)
            raise
        reason = _FINISH_REASONS.get(final.finish_reason) if final.finish_reason else None
        if reason is None:
            raise failure_of(final)
        return JSONResponse(
            endpoint.respond(meta, text, reason, usage_of(final), lpu_info_of(final)).model_dump()
        )

    def _event_source(self, events: AsyncIterator[str], request_id: str) -> EventSourceResponse:
        shutting_down = anyio.Event()

        async def abort_on_shutdown() -> None:
            # On server shutdown sse-starlette sets the event, then cancels the stream after the grace period.
            # Aborting first lets the stream end as it should: the engine's abort output becomes an error
            # event and [DONE], instead of a connection cut mid-body.
            await shutting_down.wait()
            self.engine.abort(request_id)

        return EventSourceResponse(
            events,
            sep="\n",  # "\n\n" between events, byte for byte like the OpenAI API
            data_sender_callable=abort_on_shutdown,
            shutdown_event=shutting_down,
            shutdown_grace_period=SHUTDOWN_GRACE_S,
        )

    async def _start(
        self, request: GenerationRequest, prompt_param: str, tracker: RequestTracker, raw: Request
    ) -> AsyncIterator[RequestOutput]:
        """Submit and wait for the first output, so validation errors still become HTTP errors."""
        outputs = self.engine.generate(request)
        try:
            first = await _unless_disconnected(raw, anext(outputs))
        except ContextLengthExceededError as exc:
            tracker.on_abandoned(FinishReason.ERROR)  # refused after submission: it was counted received
            await _aclose(outputs)
            raise context_length_exceeded(exc, prompt_param) from None
        except InvalidRequestError:
            tracker.on_abandoned(FinishReason.ERROR)
            await _aclose(outputs)
            raise
        except BaseException:
            self._abandon(request, tracker)
            await _aclose(outputs)
            raise
        return _chain(first, outputs)

    def _abandon(
        self, request: GenerationRequest, tracker: RequestTracker, reason: FinishReason = FinishReason.ABORT
    ) -> None:
        # Synchronous on purpose: it must work in a cancelled task, where any await would be cancelled too.
        self.engine.abort(request.request_id)
        tracker.on_abandoned(reason)

    @staticmethod
    async def _collect(
        outputs: AsyncIterator[RequestOutput], tracker: RequestTracker
    ) -> tuple[str, RequestOutput]:
        parts: list[str] = []
        try:
            async for output in outputs:
                tracker.on_output(output)
                parts.append(output.new_text)
                if output.finished:
                    return "".join(parts), output
        finally:
            await _aclose(outputs)
        raise RuntimeError("the engine's output stream ended without a final output")

    async def _events(
        self,
        chunks: ChunkFormat,
        include_usage: bool,
        request: GenerationRequest,
        outputs: AsyncIterator[RequestOutput],
        tracker: RequestTracker,
    ) -> AsyncIterator[str]:
        finished = False
        try:
            for chunk in chunks.opening():
                yield chunk
            async for output in outputs:
                tracker.on_output(output)
                if output.new_text:
                    yield chunks.content(output.new_text)
                if output.finished:
                    finished = True
                    reason = _FINISH_REASONS.get(output.finish_reason) if output.finish_reason else None
                    if reason is None:
                        yield ErrorBody(error=failure_of(output).detail).model_dump_json()
                    else:
                        yield chunks.finish(reason)
                        if include_usage:
                            yield chunks.usage(usage_of(output), lpu_info_of(output))
                    break
            if not finished:
                raise RuntimeError("the engine's output stream ended without a final output")
        except Exception as exc:
            # Headers (200) are gone: the error can only travel as an event, which the SDKs raise as APIError.
            logger.exception("stream %s failed", request.request_id)
            finished = True
            self._abandon(request, tracker, FinishReason.ERROR)
            detail = ErrorDetail(message=f"The stream failed: {type(exc).__name__}: {exc}", type=SERVER_ERROR)
            yield ErrorBody(error=detail).model_dump_json()
        finally:
            # Reached with finished=False only when the consumer stopped: the client disconnected
            # (cancellation from sse-starlette) or a send failed (aclose at a yield).
            if not finished:
                self._abandon(request, tracker)
            await _aclose(outputs)
        yield DONE
