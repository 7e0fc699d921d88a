"""The API applications build on, against the trained default model (SmolLM2-135M-Instruct, the session's one
`default_server`): structured outputs through the SDK's `parse`, a tool round trip through the OpenAI Agents SDK
on both of its model APIs (Responses, the SDK's default, and chat completions), streamed and not, the Responses
API directly, and logprobs against the sampled distribution. Short and greedy (but for the logprobs), so it costs
seconds: the shape is forced by constrained decoding where it matters (the forced call, the parsed object), and
the model's own words are checked where a trained model's are expected (it reads the tool's result back)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Literal

import agents
import openai
import pytest
from agents.items import MessageOutputItem, ToolCallItem, ToolCallOutputItem
from openai.types.responses import ResponseCompletedEvent, ResponseTextDeltaEvent

from tests.e2e.support import Pick, Server

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def smollm2(default_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{default_server.base_url}/v1", api_key="x", max_retries=0, timeout=60)


def test_parse_with_a_pydantic_model_returns_a_valid_object(smollm2: openai.OpenAI) -> None:
    completion = smollm2.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Pick a color and a count."}],
        response_format=Pick,
        temperature=0,
        max_tokens=24,
    )
    choice = completion.choices[0]
    assert isinstance(choice.message.parsed, Pick) and choice.finish_reason == "stop", choice.message.content


# ---- a tool round trip through the OpenAI Agents SDK -----------------------------------------------------------


@pytest.fixture(scope="module")
def no_tracing() -> Iterator[None]:
    agents.set_tracing_disabled(True)  # the SDK would export traces to OpenAI's servers
    yield
    agents.set_tracing_disabled(False)


def weather_agent(model: agents.Model, cities: list[str]) -> agents.Agent[None]:
    @agents.function_tool
    def get_weather(city: Literal["Paris", "Tokyo"]) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"sunny, 21 C in {city}"

    # tool_choice required constrains the first turn to a call; the SDK then resets it to auto, so the second
    # turn is the model's own answer. One call per turn: the grammar then ends the turn after it.
    settings = agents.ModelSettings(
        tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=40
    )
    return agents.Agent(name="weather", instructions="Use the tool.", tools=[get_weather], model=model, model_settings=settings)  # fmt: skip


@pytest.mark.parametrize("streamed", [False, True], ids=["run_sync", "run_streamed"])
@pytest.mark.parametrize("api", ["responses", "chat_completions"])
@pytest.mark.usefixtures("no_tracing")
def test_an_agent_calls_its_tool_and_answers_from_the_result(
    default_server: Server, api: str, streamed: bool
) -> None:
    # a client per run: an async client's connections belong to the event loop of the run that opened them
    sdk_client = openai.AsyncOpenAI(base_url=f"{default_server.base_url}/v1", api_key="x", max_retries=0)
    model: agents.Model = (
        agents.OpenAIResponsesModel(MODEL, sdk_client)
        if api == "responses"
        else agents.OpenAIChatCompletionsModel(MODEL, sdk_client)
    )
    cities: list[str] = []
    agent = weather_agent(model, cities)
    question = "What is the weather in Paris?"
    if streamed:

        async def run() -> agents.RunResultStreaming:
            result = agents.Runner.run_streamed(agent, question, max_turns=2)
            async for _ in result.stream_events():
                pass
            return result

        result: agents.RunResultBase = asyncio.run(run())
    else:
        result = agents.Runner.run_sync(agent, question, max_turns=2)
    kinds = [type(item) for item in result.new_items]
    assert kinds == [ToolCallItem, ToolCallOutputItem, MessageOutputItem] and cities == ["Paris"]
    answer = str(result.final_output)
    assert "sunny" in answer and "21" in answer, answer  # the model read the tool's result


# ---- the Responses API directly, and logprobs ------------------------------------------------------------------


def test_responses_create_streamed_is_the_same_answer(smollm2: openai.OpenAI) -> None:
    ask = {
        "model": MODEL,
        "input": "What is the capital of Japan?",
        "temperature": 0,
        "max_output_tokens": 16,
    }
    whole = smollm2.responses.create(**ask, store=False)  # type: ignore[call-overload]
    assert whole.status == "completed" and "Tokyo" in whole.output_text, whole.output_text
    events = list(smollm2.responses.create(**ask, store=False, stream=True))  # type: ignore[call-overload]
    deltas = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    last = events[-1]
    assert (
        isinstance(last, ResponseCompletedEvent) and deltas == last.response.output_text == whole.output_text
    )


def test_top_logprobs_are_the_distribution_sampled_from(smollm2: openai.OpenAI) -> None:
    # top_k 3: the draw is from 3 tokens, renormalised, so asking for 5 lists those 3, summing to probability 1
    reply = smollm2.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, seed=5,
        temperature=0.8, logprobs=True, top_logprobs=5, extra_body={"top_k": 3},
    )  # fmt: skip
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    for entry in logprobs.content:
        assert 1 <= len(entry.top_logprobs) <= 3
        assert math.isclose(sum(math.exp(t.logprob) for t in entry.top_logprobs), 1.0, rel_tol=1e-6)
        assert entry.logprob in [t.logprob for t in entry.top_logprobs if t.token == entry.token]
    text = b"".join(bytes(e.bytes or ()) for e in logprobs.content).decode()
    assert text == reply.choices[0].message.content
