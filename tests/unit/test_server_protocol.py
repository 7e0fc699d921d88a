"""Request parsing and the conversion into runtime types: what is served, what is refused, and its name."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from lpu_runtime import InvalidRequestError
from server.protocol import ChatCompletionRequest, CompletionRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **fields})


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **fields})


def test_chat_defaults_are_the_runtime_defaults() -> None:
    params = chat().sampling_params()
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k) == (None, 1.0, 1.0, 0)
    assert (params.seed, params.stop, params.ignore_eos) == (None, (), False)


def test_chat_sampling_fields_reach_sampling_params() -> None:
    params = chat(
        max_tokens=7, temperature=0, top_p=0.5, top_k=40, seed=3, stop="\n", ignore_eos=True,
        presence_penalty=0.5, frequency_penalty=-0.5,
    ).sampling_params()  # fmt: skip
    assert params.max_tokens == 7 and params.greedy and params.top_p == 0.5 and params.top_k == 40
    assert params.seed == 3 and params.stop == ("\n",) and params.ignore_eos
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=9, max_completion_tokens=4).sampling_params().max_tokens == 4


def test_invalid_max_completion_tokens_is_reported_under_its_own_name() -> None:
    with pytest.raises(InvalidRequestError) as info:
        chat(max_completion_tokens=0).sampling_params()
    assert info.value.param == "max_completion_tokens"
    assert "max_completion_tokens" in info.value.message


def test_negative_seed_maps_to_a_distinct_nonnegative_seed() -> None:
    # OpenAI seeds are signed 64-bit; the runtime's generator wants an unsigned one
    assert chat(seed=-1).sampling_params().seed == 2**64 - 1
    assert chat(seed=-2).sampling_params().seed != chat(seed=-1).sampling_params().seed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 5),
        ("top_p", 0),
        ("top_k", -1),
        ("presence_penalty", 3),
        ("stop", ["a", "b", "c", "d", "e"]),
    ],
)
def test_out_of_range_values_name_their_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        chat(**{field: value}).sampling_params()
    assert info.value.param == field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
    ],
)
def test_chat_rejects_unsupported_parameters_by_name(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        chat(**{field: value}).sampling_params()
    assert info.value.param == field
    assert field in info.value.message or "not supported" in info.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 1),
        ("logprobs", False),
        ("tools", []),
        ("tool_choice", "none"),
        ("response_format", {"type": "text"}),
        ("logit_bias", {}),
        ("modalities", ["text"]),
        ("function_call", "none"),
    ],
)
def test_chat_accepts_the_no_op_values_of_unsupported_parameters(field: str, value: Any) -> None:
    chat(**{field: value}).sampling_params()


WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def test_the_new_chat_parameters_reach_sampling_params() -> None:
    params = chat(
        n=3, logprobs=True, top_logprobs=4, logit_bias={"7": -100, "9": 2.5}, min_tokens=2,
        repetition_penalty=1.3, max_tokens=5,
    ).sampling_params()  # fmt: skip
    assert params.logprobs == 4 and params.logit_bias == ((7, -100), (9, 2.5))
    assert (params.min_tokens, params.repetition_penalty) == (2, 1.3)
    assert chat(logprobs=True).sampling_params().logprobs == 0  # the sampled token's, no alternatives
    assert chat().sampling_params().logprobs is None
    assert chat(n=3).n_choices == 3 and chat().n_choices == 1


def test_tool_requests_are_served() -> None:
    request = chat(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    request.sampling_params()
    assert request.tool_names == ["weather"] and request.tool_calling
    assert not chat(tools=[WEATHER], tool_choice="none").tool_calling
    named = {"type": "function", "function": {"name": "weather"}}
    chat(tools=[WEATHER], tool_choice=named).sampling_params()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs
        ({"logit_bias": {"five": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"5": -100.5}}, "logit_bias"),
        ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"tool_choice": "required"}, "tool_choice"),  # without tools
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice",
        ),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"messages": [{"role": "user", "content": "x", "name": "ann"}]}, "messages.0.name"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
    ],
)
def test_invalid_values_of_the_served_parameters_name_their_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        chat(**fields).sampling_params()
    assert info.value.param == param


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"n": 0}, ("n",)),
        ({"n": 129}, ("n",)),
        ({"top_logprobs": 21, "logprobs": True}, ("top_logprobs",)),
        ({"logprobs": "some"}, ("logprobs",)),
        ({"parallel_tool_calls": "sometimes"}, ("parallel_tool_calls",)),
        ({"tools": [{"type": "function"}]}, ("tools", 0, "function")),
        (
            {"tools": [{"type": "function", "function": {"name": "two words"}}]},
            ("tools", 0, "function", "name"),
        ),
        ({"tool_choice": "always"}, ("tool_choice",)),
        ({"response_format": {"type": "yaml"}}, ("response_format", "type")),
        ({"logit_bias": {"5": "high"}}, ("logit_bias", "5")),
    ],
)
def test_bad_shapes_of_the_served_parameters_fail_validation_at_the_field(
    fields: dict[str, Any], loc: tuple[str | int, ...]
) -> None:
    with pytest.raises(ValidationError) as info:
        chat(**fields)
    assert info.value.errors()[0]["loc"][: len(loc)] == loc


def test_completion_parameters_reach_sampling_params() -> None:
    request = completion(n=2, logprobs=3, logit_bias={"1": -100})
    params = request.sampling_params()
    assert request.n_choices == 2 and params.logprobs == 3 and params.logit_bias == ((1, -100),)
    echo = completion(echo=True)
    echo.sampling_params()
    assert echo.echo


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("best_of", 2),
        ("suffix", "end"),
        ("logit_bias", {"1": -101}),
        ("logit_bias", {"x": 1}),
    ],
)
def test_completions_reject_unsupported_or_invalid_parameters_by_name(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        completion(**{field: value}).sampling_params()
    assert info.value.param == field


def test_completion_echo_with_logprobs_is_refused_as_logprobs() -> None:
    # the prompt's logprobs would need the logits of every prompt position
    with pytest.raises(InvalidRequestError) as info:
        completion(echo=True, logprobs=1).sampling_params()
    assert info.value.param == "logprobs"


@pytest.mark.parametrize(("field", "value"), [("n", 0), ("n", 129), ("logprobs", 6), ("logprobs", -1)])
def test_completion_ranges_fail_validation_at_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        completion(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_unknown_fields_are_ignored() -> None:
    request = chat(store=True, metadata={"k": "v"}, service_tier="auto", some_future_field=[1])
    request.sampling_params()
    assert request.model_extra is not None and "some_future_field" in request.model_extra


def test_content_parts_are_joined_and_developer_is_a_system_message() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None},
            ],
        }
    )
    assert request.template_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]


def test_non_text_content_parts_are_rejected_with_their_path() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "s"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
            ],
        }
    )
    with pytest.raises(InvalidRequestError) as info:
        request.template_messages()
    assert info.value.param == "messages.1.content.1.type"
    assert "image_url" in info.value.message


def test_user_message_without_content_is_rejected() -> None:
    with pytest.raises(InvalidRequestError) as info:
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user"}]}
        ).template_messages()
    assert info.value.param == "messages.0.content"


def test_tool_calls_and_results_in_history_reach_the_template() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "name": "weather", "content": "sunny"},
    ]
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    request.sampling_params()
    assert request.template_messages()[1:] == [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "weather"},
    ]


def test_tool_calls_outside_assistant_messages_are_rejected() -> None:
    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [{"role": "user", "content": "x", "tool_calls": [call]}]
    with pytest.raises(InvalidRequestError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": messages}).sampling_params()
    assert info.value.param == "messages.0.tool_calls"


def test_an_incomplete_tool_call_in_history_fails_validation_at_the_call() -> None:
    messages = [*MESSAGES, {"role": "assistant", "tool_calls": [{"id": "1", "type": "function"}]}]
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    assert info.value.errors()[0]["loc"] == ("messages", 1, "tool_calls", 0, "function")


@pytest.mark.parametrize("role", ["function", "robot"])
def test_unsupported_roles_fail_validation_at_the_role(role: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": role, "content": "x"}]})
    assert info.value.errors()[0]["loc"] == ("messages", 0, "role")


def test_empty_messages_fail_validation() -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": []})


def test_completion_max_tokens_defaults_to_16_like_openai() -> None:
    assert completion().sampling_params().max_tokens == 16


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("hello", "hello"), ([1, 2, 3], [1, 2, 3]), (["hello"], "hello"), ([[4, 5]], [4, 5]), ("", "")],
)
def test_single_prompts_in_every_form(prompt: Any, expected: str | list[int]) -> None:
    assert completion(prompt=prompt).single_prompt() == expected


@pytest.mark.parametrize("prompt", [["a", "b"], [[1], [2]], [], [[]]])
def test_batched_or_empty_prompt_lists_are_rejected_as_prompt(prompt: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        completion(prompt=prompt).single_prompt()
    assert info.value.param == "prompt"


def test_include_usage_only_counts_when_streaming() -> None:
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=False, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=True).include_usage
