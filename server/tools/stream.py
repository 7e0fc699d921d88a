"""Tool calls out of generated text, streamed as the OpenAI API streams them: content deltas while the text is
content, then per call its id, type and name in one delta and its arguments in the deltas after, as written."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from server.tools.calls import PartialCall, ToolCallParser, complete_calls


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class CallDelta:
    index: int
    arguments: str
    id: str | None = None  # with the name, on the call's first delta only
    name: str | None = None


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


class ToolStreamer:
    """Feeds the text of one choice as it arrives; `max_calls` is 1 when parallel_tool_calls is false."""

    def __init__(self, parser: ToolCallParser, max_calls: int | None = None) -> None:
        self.parser = parser
        self.max_calls = max_calls
        self.text = ""
        self._content_sent = 0
        self._ids: list[str] = []
        self._arguments_sent: list[int] = []

    def push(self, delta: str, final: bool = False) -> tuple[str, list[CallDelta]]:
        """The content and call deltas that `delta` (the text since the last push) releases."""
        self.text += delta
        parsed = self.parser.parse(self.text, final)
        content_end = parsed.content_end
        if final and not self._ids and not complete_calls(parsed):
            content_end = len(
                self.text
            )  # what looked like a call never became one: content, as result() says
        content = self.text[self._content_sent : content_end]
        self._content_sent = max(self._content_sent, content_end)
        deltas: list[CallDelta] = []
        for index, call in enumerate(self._limited(parsed.calls)):
            if call.name is None:
                break  # calls are streamed in order: a later one waits for this one's name
            if index == len(self._ids):
                self._ids.append(new_call_id())
                self._arguments_sent.append(0)
                deltas.append(CallDelta(index, "", self._ids[index], call.name))
            fresh = call.arguments[self._arguments_sent[index] :]
            if fresh:
                self._arguments_sent[index] = len(call.arguments)
                deltas.append(CallDelta(index, fresh))
        return content, deltas

    @property
    def called(self) -> bool:
        return bool(self._ids)

    def _limited(self, calls: list[PartialCall]) -> list[PartialCall]:
        return calls if self.max_calls is None else calls[: self.max_calls]

    def result(self) -> tuple[str | None, list[ToolCall]]:
        """The whole text's content and complete calls, with the ids the stream gave them. Text in which no
        call completed is all content."""
        parsed = self.parser.parse(self.text, True)
        calls = self._limited(complete_calls(parsed))
        if not calls:
            return self.text, []
        while len(self._ids) < len(calls):
            self._ids.append(new_call_id())
        content = self.text[: parsed.content_end]
        return (content if content.strip() else None), [
            ToolCall(self._ids[i], c.name or "", c.arguments) for i, c in enumerate(calls)
        ]
