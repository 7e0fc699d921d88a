"""The server's own OpenAPI schema, fuzzed with schemathesis against the live server with its default bounds:
whatever the body, headers or path, the answer is never a 5xx.

The long run that found this issue's bugs sent about 73,000 requests; here each operation gets a few generated cases
(hypothesis derandomized, so a failure reproduces) as generated, where a made-up model is refused early but
every odd string still crosses the middleware, and twice as many naming the served model, so the request is
validated to the end and may run. Completions are capped at a few tokens and two choices, so the
whole run takes a few seconds on the session's shared server.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok

from tests.e2e.support import Server

MAX_TOKENS = 4
MAX_CHOICES = 2
# Cases per operation naming the served model, and half as many as generated (refused early, at the model).
# Most of the run's time is hypothesis building chat bodies.
EXAMPLES = 8
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def bounded(path: str, body: Any, model: str | None) -> Any:
    """Caps what one case may generate (tokens, choices) and, given `model`, names it; nothing else changes."""
    if not isinstance(body, dict):
        return body
    if model is not None:
        body["model"] = model
    for field in TOKEN_FIELDS:
        if isinstance(body.get(field), int) and body[field] > MAX_TOKENS:
            body[field] = MAX_TOKENS
    body.setdefault("max_output_tokens" if path == "/v1/responses" else "max_tokens", MAX_TOKENS)
    if isinstance(body.get("n"), int) and body["n"] > MAX_CHOICES:
        body["n"] = MAX_CHOICES
    return body


def fuzz(server: Server, cases: Any, model: str | None, examples: int) -> set[int]:
    """Runs an operation's cases; the statuses they got."""
    statuses: set[int] = set()

    @given(case=cases)
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def no_5xx(case: Any) -> None:
        case.body = bounded(case.path, case.body, model)
        if model is not None and "model" in (case.path_parameters or {}):
            case.path_parameters["model"] = model
        response = case.call(base_url=server.base_url, timeout=60)
        assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
        statuses.add(response.status_code)

    no_5xx()
    return statuses


def test_no_generated_request_gets_a_5xx(server: Server) -> None:
    # schemathesis's pytest plugin does not load under this pytest; its strategies drive hypothesis directly.
    api = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    results = list(api.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert operations and len(operations) == len(results)  # every operation's schema is usable
    for operation in operations:
        cases = operation.as_strategy()
        fuzz(server, cases, None, EXAMPLES // 2)
        served = fuzz(server, cases, server.model, EXAMPLES)
        # naming the served model gets every case past the model check, into the request's own validation
        assert 404 not in served, (operation.path, served)
