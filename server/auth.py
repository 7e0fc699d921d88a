"""Optional bearer-key check on the OpenAI routes.

It is ASGI middleware rather than a dependency because FastAPI parses the body before dependencies run, and
an unauthenticated client must get 401, not a validation error about its body.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_response
from server.protocol import ErrorDetail

PROTECTED_PREFIX = "/v1/"


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith(PROTECTED_PREFIX)
            and not self._authorized(scope)
        ):
            detail = ErrorDetail(
                message="Incorrect or missing API key: send it as 'Authorization: Bearer <key>'.",
                type="invalid_request_error",
                code="invalid_api_key",
            )
            await error_response(401, detail, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, key = value.partition(b" ")
                # compare_digest: the time taken must not reveal how much of a guessed key was right
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    b"Bearer " + key.strip(), self._expected
                )
        return False
