"""The Responses API's event stream for one generation (`stream: true` on /v1/responses).

The events the SDKs read: `response.created` and `response.in_progress`; per output item (the message, then
each call, in the order the model writes them) `response.output_item.added`, then for the message
`response.content_part.added` and `response.output_text.delta`s, for a call
`response.function_call_arguments.delta`s; once generation ends each item's `...done` events; then
`response.completed` (`response.incomplete` when max_output_tokens cut it short). Every event carries its
`sequence_number`. A failure after the 200 is an `error` event; there is no `[DONE]`, the Responses API's
streams end with their last event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lpu_runtime import RequestOutput
from server.chunks import ResponseMeta
from server.protocol import ErrorDetail
from server.responses import (
    FunctionCallItem,
    MessageItem,
    OutputItem,
    OutputText,
    ResponsesRequest,
    new_item_id,
    response_object,
)
from server.tools.stream import CallDelta, ToolStreamer
from server.usage import usage_of


class ResponseStream:
    """The one choice of a streamed response and the stream's framing (`opening`, `closing`, `failure`)."""

    def __init__(self, body: ResponsesRequest, meta: ResponseMeta, tools: ToolStreamer | None) -> None:
        self.body = body
        self.meta = meta
        self.tools = tools
        self._sequence = 0
        self._items: list[OutputItem] = []
        self._message: MessageItem | None = None
        self._calls: dict[int, FunctionCallItem] = {}  # by the call's index among the calls
        self._reason: str | None = None

    def _event(self, kind: str, **fields: Any) -> str:
        event = json.dumps({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1
        return event

    def _response(self, usage_from: Sequence[RequestOutput] = ()) -> dict[str, Any]:
        usage = usage_of(usage_from) if usage_from else None
        return response_object(self.body, self.meta.id, self.meta.model, self._items, usage, self._reason)

    def _added(self, item: OutputItem) -> str:
        self._items.append(item)
        return self._event(
            "response.output_item.added", output_index=len(self._items) - 1, item=item.model_dump()
        )

    def opening(self) -> list[str]:
        opened = self._response()
        return [
            self._event("response.created", response=opened),
            self._event("response.in_progress", response=opened),
        ]

    def stream(self, output: RequestOutput) -> list[str]:
        text, deltas = self.tools.push(output.new_text) if self.tools else (output.new_text, [])
        return [*self._text(text), *self._arguments(deltas)]

    def finish(self, reason: str) -> list[str]:
        events = []
        if self.tools is not None:
            text, deltas = self.tools.push("", final=True)
            events += [*self._text(text), *self._arguments(deltas)]
        for index, item in enumerate(self._items):
            item.status = "completed"
            if isinstance(item, MessageItem):
                where = {"item_id": item.id, "output_index": index, "content_index": 0}
                part = item.content[0]
                events.append(self._event("response.output_text.done", **where, text=part.text, logprobs=[]))
                events.append(self._event("response.content_part.done", **where, part=part.model_dump()))
            else:
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        item_id=item.id,
                        output_index=index,
                        name=item.name,
                        arguments=item.arguments,
                    )
                )
            events.append(
                self._event("response.output_item.done", output_index=index, item=item.model_dump())
            )
        self._reason = reason
        return events

    def closing(self, finals: Sequence[RequestOutput]) -> list[str]:
        kind = "response.incomplete" if self._reason == "length" else "response.completed"
        return [self._event(kind, response=self._response(finals))]

    def failure(self, detail: ErrorDetail) -> list[str]:
        return [
            self._event("error", code=detail.code or detail.type, message=detail.message, param=detail.param)
        ]

    def _text(self, text: str) -> list[str]:
        if not text:
            return []
        events = []
        if self._message is None:
            self._message = MessageItem(id=new_item_id("msg"), status="in_progress", content=[])
            events.append(self._added(self._message))
            self._message.content.append(OutputText(text=""))
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=self._message.id,
                    output_index=self._items.index(self._message),
                    content_index=0,
                    part=OutputText(text="").model_dump(),
                )
            )
        self._message.content[0].text += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self._message.id,
                output_index=self._items.index(self._message),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _arguments(self, deltas: list[CallDelta]) -> list[str]:
        events = []
        for d in deltas:
            if d.id is not None:
                call = FunctionCallItem(
                    id=new_item_id("fc"), call_id=d.id, name=d.name or "", arguments="", status="in_progress"
                )
                self._calls[d.index] = call
                events.append(self._added(call))
            call = self._calls[d.index]
            if d.arguments:
                call.arguments += d.arguments
                events.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=call.id,
                        output_index=self._items.index(call),
                        delta=d.arguments,
                    )
                )
        return events
