"""`POST /v1/responses`: the Responses API over the chat flow.

A request becomes a chat request (instructions as the system message, input items as messages, function tools
as tools, `text.format` as response_format), runs as one, and its output becomes output items: a `message` with
`output_text`, and a `function_call` per call (streamed: server/response_stream.py). Every input shape is
declared here, so a malformed one is a 400 naming its field before anything runs, and a chat-side refusal is
reported under the Responses field it came from. Stored responses (`store`, `previous_response_id`, `conversation`), background
runs and built-in tools are not served and are refused by name.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from lpu_runtime import InvalidRequestError
from server.errors import describe_validation_errors
from server.protocol import (
    FUNCTION_NAME,
    INT64_MAX,
    INT64_MIN,
    AssistantMessage,
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    ToolCallRequest,
    ToolDefinition,
    Usage,
)

# ---- the request -----------------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class MessageInput(BaseModel):
    """A message item; `type` may be left out (the SDKs' EasyInputMessage)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallInput(BaseModel):
    """A call the model made earlier, sent back with the conversation."""

    model_config = ConfigDict(extra="allow")
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]


class OtherInput(BaseModel):
    """Any other item type (reasoning, built-in tool calls...): refused by name."""

    model_config = ConfigDict(extra="allow")
    type: str


# Tagged by class name: a validation error's path then reads input.0.call_id (server/errors.py drops
# capitalised segments of pydantic's locations, which name union members, not fields).
_ITEM_CLASSES = {
    "message": "MessageInput",
    "function_call": "FunctionCallInput",
    "function_call_output": "FunctionCallOutputInput",
}


def _item_class(item: Any) -> str:
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "message")
    return _ITEM_CLASSES.get(kind, "OtherInput") if isinstance(kind, str) else "OtherInput"


InputItem = Annotated[
    Annotated[MessageInput, Tag("MessageInput")]
    | Annotated[FunctionCallInput, Tag("FunctionCallInput")]
    | Annotated[FunctionCallOutputInput, Tag("FunctionCallOutputInput")]
    | Annotated[OtherInput, Tag("OtherInput")],
    Discriminator(_item_class),
]


class ResponsesTool(BaseModel):
    """A function tool, flat (`name` beside `type`, unlike chat's); other types are built-in tools."""

    model_config = ConfigDict(extra="allow")
    type: str
    name: str | None = Field(default=None, pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolChoice(BaseModel):
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    stream: bool | None = False
    user: str | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)  # extension, as in chat
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    reasoning: Any = None
    include: Any = None

    def check_supported(self) -> None:
        if self.store:
            raise InvalidRequestError("store", "stored responses are not supported: send store=false")
        if self.previous_response_id is not None:
            raise InvalidRequestError(
                "previous_response_id",
                "stored responses are not supported: send the whole conversation as input",
            )
        if self.conversation is not None:
            raise InvalidRequestError(
                "conversation", "conversations are not supported: send the whole conversation as input"
            )
        if self.background:
            raise InvalidRequestError("background", "background responses are not supported")
        if self.reasoning is not None:
            raise InvalidRequestError("reasoning", "reasoning options are not supported")
        if self.include:
            raise InvalidRequestError("include", "include is not supported")
        for i, tool in enumerate(self.tools or ()):
            if tool.type != "function":
                raise InvalidRequestError(
                    f"tools.{i}.type", f"built-in tools ({tool.type!r}) are not supported, only functions"
                )
            if tool.name is None:
                raise InvalidRequestError(f"tools.{i}.name", "a function tool needs a name")


# ---- into a chat request -----------------------------------------------------------------------------------


