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
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "auto"),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x"}}),
        ("logit_bias", {"50": 10}),
        ("parallel_tool_calls", True),
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
        ("top_logprobs", 0),
        ("tools", []),
        ("tool_choice", "none"),
        ("response_format", {"type": "text"}),
        ("logit_bias", {}),
        ("modalities", ["text"]),
        ("stream_options", {"include_usage": True}),
    ],
)
def test_chat_accepts_the_no_op_values_of_unsupported_parameters(field: str, value: Any) -> None:
    chat(**{field: value}).sampling_params()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 3),
        ("logprobs", 2),
        ("best_of", 2),
        ("echo", True),
        ("suffix", "end"),
        ("logit_bias", {"1": -100}),
    ],
)
def test_completions_reject_unsupported_parameters_by_name(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        completion(**{field: value}).sampling_params()
    assert info.value.param == field


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


def test_tool_calls_in_history_are_rejected() -> None:
    messages = [*MESSAGES, {"role": "assistant", "tool_calls": [{"id": "1", "type": "function"}]}]
    with pytest.raises(InvalidRequestError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": messages}).sampling_params()
    assert info.value.param == "messages.1.tool_calls"


@pytest.mark.parametrize("role", ["tool", "function", "robot"])
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
