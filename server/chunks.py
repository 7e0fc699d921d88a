"""The `data:` payloads of a streamed response, in the OpenAI API's chunk format.

Every chunk of one response carries the same id, created time, model and fingerprint. With
`stream_options.include_usage` every chunk has `"usage": null` and one extra chunk with no choices carries the
usage at the end, as the OpenAI API specifies; without it the field is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from server.protocol import (
    ChatCompletionChunk,
    ChunkChoice,
    CompletionChunk,
    CompletionChunkChoice,
    LpuInfo,
    Usage,
)

DONE = "[DONE]"


@dataclass(frozen=True)
class ResponseMeta:
    id: str
    created: int  # unix seconds
    model: str
    system_fingerprint: str


class ChunkFormat(Protocol):
    def opening(self) -> list[str]: ...

    def content(self, text: str) -> str: ...

    def finish(self, finish_reason: str) -> str: ...

    def usage(self, usage: Usage, x_lpu: LpuInfo) -> str: ...


class _Chunks:
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


class ChatChunks(_Chunks):
    def _chunk(
        self, choices: list[ChunkChoice], usage: Usage | None = None, x_lpu: LpuInfo | None = None
    ) -> str:
        chunk = ChatCompletionChunk(choices=choices, **self._envelope(usage, x_lpu))
        return chunk.model_dump_json(exclude=self._excluded(x_lpu))

    def opening(self) -> list[str]:
        return [self._chunk([ChunkChoice(delta={"role": "assistant", "content": ""})])]

    def content(self, text: str) -> str:
        return self._chunk([ChunkChoice(delta={"content": text})])

    def finish(self, finish_reason: str) -> str:
        return self._chunk([ChunkChoice(delta={}, finish_reason=finish_reason)])

    def usage(self, usage: Usage, x_lpu: LpuInfo) -> str:
        return self._chunk([], usage, x_lpu)


class CompletionChunks(_Chunks):
    def _chunk(
        self, choices: list[CompletionChunkChoice], usage: Usage | None = None, x_lpu: LpuInfo | None = None
    ) -> str:
        chunk = CompletionChunk(choices=choices, **self._envelope(usage, x_lpu))
        return chunk.model_dump_json(exclude=self._excluded(x_lpu))

    def opening(self) -> list[str]:
        return []  # completions have no role to announce

    def content(self, text: str) -> str:
        return self._chunk([CompletionChunkChoice(text=text)])

    def finish(self, finish_reason: str) -> str:
        return self._chunk([CompletionChunkChoice(text="", finish_reason=finish_reason)])

    def usage(self, usage: Usage, x_lpu: LpuInfo) -> str:
        return self._chunk([], usage, x_lpu)
