"""The Responses API: requests as chat requests, refusals named by the Responses field, and the event stream
checked against the official SDK's event models."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionToolCall,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)
from pydantic import TypeAdapter, ValidationError

from lpu_runtime import FinishReason, InvalidRequestError, RequestOutput
from server.chunks import ResponseMeta
from server.errors import describe_validation_errors
from server.protocol import AssistantMessage, ErrorDetail, FunctionCall, ToolCallOut
from server.response_stream import ResponseStream
from server.responses import (
    FunctionCallItem,
    MessageItem,
    ResponsesRequest,
    chat_request,
    output_items,
    responses_error,
)
from server.tools import FORMATS
from server.tools.stream import ToolStreamer

TOOL = {"type": "function", "name": "weather", "parameters": {"type": "object"}}


def request(**fields: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", "input": "hi", **fields})


def test_text_input_and_instructions_become_system_and_user_messages() -> None:
    chat = chat_request(request(instructions="be brief", max_output_tokens=7, seed=3))
    assert chat.template_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert chat.sampling_params().max_tokens == 7 and chat.sampling_params().seed == 3


def test_a_tool_round_trip_in_items_becomes_one_assistant_turn_and_tool_results() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"d": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
    ]
    chat = chat_request(
        request(input=items, tools=[TOOL], tool_choice={"type": "function", "name": "weather"})
    )
    messages = chat.template_messages()
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert [m["content"] for m in messages[2:]] == ["sunny", "rain"]
    assert chat.tool_names == ["weather"] and chat.tool_calling


def test_text_format_becomes_response_format() -> None:
    schema = {"type": "object"}
    fmt = {"type": "json_schema", "name": "pick", "schema": schema, "strict": True}
    response_format = chat_request(request(text={"format": fmt})).response_format
    assert response_format is not None and response_format.json_schema is not None
    assert response_format.json_schema.schema_ == schema and response_format.json_schema.strict


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": []}, "input"),  # found by the fuzz run: once a 500
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0.type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content.0.type",
        ),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"tools": [{"type": "function"}]}, "tools.0.name"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"tool_choice": "required"}, "tool_choice"),  # without tools
    ],
)
def test_refusals_name_the_responses_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        chat_request(request(**fields)).sampling_params()
    assert info.value.param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input.0.call_id"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input.0.role"),
        ({"input": [{"type": 7}]}, "input.0.type"),
        ({"tools": [{"type": "function", "name": "two words"}]}, "tools.0.name"),
        ({"seed": 2**70}, "seed"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    ],
)
def test_malformed_shapes_are_400s_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as info:
        request(**fields)
    assert describe_validation_errors(info.value.errors(), "application/json").param == param


@pytest.mark.parametrize(
    ("chat_param", "param"),
    [
        ("max_completion_tokens", "max_output_tokens"),
        ("response_format.json_schema.schema", "text.format.schema"),
        ("tools.0.function.parameters", "tools.0.parameters"),
        ("messages.3.content", "input"),
        ("temperature", "temperature"),
    ],
)
def test_a_chat_refusal_is_renamed_to_the_responses_field(chat_param: str, param: str) -> None:
    renamed = responses_error(InvalidRequestError(chat_param, f"{chat_param} is wrong"))
    assert renamed.param == param


def test_a_chat_answer_becomes_a_message_then_its_calls() -> None:
    call = ToolCallOut(id="call_1", function=FunctionCall(name="weather", arguments="{}"))
    items = output_items(AssistantMessage(content="Let me look.", tool_calls=[call]))
    assert isinstance(items[0], MessageItem) and items[0].content[0].text == "Let me look."
    assert isinstance(items[1], FunctionCallItem) and (items[1].call_id, items[1].name) == (
        "call_1",
        "weather",
    )
    assert output_items(AssistantMessage(content=None)) == []


def test_a_streamed_response_is_the_sdks_event_sequence() -> None:
    meta = ResponseMeta(id="resp-1", created=0, model="m", system_fingerprint="fp")
    body = ResponsesRequest.model_validate({"model": "m", "input": "hi", "tools": [TOOL]})
    stream = ResponseStream(body, meta, ToolStreamer(FORMATS["hermes"].parser(["weather"])))
    pieces = ["Let me", " look.<tool_", 'call>\n{"name": "weather", "arguments": {"d"', ": 1}}\n</tool_call>"]
    events = stream.opening()
    for piece in pieces:
        events += stream.stream(RequestOutput("r", (1,), piece, 3, 1))
    events += stream.finish("stop")
    events += stream.closing([RequestOutput("r", (), "", 3, 4, True, FinishReason.STOP)])
    adapter: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
    sdk = [adapter.validate_json(e) for e in events]
    assert [e.sequence_number for e in sdk] == list(range(len(sdk)))
    assert [e.type for e in sdk] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    text = "".join(e.delta for e in sdk if isinstance(e, ResponseTextDeltaEvent))
    arguments = [e for e in sdk if isinstance(e, ResponseFunctionCallArgumentsDeltaEvent)]
    assert text == "Let me look." and "".join(e.delta for e in arguments) == '{"d": 1}'
    assert {e.output_index for e in arguments} == {1}
    completed = sdk[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.output_text == "Let me look." and completed.response.usage is not None
    call = completed.response.output[1]
    assert isinstance(call, ResponseFunctionToolCall) and (call.name, call.arguments) == (
        "weather",
        '{"d": 1}',
    )


def test_a_stream_cut_by_max_output_tokens_is_incomplete_and_a_failure_an_error_event() -> None:
    meta = ResponseMeta(id="resp-1", created=0, model="m", system_fingerprint="fp")
    stream = ResponseStream(request(), meta, None)
    events = [
        *stream.opening(),
        *stream.stream(RequestOutput("r", (1,), "a", 3, 1)),
        *stream.finish("length"),
    ]
    last = json.loads(stream.closing([RequestOutput("r", (), "", 3, 1, True, FinishReason.LENGTH)])[0])
    assert (
        last["type"] == "response.incomplete"
        and last["response"]["incomplete_details"]["reason"] == "max_output_tokens"
    )
    error = json.loads(stream.failure(ErrorDetail(message="boom", type="server_error"))[0])
    assert (error["type"], error["message"], error["sequence_number"]) == ("error", "boom", len(events) + 1)
