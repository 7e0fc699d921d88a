"""Graceful shutdown: on SIGTERM stop taking requests, let running ones finish, abort the rest, exit 0.

uvicorn's own shutdown closes the listening socket first (new clients get connection refused), gives running
requests a grace period and then cuts them mid-body, and re-raises the signal (exit status -15). Here the first
SIGTERM or SIGINT only starts draining: the socket stays open and new /v1 requests get an OpenAI-shaped 503 with
Retry-After (and /health 503) while running requests finish, up to the drain deadline; then every request still
in the engine is aborted, which ends each one cleanly (a stream with an error event and [DONE], a non-streaming
request with a 503), and only then does uvicorn shut down. A second signal shuts down at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_response, unavailable

logger = logging.getLogger(__name__)

ABORT_GRACE_S = 1.0  # for aborted requests to write their last bytes
POLL_S = 0.05
PROTECTED_PREFIX = "/v1/"


class Drain:
    """Whether the server is draining, and how many /v1 requests are still being answered."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    async def wait_idle(self, seconds: float) -> bool:
        """True once no request is in flight, False if `seconds` passed first."""
        deadline = time.monotonic() + seconds
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        return not self.in_flight


class DrainMiddleware:
    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            refusal = unavailable("The server is shutting down; retry the request.", "server_shutting_down")
            headers = {**refusal.headers, "Connection": "close"}
            await error_response(refusal.status_code, refusal.detail, headers)(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above on the first SIGTERM or SIGINT, and exit status 0 after it."""

    def __init__(
        self, config: uvicorn.Config, drain: Drain, drain_timeout_s: float, abort_all: Callable[[], None]
    ) -> None:
        """abort_all: ends every request the engine still runs, and refuses new ones."""
        super().__init__(config)
        self.drain = drain
        self.drain_timeout_s = drain_timeout_s
        self.abort_all = abort_all
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown (status -15, not 0).
        if self._loop is None or not self.started or self.drain.draining:
            self.should_exit = True  # not serving yet, or a second signal: stop now
            return
        self.drain.draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        logger.info(
            "draining: %d requests running, up to %g s to finish", self.drain.in_flight, self.drain_timeout_s
        )
        if not await self.drain.wait_idle(self.drain_timeout_s):
            logger.warning("drain deadline passed: aborting %d requests", self.drain.in_flight)
            self.abort_all()
            await self.drain.wait_idle(ABORT_GRACE_S)
        self.should_exit = True
