"""Every failure leaves the server as `{"error": {"message", "type", "param", "code"}}`, the OpenAI API's
shape, so the official SDKs raise their usual exception classes (BadRequestError, NotFoundError...).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lpu_runtime import (
    ChatTemplateError,
    ContextLengthExceededError,
    EngineDeadError,
    InvalidRequestError,
    TemplateRaisedError,
)
from server.protocol import ErrorBody, ErrorDetail

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
RATE_LIMIT = "rate_limit_exceeded"
# What a 503 asks a client to wait: an engine restart or a server replacing this one takes seconds.
UNAVAILABLE_RETRY_AFTER_S = 5


def retry_after_headers(seconds: float) -> dict[str, str]:
    """`Retry-After` in whole seconds (RFC 9110) and `retry-after-ms`, which the OpenAI SDKs read first."""
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, round(seconds * 1000))),
    }


def unavailable(message: str, code: str) -> ApiError:
    return ApiError(
        503, message, type=SERVER_ERROR, code=code, headers=retry_after_headers(UNAVAILABLE_RETRY_AFTER_S)
    )


class ApiError(Exception):
    """A failure the server answers deliberately, with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = dict(headers or {})


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return ErrorBody(error=ErrorDetail(message=message, type=type, param=param, code=code)).model_dump()


def error_response(
    status_code: int, detail: ErrorDetail, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(ErrorBody(error=detail).model_dump(), status_code=status_code, headers=headers)


def model_not_found(model: str, served: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist. This server serves '{served}'.",
        param="model",
        code="model_not_found",
    )


def context_length_exceeded(exc: ContextLengthExceededError, param: str) -> ApiError:
    message = exc.message
    if str(exc.prompt_tokens) not in message or str(exc.limit) not in message:
        # clients act on the two numbers (trim the prompt by the difference), so they must be in the text
        message += f" (the {param} resulted in {exc.prompt_tokens} tokens; the limit is {exc.limit} tokens)"
    return ApiError(400, message, param=param, code="context_length_exceeded")


# ---- validation errors -----------------------------------------------------------------------------------

_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _is_type_tag(segment: str | int) -> bool:
    """Pydantic names the union member it tried inside `loc` ('str', 'list[int]', 'ContentPart'); clients
    know only field names and indexes, all of which are lower_snake_case or integers here."""
    return isinstance(segment, str) and (segment in _TYPE_TAGS or "[" in segment or segment[:1].isupper())


def _param_path(loc: Sequence[str | int]) -> str:
    parts = [str(p) for p in loc if not _is_type_tag(p)]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


def _short(value: Any) -> str | None:
    if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60:
        return repr(value)
    return None


def describe_validation_errors(errors: Sequence[Any], content_type: str | None) -> ErrorDetail:
    """Turn pydantic's error list into one readable message about the most specific failing field."""
    if not errors:
        return ErrorDetail(message="Invalid request body.", type=INVALID_REQUEST)
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return ErrorDetail(
            message=f"We could not parse the JSON body of your request ({reason} at {first['loc'][-1]}).",
            type=INVALID_REQUEST,
        )
    paths = [_param_path(e["loc"]) for e in errors]
    if paths[0] == "" and not isinstance(first.get("input"), dict):
        hint = (
            ""
            if content_type and "json" in content_type
            else " with the header 'Content-Type: application/json'"
        )
        return ErrorDetail(message=f"The request body must be a JSON object{hint}.", type=INVALID_REQUEST)
    # The deepest path is the most specific complaint (a union reports its whole-value mismatches too).
    param = max(paths, key=lambda p: len(p.split(".")))
    same = [e for e, p in zip(errors, paths, strict=True) if p == param]
    if same[0].get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        reasons = list(dict.fromkeys(e["msg"] for e in same))
        got = _short(same[0].get("input"))
        message = f"Invalid value for '{param}': {' or '.join(reasons)}" + (f" (got {got})." if got else ".")
    return ErrorDetail(message=message, type=INVALID_REQUEST, param=param or None)


# ---- handlers ----------------------------------------------------------------------------------------------

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.detail, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, describe_validation_errors(exc.errors(), request.headers.get("content-type")))


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequestError)
    code = "context_length_exceeded" if isinstance(exc, ContextLengthExceededError) else None
    return error_response(
        400, ErrorDetail(message=exc.message, type=INVALID_REQUEST, param=exc.param, code=code)
    )


async def _chat_template(request: Request, exc: Exception) -> JSONResponse:
    # The template's own raise_exception() and our refusals ("the model has no chat template") speak to the
    # client; an exception the rendering tripped over (the cause) is Jinja's internals, kept in the log.
    if isinstance(exc, TemplateRaisedError) or exc.__cause__ is None:
        message = str(exc)
    else:
        logger.warning("chat template failed on %s %s: %s", request.method, request.url.path, exc)
        message = "The model's chat template could not render these messages."
    return error_response(
        400, ErrorDetail(message=message, type=INVALID_REQUEST, param="messages", code="chat_template_error")
    )


async def _engine_dead(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("refusing %s %s: %s", request.method, request.url.path, exc)
    return await _api_error(
        request,
        unavailable(
            "The inference engine is unavailable (restarting or shutting down); retry shortly.",
            "engine_unavailable",
        ),
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    kind = SERVER_ERROR if exc.status_code >= 500 else INVALID_REQUEST
    detail = ErrorDetail(message=message, type=kind, code=_HTTP_CODES.get(exc.status_code))
    return error_response(exc.status_code, detail, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this handler and the ASGI server logs the traceback; this line adds the
    # request, which that traceback lacks.
    logger.error("unhandled %s in %s %s", type(exc).__name__, request.method, request.url.path)
    return error_response(
        500, ErrorDetail(message="The server had an error while processing your request.", type=SERVER_ERROR)
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidRequestError, _invalid_request)
    app.add_exception_handler(ChatTemplateError, _chat_template)
    app.add_exception_handler(EngineDeadError, _engine_dead)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
