"""How pydantic's validation errors become one OpenAI-shaped error naming the client's field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from server.errors import ApiError, describe_validation_errors, error_body
from server.protocol import ChatCompletionRequest, CompletionRequest


def errors_for(model: type[ChatCompletionRequest | CompletionRequest], body: Any) -> list[Any]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    # FastAPI reports body errors with a leading "body" segment
    return [{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()]


def test_missing_field_is_named() -> None:
    detail = describe_validation_errors(errors_for(ChatCompletionRequest, {"model": "m"}), "application/json")
    assert detail.param == "messages"
    assert detail.message == "Missing required parameter: 'messages'."
    assert detail.type == "invalid_request_error"


def test_nested_field_path_uses_dots() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "pirate", "content": "y"}]}
    detail = describe_validation_errors(errors_for(ChatCompletionRequest, body), "application/json")
    assert detail.param == "messages.1.role"
    assert "'pirate'" in detail.message


def test_union_type_tags_are_not_part_of_the_path() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": 5}]}
    detail = describe_validation_errors(errors_for(ChatCompletionRequest, body), "application/json")
    assert detail.param == "messages.0.content"
    assert "string" in detail.message and "list" in detail.message


def test_deepest_error_wins_inside_a_union() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [{"text": "no type"}]}]}
    detail = describe_validation_errors(errors_for(ChatCompletionRequest, body), "application/json")
    assert detail.param == "messages.0.content.0.type"


def test_prompt_of_the_wrong_type() -> None:
    detail = describe_validation_errors(
        errors_for(CompletionRequest, {"model": "m", "prompt": {"a": 1}}), None
    )
    assert detail.param == "prompt"


def test_json_decode_error_message() -> None:
    errors = [
        {
            "type": "json_invalid",
            "loc": ("body", 7),
            "msg": "JSON decode error",
            "ctx": {"error": "Expecting ','"},
        }
    ]
    detail = describe_validation_errors(errors, "application/json")
    assert "JSON" in detail.message and detail.param is None


def test_non_json_body_mentions_the_content_type() -> None:
    errors = [
        {"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be...", "input": b"x=1"}
    ]
    detail = describe_validation_errors(errors, "application/x-www-form-urlencoded")
    assert "Content-Type: application/json" in detail.message


def test_error_body_shape() -> None:
    assert error_body("m", type="t", param="p", code="c") == {
        "error": {"message": "m", "type": "t", "param": "p", "code": "c"}
    }
    assert ApiError(404, "gone", code="model_not_found").detail.model_dump() == {
        "message": "gone", "type": "invalid_request_error", "param": None, "code": "model_not_found"
    }  # fmt: skip
