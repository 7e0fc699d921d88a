"""The `data:` payloads of a streamed response, in the OpenAI API's chunk format.

Every chunk of one response carries the same id, created time, model and fingerprint. With
`stream_options.include_usage` every chunk has `"usage": null` and one extra chunk with no choices carries the
usage at the end, as the OpenAI API specifies; without it the field is absent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lpu_runtime import RequestOutput
from server.protocol import (
    ChatCompletionChunk,
    ChatLogprobs,
    ChunkChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionLogprobs,
    ErrorBody,
    ErrorDetail,
    LpuInfo,
    TokenLogprobOut,
    Usage,
)
from server.tools.stream import CallDelta
from server.usage import lpu_info_of, usage_of

DONE = "[DONE]"


@dataclass(frozen=True)
class ResponseMeta:
    id: str
    created: int  # unix seconds
    model: str
    system_fingerprint: str


class _Chunks(ABC):
    def __init__(self, meta: ResponseMeta, include_usage: bool) -> None:
        self.meta = meta
        self.include_usage = include_usage
        self._exclude: set[str] = {"x_lpu"} if include_usage else {"usage", "x_lpu"}

    def _envelope(self, usage: Usage | None, x_lpu: LpuInfo | None) -> dict[str, Any]:
        """The fields every chunk of one response shares, in the API's order around `choices`."""
        m = self.meta
        return {
            "id": m.id,
            "created": m.created,
            "model": m.model,
            "system_fingerprint": m.system_fingerprint,
            "usage": usage,
            "x_lpu": x_lpu,
        }

    def _excluded(self, x_lpu: LpuInfo | None) -> set[str]:
        # The usage chunk carries x_lpu; the others omit it (and usage, unless include_usage asks for nulls).
        return set() if x_lpu else self._exclude

    @abstractmethod
    def usage(self, usage: Usage, x_lpu: LpuInfo) -> str:
        """The extra chunk, with no choices, that ends an include_usage stream."""

    def closing(self, finals: Sequence[RequestOutput]) -> list[str]:
        """What follows every choice's finish: the usage chunk when asked for, then [DONE]."""
        usage = [self.usage(usage_of(finals), lpu_info_of(finals))] if self.include_usage else []
        return [*usage, DONE]

    def failure(self, detail: ErrorDetail) -> list[str]:
        """After a 200 an error can only be an event, which the SDKs raise as APIError; [DONE] still ends it."""
        return [ErrorBody(error=detail).model_dump_json(), DONE]


class ChatChunks(_Chunks):
    def _chunk(
        self, choices: list[ChunkChoice], usage: Usage | None = None, x_lpu: LpuInfo | None = None
    ) -> str:
        chunk = ChatCompletionChunk(choices=choices, **self._envelope(usage, x_lpu))
        return chunk.model_dump_json(exclude=self._excluded(x_lpu))

    def opening(self, index: int) -> str:
        return self._chunk([ChunkChoice(index=index, delta={"role": "assistant", "content": ""})])

    def content(self, index: int, text: str, logprobs: list[TokenLogprobOut] | None = None) -> str:
        delta = {"content": text} if text else {}
        chat_logprobs = ChatLogprobs(content=logprobs) if logprobs is not None else None
        return self._chunk([ChunkChoice(index=index, delta=delta, logprobs=chat_logprobs)])

    def tool_calls(self, index: int, deltas: list[CallDelta]) -> str:
        calls: list[dict[str, Any]] = []
        for d in deltas:
            call: dict[str, Any] = {"index": d.index}
            if d.id is not None:
                call.update(id=d.id, type="function", function={"name": d.name, "arguments": d.arguments})
            else:
                call["function"] = {"arguments": d.arguments}
            calls.append(call)
        return self._chunk([ChunkChoice(index=index, delta={"tool_calls": calls})])

    def finish(self, index: int, finish_reason: str) -> str:
        return self._chunk([ChunkChoice(index=index, delta={}, finish_reason=finish_reason)])

    def usage(self, usage: Usage, x_lpu: LpuInfo) -> str:
        return self._chunk([], usage, x_lpu)


class CompletionChunks(_Chunks):
    def _chunk(
        self, choices: list[CompletionChunkChoice], usage: Usage | None = None, x_lpu: LpuInfo | None = None
    ) -> str:
        chunk = CompletionChunk(choices=choices, **self._envelope(usage, x_lpu))
        return chunk.model_dump_json(exclude=self._excluded(x_lpu))

    def content(self, index: int, text: str, logprobs: CompletionLogprobs | None = None) -> str:
        return self._chunk([CompletionChunkChoice(index=index, text=text, logprobs=logprobs)])

    def finish(self, index: int, finish_reason: str) -> str:
        return self._chunk([CompletionChunkChoice(index=index, text="", finish_reason=finish_reason)])

    def usage(self, usage: Usage, x_lpu: LpuInfo) -> str:
        return self._chunk([], usage, x_lpu)
