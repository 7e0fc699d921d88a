"""Limits that keep slow and large clients from holding the server: header and body read timeouts, body size.

uvicorn has neither a header nor a body read timeout: a client that sends half a request keeps its connection,
and its file descriptor, for ever. `header_timeout_protocol` closes a connection whose request headers are not
complete in time (counted from the connection or from the first byte of a keep-alive request).
`answer_overload_as_openai` makes uvicorn's refusal past `--max-connections` an OpenAI-shaped 503 rather than
its plain text. `RequestBodyLimits` reads the body before the app sees it: bodies over the size limit get 413 (at once when
Content-Length says so), bodies not complete in time get 408, both closing the connection since the rest of
the body is never read; then each `check` may refuse the body with a 400 before it is parsed again by the app.
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle, Transport
from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.errors import INVALID_REQUEST, error_response, unavailable
from server.protocol import ErrorDetail

BodyCheck = Callable[[bytes], ErrorDetail | None]  # None: the body is fine
_CLOSE = {"Connection": "close"}


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    refusal = unavailable("The server has too many connections open; retry shortly.", "server_overloaded")
    await error_response(refusal.status_code, refusal.detail, {**refusal.headers, **_CLOSE})(
        scope, receive, send
    )


def answer_overload_as_openai() -> None:
    """uvicorn serves its module-level `service_unavailable` app to a request that arrives past its
    concurrency limit; that app is the one hook it has for the answer, so it is replaced here, once, before
    the server starts."""
    setattr(httptools_impl, "service_unavailable", _over_capacity)  # noqa: B010 (not a public, typed name)


def header_timeout_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose request headers take over `timeout_s`."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: TimerHandle | None = None

        def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a client that connects and sends nothing is a slow client too

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


class RequestBodyLimits:
    def __init__(
        self, app: ASGIApp, max_bytes: int, timeout_s: float, checks: Sequence[BodyCheck] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.checks = checks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # nobody is left to answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._too_large(scope, receive, send)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            detail = ErrorDetail(
                message=f"The request body did not arrive within {self.timeout_s:g} s.",
                type=INVALID_REQUEST,
                code="request_timeout",
            )
            await error_response(408, detail, _CLOSE)(scope, receive, send)
            return
        body = b"".join(chunks)
        for check in self.checks:
            refusal = check(body)
            if refusal is not None:
                await error_response(400, refusal)(scope, receive, send)
                return
        await self.app(scope, _replay(body, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = ErrorDetail(
            message=f"The request body is larger than {self.max_bytes} bytes.",
            type=INVALID_REQUEST,
            code="request_too_large",
        )
        await error_response(413, detail, _CLOSE)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body in one message, then whatever the connection says next (its disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
