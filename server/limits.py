"""Optional per-API-key limits: requests running at once and tokens per minute, reported as OpenAI and Groq do.

Each key (by name; the unnamed key and unauthenticated requests share one allowance) has a concurrency limit
and a token bucket that holds `tokens_per_minute` and refills continuously. Admission takes the prompt's tokens,
the request's end takes its generated ones; the bucket may go below zero, so a key that just generated a long
answer waits until the refill has paid for it. Every response carries the `x-ratelimit-*` headers:
`-limit-requests` / `-remaining-requests` are the concurrency limit and the slots left (OpenAI's are per
minute), `-limit-tokens` / `-remaining-tokens` / `-reset-tokens` the bucket and the time until it is full.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from server.admission import RateLimited

SHARED = ""  # the allowance of requests without a named key


def duration(seconds: float) -> str:
    """OpenAI's reset format: 120ms, 6s, 1m30s."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass
class _Allowance:
    tokens: float  # what the bucket holds (may be negative)
    updated: float
    running: int = 0


@dataclass
class Lease:
    """A key's admitted request; `release` with its generated tokens when it ends (once)."""

    limits: KeyLimits
    key: str
    headers: dict[str, str] = field(default_factory=dict)
    released: bool = False

    def release(self, generated_tokens: int) -> None:
        if not self.released:
            self.released = True
            self.limits.end(self.key, generated_tokens)


class KeyLimits:
    def __init__(
        self,
        max_concurrency: int | None,
        tokens_per_minute: int | None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.tokens_per_minute = tokens_per_minute
        self._now = now
        self._keys: dict[str, _Allowance] = {}

    @property
    def enabled(self) -> bool:
        return self.max_concurrency is not None or self.tokens_per_minute is not None

    def acquire(self, key: str | None, prompt_tokens: int) -> Lease:
        """Admits a request of `key` (None: the shared allowance) or raises RateLimited."""
        name = key or SHARED
        allowance = self._refilled(name)
        if self.max_concurrency is not None and allowance.running >= self.max_concurrency:
            raise RateLimited(
                f"Rate limit reached: this API key already has {allowance.running} requests running (the limit "
                f"is {self.max_concurrency}); retry when one finishes.",
                "key_concurrency",
                retry_after_s=1.0,
                headers=self._headers(allowance),
            )
        if self.tokens_per_minute is not None and allowance.tokens <= 0:
            wait = -allowance.tokens / self._refill_per_s + 0.001
            raise RateLimited(
                f"Rate limit reached: this API key used its {self.tokens_per_minute} tokens per minute; retry "
                f"in {wait:.1f} s.",
                "key_tokens",
                retry_after_s=wait,
                headers=self._headers(allowance),
            )
        allowance.running += 1
        if self.tokens_per_minute is not None:
            allowance.tokens -= prompt_tokens
        return Lease(self, name, self._headers(allowance))

    def end(self, key: str, generated_tokens: int) -> None:
        allowance = self._refilled(key)
        allowance.running -= 1
        if self.tokens_per_minute is not None:
            allowance.tokens -= generated_tokens

    @property
    def _refill_per_s(self) -> float:
        assert self.tokens_per_minute is not None
        return self.tokens_per_minute / 60.0

    def _refilled(self, key: str) -> _Allowance:
        now = self._now()
        allowance = self._keys.get(key)
        if allowance is None:
            allowance = self._keys[key] = _Allowance(float(self.tokens_per_minute or 0), now)
        elif self.tokens_per_minute is not None:
            refill = (now - allowance.updated) * self._refill_per_s
            allowance.tokens = min(float(self.tokens_per_minute), allowance.tokens + refill)
        allowance.updated = now
        return allowance

    def _headers(self, allowance: _Allowance) -> dict[str, str]:
        headers = {}
        if self.max_concurrency is not None:
            headers["x-ratelimit-limit-requests"] = str(self.max_concurrency)
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.max_concurrency - allowance.running))
        if self.tokens_per_minute is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.tokens_per_minute)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, math.floor(allowance.tokens)))
            missing = self.tokens_per_minute - allowance.tokens
            headers["x-ratelimit-reset-tokens"] = duration(missing / self._refill_per_s)
        return headers
