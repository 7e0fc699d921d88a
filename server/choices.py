"""One choice of a response as its outputs arrive: the chunks each increment streams, or the choice the whole
output makes. Tool calls are parsed out of the text here, and logprobs put in the endpoint's shape."""

from __future__ import annotations

from typing import Protocol, TypeVar

from lpu_runtime import RequestOutput, TokenLogprob
from server.chunks import ChatChunks, CompletionChunks
from server.logprobs import LogprobFormatter
from server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatLogprobs,
    CompletionChoice,
    FunctionCall,
    ToolCallOut,
)
from server.tools.stream import ToolStreamer


class StreamedChoice(Protocol):
    def opening(self) -> list[str]:
        """What the stream sends for this choice before any output."""
        ...

    def stream(self, output: RequestOutput) -> list[str]:
        """The chunks an increment streams (its finish is `finish`'s)."""
        ...

    def finish(self, reason: str) -> list[str]: ...


Choice_co = TypeVar("Choice_co", covariant=True)


class ChoiceOutput(StreamedChoice, Protocol[Choice_co]):
    def add(self, output: RequestOutput) -> None:
        """Collects an increment for the non-streamed response."""
        ...

    def choice(self, reason: str) -> Choice_co:
        """The non-streamed response's choice, from every increment added."""
        ...


class ChatChoiceOutput:
    def __init__(
        self,
        index: int,
        chunks: ChatChunks,
        tools: ToolStreamer | None,
        logprobs: LogprobFormatter | None,
    ) -> None:
        self.index = index
        self.chunks = chunks
        self.tools = tools
        self.logprobs = logprobs
        self._parts: list[str] = []
        self._entries: list[TokenLogprob] = []

    def opening(self) -> list[str]:
        return [self.chunks.opening(self.index)]

    def stream(self, output: RequestOutput) -> list[str]:
        entries = self.logprobs.chat(output.logprobs) if self.logprobs is not None else None
        content, deltas = self.tools.push(output.new_text) if self.tools else (output.new_text, [])
        chunks = []
        if content or entries:
            chunks.append(self.chunks.content(self.index, content, entries))
        if deltas:
            chunks.append(self.chunks.tool_calls(self.index, deltas))
        return chunks

    def finish(self, reason: str) -> list[str]:
        chunks = []
        if self.tools is not None:
            content, deltas = self.tools.push("", final=True)
            if content:
                chunks.append(self.chunks.content(self.index, content))
            if deltas:
                chunks.append(self.chunks.tool_calls(self.index, deltas))
            if reason == "stop" and self.tools.called:
                reason = "tool_calls"
        return [*chunks, self.chunks.finish(self.index, reason)]

    def add(self, output: RequestOutput) -> None:
        self._parts.append(output.new_text)
        self._entries.extend(output.logprobs)

    def choice(self, reason: str) -> ChatChoice:
        text: str | None = "".join(self._parts)
        calls: list[ToolCallOut] | None = None
        if self.tools is not None:
            self.tools.push(text or "")
            text, found = self.tools.result()
            if found:
                calls = [
                    ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                    for c in found
                ]
                reason = "tool_calls" if reason == "stop" else reason
        logprobs = ChatLogprobs(content=self.logprobs.chat(self._entries)) if self.logprobs else None
        message = AssistantMessage(content=text, tool_calls=calls)
        return ChatChoice(index=self.index, message=message, logprobs=logprobs, finish_reason=reason)


class CompletionChoiceOutput:
    def __init__(
        self, index: int, chunks: CompletionChunks, logprobs: LogprobFormatter | None, echo: str = ""
    ) -> None:
        self.index = index
        self.chunks = chunks
        self.logprobs = logprobs
        self.echo = echo  # the prompt's text, when the request asked for it back
        self._parts: list[str] = [echo]
        self._entries: list[TokenLogprob] = []
        self._streamed = 0  # characters of this choice's text streamed so far

    def opening(self) -> list[str]:
        return []  # the legacy API's stream has no role chunk

    def stream(self, output: RequestOutput) -> list[str]:
        text = output.new_text if self._streamed or not self.echo else self.echo + output.new_text
        logprobs = None
        if self.logprobs is not None:
            offset = self._streamed + (len(text) - len(output.new_text))
            logprobs = self.logprobs.completion(output.logprobs, offset)
        self._streamed += len(text)
        return [self.chunks.content(self.index, text, logprobs)] if text or logprobs else []

    def finish(self, reason: str) -> list[str]:
        return [self.chunks.finish(self.index, reason)]

    def add(self, output: RequestOutput) -> None:
        self._parts.append(output.new_text)
        self._entries.extend(output.logprobs)

    def choice(self, reason: str) -> CompletionChoice:
        logprobs = self.logprobs.completion(self._entries, len(self.echo)) if self.logprobs else None
        return CompletionChoice(
            index=self.index, text="".join(self._parts), logprobs=logprobs, finish_reason=reason
        )
