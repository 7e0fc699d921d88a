"""Tools, structured outputs, logprobs, n, echo and the Responses API through the official SDK (and instructor
and LangChain), against the demo model. Its text is noise, so every shape is forced by constrained decoding
(tool_choice required or named, json_schema): what is checked is that the output always parses and that every
field travels in the API's shapes, streamed and not."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import instructor
import langchain_openai
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from openai.types.responses import (
    FunctionToolParam,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseTextDeltaEvent,
)
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import SecretStr

from tests.e2e.support import Pick, Server

WEATHER_PARAMETERS: dict[str, object] = {
    "type": "object",
    "properties": {
        "unit": {"enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["unit", "days"],
    "additionalProperties": False,
}
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": WEATHER_PARAMETERS,
        "strict": True,
    },
}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]


def test_parse_with_a_pydantic_model_always_returns_a_valid_object(
    client: openai.OpenAI, server: Server
) -> None:
    for seed in range(6):
        completion = client.chat.completions.parse(
            model=server.model, messages=ASK, response_format=Pick, seed=seed, max_tokens=40
        )
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, Pick), completion.choices[0].message.content


def test_invalid_schema_is_a_400_naming_the_field(client: openai.OpenAI, server: Server) -> None:
    bad: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "objekt"}},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=server.model, messages=ASK, response_format=bad)
    assert caught.value.param == "response_format.json_schema.schema"
    assert "objekt" in caught.value.message


def _arguments_ok(arguments: str) -> None:
    args = json.loads(arguments)
    assert args["unit"] in ("c", "f") and 1 <= args["days"] <= 7


def test_a_tool_round_trip_streamed_and_not(client: openai.OpenAI, server: Server) -> None:
    first = client.chat.completions.create(
        model=server.model,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        seed=1,
        max_tokens=120,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    _arguments_ok(call.function.arguments)
    stream = client.chat.completions.create(
        model=server.model,
        messages=ASK,
        tools=[WEATHER],
        seed=1,
        max_tokens=120,
        stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    ids: list[str] = []
    names: list[str | None] = []
    arguments, finish = "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        for d in delta.tool_calls or ():
            assert d.function is not None
            if d.id:
                ids.append(d.id)
                names.append(d.function.name)
            arguments += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert len(ids) == 1 and names == ["get_weather"] and finish == "tool_calls"
    _arguments_ok(arguments)
    follow_up: list[ChatCompletionMessageParam] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": ids[0],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": ids[0], "content": "sunny, 21 C"},
    ]
    answer = client.chat.completions.create(
        model=server.model, messages=follow_up, tools=[WEATHER], tool_choice="none", max_tokens=5
    )
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "length"


def test_tools_with_a_response_format_give_calls_or_an_answer_that_follows_it(
    client: openai.OpenAI, server: Server
) -> None:
    # what an agent with tools and an output type sends on every turn: the model calls or answers in the format
    # (which branch is the model's choice: tests/unit/test_tools.py shows the grammar allows both)
    for seed in range(2):
        reply = client.chat.completions.parse(
            model=server.model, messages=ASK, tools=[WEATHER], response_format=Pick, seed=seed,
            parallel_tool_calls=False, temperature=1.5, max_tokens=120,
        )  # fmt: skip
        message = reply.choices[0].message
        if message.tool_calls:
            _arguments_ok(message.tool_calls[0].function.arguments)
        else:
            assert isinstance(message.parsed, Pick), message.content
    forced = client.chat.completions.create(
        model=server.model, messages=ASK, tools=[WEATHER], tool_choice="required", seed=0, max_tokens=120,
        parallel_tool_calls=False, response_format={"type": "json_object"},
    )  # fmt: skip
    assert forced.choices[0].finish_reason == "tool_calls"


def test_logprobs_are_the_sampled_distribution(client: openai.OpenAI, server: Server) -> None:
    # top_k=3: the draw is from 3 tokens, so asking for 5 returns exactly those 3, summing to probability 1
    reply = client.chat.completions.create(
        model=server.model, messages=ASK, max_tokens=6, logprobs=True, top_logprobs=5, seed=3,
        extra_body={"top_k": 3, "ignore_eos": True},
    )  # fmt: skip
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    content = logprobs.content
    assert len(content) == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert math.isclose(sum(math.exp(t.logprob) for t in entry.top_logprobs), 1.0, rel_tol=1e-6)
        assert entry.token in [t.token for t in entry.top_logprobs] and entry.logprob <= 0
    text = "".join(bytes(e.bytes or ()).decode("utf-8", "replace") for e in content)
    assert text == reply.choices[0].message.content


def test_n_choices_are_reproducible_per_seed(client: openai.OpenAI, server: Server) -> None:
    kwargs: dict[str, Any] = {
        "model": server.model,
        "messages": ASK,
        "max_tokens": 8,
        "extra_body": {"ignore_eos": True},
    }
    both = client.chat.completions.create(n=2, seed=10, **kwargs)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.usage is not None and both.usage.completion_tokens == 16
    second_alone = client.chat.completions.create(n=1, seed=11, **kwargs)
    assert both.choices[1].message.content == second_alone.choices[0].message.content
    streamed = client.chat.completions.create(n=2, seed=10, stream=True, **kwargs)
    texts = ["", ""]
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [c.message.content for c in both.choices]


def test_completions_echo_and_logprobs(client: openai.OpenAI, server: Server) -> None:
    echoed = client.completions.create(model=server.model, prompt="Once", max_tokens=3, echo=True, seed=1)
    assert echoed.choices[0].text.startswith("Once")
    with_logprobs = client.completions.create(
        model=server.model, prompt="Once", max_tokens=3, logprobs=2, seed=1
    )
    lp = with_logprobs.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.top_logprobs is not None
    assert len(lp.tokens) == 3 and all(len(top) <= 2 for top in lp.top_logprobs)
    assert "".join(lp.tokens) == with_logprobs.choices[0].text


def test_request_id_is_echoed_or_made(server: Server) -> None:
    url = f"{server.base_url}/v1/models"
    assert httpx.get(url, headers={"x-request-id": "mine-1"}).headers["x-request-id"] == "mine-1"
    assert httpx.get(url).headers["x-request-id"].startswith("req_")


def test_responses_api_streamed_and_not(client: openai.OpenAI, server: Server) -> None:
    tool: FunctionToolParam = {
        "type": "function",
        "name": "get_weather",
        "parameters": WEATHER_PARAMETERS,
        "strict": True,
    }
    response = client.responses.create(
        model=server.model,
        input="Weather in Paris?",
        instructions="Use tools.",
        tools=[tool],
        tool_choice="required",
        max_output_tokens=120,
        store=False,
        parallel_tool_calls=False,
    )
    calls = [item for item in response.output if isinstance(item, ResponseFunctionToolCall)]
    assert response.status == "completed" and len(calls) >= 1
    _arguments_ok(calls[0].arguments)
    events = list(
        client.responses.create(model=server.model, input="Hi", max_output_tokens=5, stream=True, store=False)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert isinstance(events[-1], ResponseIncompleteEvent)
    assert deltas == events[-1].response.output_text
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=server.model, input="Hi", previous_response_id="resp_x")


def test_instructor_and_langchain(server: Server) -> None:
    base = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    for mode in (instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA):
        patched = instructor.from_openai(base, mode=mode)
        pick = patched.chat.completions.create(
            model=server.model, response_model=Pick, messages=ASK, max_tokens=150, max_retries=0
        )
        assert isinstance(pick, Pick)
    llm = langchain_openai.ChatOpenAI(
        model=server.model,
        base_url=f"{server.base_url}/v1",
        api_key=SecretStr("x"),
        max_completion_tokens=120,
    )
    assert isinstance(llm.with_structured_output(Pick, method="json_schema").invoke("Pick one"), Pick)
    tool: dict[str, Any] = {**WEATHER}  # LangChain takes OpenAI tools as plain dicts
    message = llm.bind_tools([tool], tool_choice="get_weather").invoke("Weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
