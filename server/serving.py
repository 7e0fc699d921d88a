"""The chat, completion and Responses flows: prompt -> tokens -> engine -> one JSON response or an SSE stream.

A request is validated, tokenized, checked against the context, admitted (server/admission.py) and started
before the HTTP status is chosen: the engine reports bad requests before its first output, and after a 200 has
been sent an error can only be an event in the stream. However a response ends (finished, failed, the client
gone before or during it) its run ends (server/run.py): unfinished choices are aborted in the engine, which
frees their KV cache, and the admission is given back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from lpu_runtime import (
    ContextLengthExceededError,
    FinishReason,
    GenerationRequest,
    InvalidRequestError,
    RequestOutput,
    SamplingParams,
)
from server.admission import AdmissionQueue, RateLimited
from server.auth import api_key_name
from server.choices import ChatChoiceOutput, ChoiceOutput, CompletionChoiceOutput, StreamedChoice
from server.chunks import ChatChunks, CompletionChunks, ResponseMeta
from server.constraints import ChatPlan, plan_chat
from server.engine import EngineClient
from server.errors import SERVER_ERROR, ApiError, context_length_exceeded, model_not_found
from server.limits import KeyLimits
from server.logprobs import LogprobFormatter
from server.metrics import ServerMetrics, sanitize_user
from server.protocol import (
    UINT64,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorDetail,
)
from server.response_stream import ResponseStream
from server.responses import ResponsesRequest, chat_request, output_items, response_object, responses_error
from server.run import Admitted, Run, aclose, chain, gather_all
from server.tools.stream import ToolStreamer
from server.usage import lpu_info_of, usage_of

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


class StreamFormat(Protocol):
    """A stream's framing around its choices' chunks."""

    def closing(self, finals: Sequence[RequestOutput]) -> list[str]:
        """What follows once every choice has finished."""
        ...

    def failure(self, detail: ErrorDetail) -> list[str]:
        """What ends a stream that failed after its 200."""
        ...


def system_fingerprint(engine: EngineClient) -> str:
    """Changes when what produces the tokens changes: the model, the chips and the pipeline."""
    info = engine.model_info
    key = f"{info.id}:{info.n_params}:{info.chip_name}:{info.n_chips}:{info.n_stages}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]


def failure_of(output: RequestOutput) -> ApiError:
    """The error for a final output that carries no answer (engine error or abort). What went wrong inside
    stays in the log, under the request id the client is given."""
    if output.finish_reason == FinishReason.ABORT:
        return ApiError(
            503,
            "The request was aborted before it finished (the server may be shutting down).",
            type=SERVER_ERROR,
            code="request_aborted",
        )
    logger.error("request %s failed in the engine: %s", output.request_id, output.error)
    return internal_error(output.request_id)


def internal_error(request_id: str) -> ApiError:
    return ApiError(
        500,
        f"The server had an error while generating request {request_id}; retry it, or report the id.",
        type=SERVER_ERROR,
    )


def metrics_user(user: str | None, key_name: str | None, request_user_sublabel: bool) -> str | None:
    """Whom a request counts for: a named key's name (with the request's own `user` as KEY/USER only if so
    configured, so no key can be counted as another), else the request's `user`."""
    if key_name is None:
        return user
    return f"{key_name}/{user}" if request_user_sublabel and user else key_name


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """Choice i samples with seed + i, so each choice is reproducible alone and the choices differ."""
    if params.seed is None:
        return [params] * n
    return [replace(params, seed=(params.seed + i) % UINT64) for i in range(n)]


def _reason(output: RequestOutput) -> str | None:
    return _FINISH_REASONS.get(output.finish_reason) if output.finish_reason else None


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


class _RunResponse(Response):
    """An SSE response that ends its run however the response ends: finished, failed, or cut by the client
    before its event generator ever started (when that generator's own cleanup never runs)."""

    def __init__(self, stream: Response, run: Run) -> None:
        super().__init__(status_code=stream.status_code)  # the stream sends its own start and headers
        self.stream = stream
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream(scope, receive, send)
        finally:
            self.run.end()