def _text_of(content: str | list[ContentPart], param: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        if part.type not in ("input_text", "output_text", "text") or part.text is None:
            raise InvalidRequestError(f"{param}.{j}.type", f"content of type {part.type!r} is not supported")
        parts.append(part.text)
    return "".join(parts)


def _messages(body: ResponsesRequest) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    if body.instructions:
        messages.append(ChatMessage(role="system", content=body.instructions))
    items = [MessageInput(role="user", content=body.input)] if isinstance(body.input, str) else body.input
    for i, item in enumerate(items):
        if isinstance(item, MessageInput):
            messages.append(ChatMessage(role=item.role, content=_text_of(item.content, f"input.{i}.content")))
        elif isinstance(item, FunctionCallInput):
            call = ToolCallRequest(
                id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_calls:
                last.tool_calls.append(call)  # parallel calls are one assistant turn
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputInput):
            output = _text_of(item.output, f"input.{i}.output")
            messages.append(ChatMessage(role="tool", content=output, tool_call_id=item.call_id))
        else:
            raise InvalidRequestError(
                f"input.{i}.type", f"input items of type {item.type!r} are not supported"
            )
    if not messages:
        raise InvalidRequestError("input", "input must not be empty")
    return messages


def _response_format(text: TextOptions | None) -> ResponseFormat | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type != "json_schema":
        return ResponseFormat(type=fmt.type) if fmt is not None else None
    if fmt.name is None:
        raise InvalidRequestError("text.format.name", "a json_schema format needs a name")
    schema = JsonSchemaFormat(
        name=fmt.name, description=fmt.description, schema=fmt.schema_, strict=fmt.strict
    )
    return ResponseFormat(type="json_schema", json_schema=schema)


def _tools(body: ResponsesRequest) -> list[ToolDefinition] | None:
    return [
        ToolDefinition(
            type="function",
            function=FunctionDefinition(
                name=t.name or "", description=t.description, parameters=t.parameters, strict=t.strict
            ),
        )
        for t in body.tools or ()
    ] or None


def chat_request(body: ResponsesRequest) -> ChatCompletionRequest:
    body.check_supported()
    choice = body.tool_choice
    tool_choice = (
        NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
        if isinstance(choice, FunctionToolChoice)
        else choice
    )
    fields = {
        "model": body.model,
        "messages": _messages(body),
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "user": body.user,
        "stream": body.stream,
        "tools": _tools(body),
        "tool_choice": tool_choice,
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": _response_format(body.text),
    }
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:  # every field was validated above: a gap there, reported as a 400 still
        detail = describe_validation_errors(exc.errors(), "application/json")
        raise InvalidRequestError(detail.param or "input", detail.message) from None


# What a chat field is called in a Responses request, longest prefix first.
_RESPONSES_PARAMS = (
    ("response_format.json_schema.schema", "text.format.schema"),
    ("response_format.json_schema", "text.format"),
    ("response_format", "text.format"),
    ("max_completion_tokens", "max_output_tokens"),
    ("max_tokens", "max_output_tokens"),
    ("messages", "input"),
)


def responses_error(exc: InvalidRequestError) -> InvalidRequestError:
    """A refusal of the chat request this one became, naming the Responses field (`tools.0.function.x` ->
    `tools.0.x`; a message of the conversation -> `input`)."""
    param = exc.param
    if param is None:
        return exc
    if param.startswith("tools.") and ".function." in param:
        return InvalidRequestError(param.replace(".function.", ".", 1), exc.message)
    for chat, responses in _RESPONSES_PARAMS:
        if param == chat or param.startswith(chat + "."):
            if chat == "messages":  # the items do not map one to one onto messages
                return InvalidRequestError(responses, exc.message)
            return InvalidRequestError(responses + param[len(chat) :], exc.message.replace(chat, responses))
    return exc


# ---- the response ----------------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class MessageItem(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: str = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: str = "completed"


OutputItem = MessageItem | FunctionCallItem


class ResponsesUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int] = Field(
        default_factory=lambda: {"cached_tokens": 0, "cache_write_tokens": 0}
    )
    output_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def output_items(message: AssistantMessage) -> list[OutputItem]:
    """A chat answer as output items: its text as a message, then each call."""
    items: list[OutputItem] = []
    if message.content:
        items.append(MessageItem(id=new_item_id("msg"), content=[OutputText(text=message.content)]))
    for call in message.tool_calls or ():
        items.append(
            FunctionCallItem(
                id=new_item_id("fc"),
                call_id=call.id,
                name=call.function.name,
                arguments=call.function.arguments,
            )
        )
    return items


def response_object(
    body: ResponsesRequest,
    response_id: str,
    model: str,
    output: list[OutputItem],
    usage: Usage | None,
    finish_reason: str | None,
) -> dict[str, Any]:
    """The response object; `finish_reason` None: still in progress (the opening events)."""
    status = (
        "in_progress" if finish_reason is None else "incomplete" if finish_reason == "length" else "completed"
    )
    choice = body.tool_choice
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": model,
        "output": [item.model_dump() for item in output],
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "temperature": body.temperature,
        "tool_choice": choice.model_dump() if isinstance(choice, BaseModel) else choice or "auto",
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
        "top_p": body.top_p,
        "text": body.text.model_dump(by_alias=True, exclude_none=True)
        if body.text and body.text.format
        else {"format": {"type": "text"}},
        "store": False,
        "usage": None
        if usage is None
        else ResponsesUsage(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        ).model_dump(),
    }
