"""Optional bearer-key check on the OpenAI routes, with named keys.

It is ASGI middleware rather than a dependency because FastAPI parses the body before dependencies run, and
an unauthenticated client must get 401, not a validation error about its body. A named key's name is put in
the request's state, so a request without a `user` field is still attributed to someone in /metrics.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_response
from server.protocol import ErrorDetail

PROTECTED_PREFIX = "/v1/"
KEY_NAME_STATE = "lpu_api_key_name"


def api_key_name(request: Request) -> str | None:
    """The name of the key the request authenticated with; None without auth or for the unnamed key."""
    name: str | None = request.scope.get("state", {}).get(KEY_NAME_STATE)
    return name


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Mapping[str, str | None]) -> None:
        """`keys`: every accepted key and its name (None for an unnamed key)."""
        self.app = app
        self._keys = [(key.encode(), name) for key, name in keys.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIX):
            matched, name = self._match(scope)
            if not matched:
                detail = ErrorDetail(
                    message="Incorrect or missing API key: send it as 'Authorization: Bearer <key>'.",
                    type="invalid_request_error",
                    code="invalid_api_key",
                )
                await error_response(401, detail, headers={"WWW-Authenticate": "Bearer"})(
                    scope, receive, send
                )
                return
            if name is not None:
                scope.setdefault("state", {})[KEY_NAME_STATE] = name
        await self.app(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[bool, str | None]:
        for header, value in scope["headers"]:
            if header == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False, None
                given = given.strip()
                matched, matched_name = False, None
                # Every key is compared, in constant time each, so the time taken reveals neither which key
                # nor how much of a guessed key was right.
                for key, name in self._keys:
                    if hmac.compare_digest(given, key):
                        matched, matched_name = True, name
                return matched, matched_name
        return False, None
