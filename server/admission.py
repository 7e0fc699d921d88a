"""Admission control: a bounded queue in front of the engine, and a 429 with Retry-After past it.

A request is *waiting* from its admission until its first output (queued in the engine or in its prefill); the
queue is bounded in requests and in prompt tokens, so an admitted request's time to first token stays bounded
however many clients arrive. Past a bound the request is refused with 429 `rate_limit_exceeded`, which the
OpenAI SDKs retry by themselves, after the `Retry-After` we send: the time the queue needs, at its measured
drain rate, to make room for this client and for every client already told to come back before it (so a burst
of rejected clients is spread out instead of returning together). An empty queue admits any request, so one
prompt larger than the token bound is slow rather than refused forever.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import RATE_LIMIT, ApiError, error_response, retry_after_headers

DRAIN_WINDOW_S = 30.0  # the drain rate is measured over this much recent history
COLD_DRAIN_PER_S = 1.0  # requests/s assumed before any request has started
MAX_RETRY_AFTER_S = 60.0  # the OpenAI SDKs ignore a Retry-After above 60 s
# Why a request got 429: the queue's two bounds, then server/limits.py's per-key ones.
REJECT_REASONS = ("queue_requests", "queue_tokens", "key_concurrency", "key_tokens")
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})


class RateLimited(ApiError):
    """429 `rate_limit_exceeded` with Retry-After; `reason` labels the rejection in /metrics."""

    def __init__(
        self, message: str, reason: str, retry_after_s: float | None, headers: dict[str, str] | None = None
    ) -> None:
        all_headers = dict(headers or {})
        if retry_after_s is not None:
            all_headers.update(retry_after_headers(retry_after_s))
        super().__init__(429, message, type="requests", code=RATE_LIMIT, headers=all_headers)
        self.reason = reason


class DrainRate:
    """Requests and prompt tokens leaving the queue per second, over the last `window_s`."""

    def __init__(self, window_s: float = DRAIN_WINDOW_S, now: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._now = now
        self._started: deque[tuple[float, int]] = deque()  # (when, prompt tokens)
        self._since = now()

    def record(self, prompt_tokens: int) -> None:
        self._started.append((self._now(), prompt_tokens))

    def per_second(self) -> tuple[float, float]:
        """(requests/s, prompt tokens/s); (0, 0) before anything has started in the window."""
        now = self._now()
        while self._started and now - self._started[0][0] > self.window_s:
            self._started.popleft()
        span = min(self.window_s, now - self._since)
        if not self._started or span <= 0:
            return 0.0, 0.0
        return len(self._started) / span, sum(t for _, t in self._started) / span


@dataclass
class Ticket:
    """One admitted request's place in the queue: `started` at its first output, `close` when it ends."""

    queue: AdmissionQueue
    prompt_tokens: int
    waiting: bool = True

    def started(self) -> None:
        if self.waiting:
            self.close()
            self.queue.drain.record(self.prompt_tokens)

    def close(self) -> None:
        if self.waiting:
            self.waiting = False
            self.queue.waiting -= 1
            self.queue.waiting_tokens -= self.prompt_tokens


class AdmissionQueue:
    def __init__(
        self, max_waiting: int, max_waiting_tokens: int, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_waiting = max_waiting
        self.max_waiting_tokens = max_waiting_tokens
        self.waiting = 0
        self.waiting_tokens = 0
        self.drain = DrainRate(now=now)
        self._now = now
        self._told: list[float] = []  # when rejected clients were told to come back (a heap)

    def admit(self, prompt_tokens: int) -> Ticket:
        """A place in the queue, or RateLimited with the time the queue needs to make room."""
        over_requests = self.waiting + 1 - self.max_waiting
        over_tokens = self.waiting_tokens + prompt_tokens - self.max_waiting_tokens
        if self.waiting and (over_requests > 0 or over_tokens > 0):
            raise self._reject(over_requests, over_tokens)
        self.waiting += 1
        self.waiting_tokens += prompt_tokens
        return Ticket(self, prompt_tokens)

    @property
    def full(self) -> bool:
        return self.waiting >= self.max_waiting

    def refuse(self) -> RateLimited:
        """The rejection a request gets while the queue is full, whatever its size."""
        return self._reject(self.waiting + 1 - self.max_waiting, 0)

    def _reject(self, over_requests: int, over_tokens: int) -> RateLimited:
        now = self._now()
        while self._told and self._told[0] <= now:
            heapq.heappop(self._told)
        ahead = len(self._told)  # rejected clients due back before this one
        requests_per_s, tokens_per_s = self.drain.per_second()
        if requests_per_s == 0:
            requests_per_s, tokens_per_s = COLD_DRAIN_PER_S, 0.0
        wait = (max(over_requests, 1) + ahead) / requests_per_s
        if over_tokens > 0 and tokens_per_s > 0:
            wait = max(wait, over_tokens / tokens_per_s + ahead / requests_per_s)
        wait = min(wait, MAX_RETRY_AFTER_S)
        heapq.heappush(self._told, now + wait)
        if over_requests > 0:
            reason, what = (
                "queue_requests",
                f"{self.waiting} requests are waiting (the limit is {self.max_waiting})",
            )
        else:
            reason = "queue_tokens"
            what = f"{self.waiting_tokens} prompt tokens are waiting (the limit is {self.max_waiting_tokens})"
        return RateLimited(
            f"The server is at capacity: {what}. Retry after {wait:.1f} s.", reason, retry_after_s=wait
        )


class AdmissionMiddleware:
    """While the queue is full, refuses generation requests before their bodies are read, parsed and tokenized:
    under a burst of a thousand clients that work would hold the event loop the admitted streams need."""

    def __init__(self, app: ASGIApp, queue: AdmissionQueue, rejected: Callable[[str], None]) -> None:
        """rejected: counts a rejection by its reason."""
        self.app = app
        self.queue = queue
        self.rejected = rejected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        generation = scope["type"] == "http" and scope["path"] in GENERATION_PATHS
        if generation and scope["method"] == "POST" and self.queue.full:
            refusal = self.queue.refuse()
            self.rejected(refusal.reason)
            # The body stays unread, so the connection cannot carry another request.
            headers = {**refusal.headers, "Connection": "close"}
            await error_response(429, refusal.detail, headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)