@dataclass(frozen=True)
class _Endpoint:
    id_prefix: str
    prompt_param: str  # the field a too-long prompt is blamed on


CHAT = _Endpoint("chatcmpl", "messages")
COMPLETION = _Endpoint("cmpl", "prompt")
RESPONSE = _Endpoint("resp", "input")


class OpenAIServing:
    def __init__(
        self,
        engine: EngineClient,
        metrics: ServerMetrics,
        served_model: str,
        model_ids: frozenset[str],
        admission: AdmissionQueue,
        limits: KeyLimits,
        request_user_sublabel: bool = False,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.served_model = served_model  # what responses name
        self.model_ids = model_ids  # what requests may name: the served id and its aliases
        self.admission = admission
        self.limits = limits
        self.request_user_sublabel = request_user_sublabel
        self.fingerprint = system_fingerprint(engine)
        self.logprob_formatter = LogprobFormatter(engine.token_bytes)

    # ---- the endpoints -----------------------------------------------------------------------------------

    async def chat(self, body: ChatCompletionRequest, raw: Request) -> Response:
        plan, params, prompt_ids = await self._chat_prompt(body)
        run = await self._launch(CHAT, body.user, params, body.n_choices, prompt_ids, raw)
        chunks = ChatChunks(run.meta, body.include_usage)
        formatter = self.logprob_formatter if body.logprobs else None
        choices = [
            ChatChoiceOutput(i, chunks, self._tool_streamer(plan, body), formatter)
            for i in range(body.n_choices)
        ]
        return await self._answer(run, choices, chunks, bool(body.stream), raw, ChatCompletion)

    async def completion(self, body: CompletionRequest, raw: Request) -> Response:
        self._check_model(body.model)
        params = body.sampling_params()
        self._check_logit_bias(params)
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
        echo = ""
        if body.echo:
            echo = prompt if isinstance(prompt, str) else self._text_of(prompt)
        run = await self._launch(COMPLETION, body.user, params, body.n_choices, prompt_ids, raw)
        chunks = CompletionChunks(run.meta, body.include_usage)
        formatter = self.logprob_formatter if body.logprobs is not None else None
        choices = [CompletionChoiceOutput(i, chunks, formatter, echo) for i in range(body.n_choices)]
        return await self._answer(run, choices, chunks, bool(body.stream), raw, Completion)

    async def responses(self, body: ResponsesRequest, raw: Request) -> Response:
        self._check_model(body.model)
        try:
            chat = chat_request(body)
            plan, params, prompt_ids = await self._chat_prompt(chat)
            run = await self._launch(RESPONSE, chat.user, params, 1, prompt_ids, raw)
        except InvalidRequestError as exc:
            raise responses_error(exc) from None
        tools = self._tool_streamer(plan, chat)
        if body.stream:
            stream = ResponseStream(body, run.meta, tools)
            return self._stream(run, [stream], stream)
        choice = ChatChoiceOutput(0, ChatChunks(run.meta, False), tools, None)
        finals, reasons = await self._collect(run, [choice], raw)
        items = output_items(choice.choice(reasons[0]).message)
        response = response_object(body, run.meta.id, run.meta.model, items, usage_of(finals), reasons[0])
        return JSONResponse(response, headers=run.headers)

    # ---- from request to tokens --------------------------------------------------------------------------

    async def _chat_prompt(self, body: ChatCompletionRequest) -> tuple[ChatPlan, SamplingParams, list[int]]:
        self._check_model(body.model)
        plan = plan_chat(body, self.engine.chat_template_text)
        params = body.sampling_params(plan.grammar)
        self._check_logit_bias(params)
        chars = sum(len(str(m["content"])) for m in plan.messages)
        tools = plan.template_tools
        return (
            plan,
            params,
            await _tokenize(chars, lambda m: self.engine.encode_chat(m, tools=tools), plan.messages),
        )

    @staticmethod
    def _tool_streamer(plan: ChatPlan, body: ChatCompletionRequest) -> ToolStreamer | None:
        """A fresh parser of tool calls for one choice, when the output is to be parsed for them."""
        fmt = plan.tool_format
        return ToolStreamer(fmt.parser(body.tool_names), plan.max_calls) if fmt else None

    def _text_of(self, ids: list[int]) -> str:
        return b"".join(self.engine.token_bytes(t) for t in ids).decode("utf-8", errors="replace")

    def _check_model(self, model: str) -> None:
        if model not in self.model_ids:
            raise model_not_found(model, self.served_model)

    def _check_logit_bias(self, params: SamplingParams) -> None:
        vocab = self.engine.model_info.vocab_size
        bad = next((t for t, _ in params.logit_bias if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError("logit_bias", f"token id {bad} is outside the vocabulary [0, {vocab})")

    # ---- admission and start -----------------------------------------------------------------------------

    async def _launch(
        self,
        endpoint: _Endpoint,
        user: str | None,
        params: SamplingParams,
        n: int,
        prompt_ids: list[int],
        raw: Request,
    ) -> Run:
        """Admits the request, submits one engine request per choice and waits for each one's first output,
        so validation errors are still HTTP errors."""
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
        key_name = api_key_name(raw)
        user = metrics_user(user, key_name, self.request_user_sublabel)
        requests = [
            GenerationRequest(
                meta.id if n == 1 else f"{meta.id}-{i}", tuple(prompt_ids), p, user=sanitize_user(user)
            )
            for i, p in enumerate(choice_params(params, n))
        ]
        admitted = self._admit(key_name, len(prompt_ids), n)
        run = Run(meta, requests, [self.metrics.track(user) for _ in requests], admitted, self.engine.abort)
        iterators = [self.engine.generate(r) for r in requests]
        try:
            firsts = await _unless_disconnected(raw, gather_all([anext(it) for it in iterators]))
        except BaseException as exc:
            # refused after submission (counted received, as an error), or the client left, or the engine
            run.end(FinishReason.ERROR if isinstance(exc, InvalidRequestError) else FinishReason.ABORT)
            for iterator in iterators:
                await aclose(iterator)
            if isinstance(exc, ContextLengthExceededError):
                raise context_length_exceeded(exc, endpoint.prompt_param) from None
            raise
        admitted.ticket.started()
        run.outputs = [chain(f, it) for f, it in zip(firsts, iterators, strict=True)]
        return run

    def _admit(self, key_name: str | None, prompt_tokens: int, n: int) -> Admitted:
        """The request's place in the admission queue and its key's lease, or RateLimited (429).

        One place per request, whatever its `n`: the queue bounds requests, and a request of more choices than
        the bound must not be refused for ever; the waiting prompt tokens are every choice's prefill. The key is
        charged the prompt once, as usage reports it, and then every choice's tokens."""
        try:
            # The key's own limits first: a key over them must not take a place in the shared queue.
            lease = self.limits.acquire(key_name, prompt_tokens)
            try:
                ticket = self.admission.admit(prompt_tokens * n)
            except RateLimited as exc:
                exc.headers.update(lease.headers)  # every answer to a key reports its limits
                lease.release(0)
                raise
        except RateLimited as exc:
            self.metrics.requests_rejected.labels(exc.reason).inc()
            raise
        return Admitted(ticket, lease)

    # ---- answering -------------------------------------------------------------------------------------

    async def _answer(
        self,
        run: Run,
        choices: Sequence[ChoiceOutput[Any]],
        fmt: StreamFormat,
        stream: bool,
        raw: Request,
        body: type[ChatCompletion | Completion],
    ) -> Response:
        """A chat or completion response: its choices streamed, or collected into one JSON `body`."""
        if stream:
            return self._stream(run, choices, fmt)
        finals, reasons = await self._collect(run, choices, raw)
        meta = run.meta
        response = body(
            id=meta.id,
            created=meta.created,
            model=meta.model,
            system_fingerprint=meta.system_fingerprint,
            choices=[c.choice(reason) for c, reason in zip(choices, reasons, strict=True)],
            usage=usage_of(finals),
            x_lpu=lpu_info_of(finals),
        )
        return JSONResponse(response.model_dump(), headers=run.headers)

    async def _collect(
        self, run: Run, choices: Sequence[ChoiceOutput[Any]], raw: Request
    ) -> tuple[list[RequestOutput], list[str]]:
        """Every choice's final output and finish reason; a choice that failed fails the response."""

        async def collect() -> dict[int, RequestOutput]:
            finals: dict[int, RequestOutput] = {}
            outputs = run.merged()
            try:
                async for index, output in outputs:
                    choices[index].add(output)
                    if output.finished:
                        finals[index] = output
                        if _reason(output) is None:
                            break  # its siblings' answers are of no use now
            finally:
                await aclose(outputs)
            return finals

        try:
            finals = await _unless_disconnected(raw, collect())
        except Exception as exc:
            run.end(FinishReason.ABORT if isinstance(exc, ClientDisconnected) else FinishReason.ERROR)
            raise
        finally:
            run.end()  # the siblings of a failed choice, or a cancelled handler: aborted
        for final in finals.values():
            if _reason(final) is None:
                raise failure_of(final)
        if len(finals) != len(choices):
            raise RuntimeError("the engine's output stream ended without a final output")
        ordered = [finals[i] for i in range(len(choices))]
        return ordered, [_reason(f) or "" for f in ordered]

    def _stream(self, run: Run, choices: Sequence[StreamedChoice], fmt: StreamFormat) -> Response:
        shutting_down = anyio.Event()

        async def abort_on_shutdown() -> None:
            # On server shutdown sse-starlette sets the event, then cancels the stream after the grace period.
            # Aborting first lets the stream end as it should: the engine's abort output becomes an error
            # event, instead of a connection cut mid-body.
            await shutting_down.wait()
            for request in run.requests:
                self.engine.abort(request.request_id)

        stream = EventSourceResponse(
            self._events(run, choices, fmt),
            sep="\n",  # "\n\n" between events, byte for byte like the OpenAI API
            data_sender_callable=abort_on_shutdown,
            shutdown_event=shutting_down,
            shutdown_grace_period=SHUTDOWN_GRACE_S,
            headers=run.headers,
        )
        return _RunResponse(stream, run)

    async def _events(
        self, run: Run, choices: Sequence[StreamedChoice], fmt: StreamFormat
    ) -> AsyncIterator[str]:
        finals: dict[int, RequestOutput] = {}
        outputs = run.merged()
        try:
            for choice in choices:
                for chunk in choice.opening():
                    yield chunk
            async for index, output in outputs:
                for chunk in choices[index].stream(output):
                    yield chunk
                if not output.finished:
                    continue
                finals[index] = output
                reason = _reason(output)
                if reason is None:
                    for chunk in fmt.failure(failure_of(output).detail):
                        yield chunk
                    return  # its siblings are aborted when the response ends its run
                for chunk in choices[index].finish(reason):
                    yield chunk
            if len(finals) != len(choices):
                raise RuntimeError("the engine's output stream ended without a final output")
            for chunk in fmt.closing([finals[i] for i in range(len(choices))]):
                yield chunk
        except Exception:
            logger.exception("stream %s failed", run.meta.id)
            run.end(FinishReason.ERROR)
            for chunk in fmt.failure(internal_error(run.meta.id).detail):
                yield chunk
        finally:
            # Choices still running after this (a sibling failed, the client disconnected, a send failed) are
            # aborted when the response ends its run.
            await aclose(outputs)
