"""Admission queue bounds and Retry-After, per-key limits and their headers, on a fake clock."""

from __future__ import annotations

import pytest

from server.admission import COLD_DRAIN_PER_S, MAX_RETRY_AFTER_S, AdmissionQueue, RateLimited
from server.limits import KeyLimits, duration


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_queue_is_bounded_in_requests_and_gives_places_back() -> None:
    queue = AdmissionQueue(max_waiting=2, max_waiting_tokens=1000, now=Clock())
    first, second = queue.admit(10), queue.admit(10)
    with pytest.raises(RateLimited) as refused:
        queue.admit(10)
    assert refused.value.status_code == 429 and refused.value.reason == "queue_requests"
    assert refused.value.detail.code == "rate_limit_exceeded"
    first.started()
    second.close()
    assert (queue.waiting, queue.waiting_tokens) == (0, 0)
    queue.admit(10)


def test_the_token_bound_refuses_a_crowd_but_never_a_lone_large_prompt() -> None:
    queue = AdmissionQueue(max_waiting=10, max_waiting_tokens=100, now=Clock())
    big = queue.admit(500)  # alone: slow, not refused for ever
    with pytest.raises(RateLimited) as refused:
        queue.admit(1)
    assert refused.value.reason == "queue_tokens"
    big.close()


def test_retry_after_follows_the_drain_rate_and_spreads_a_burst() -> None:
    clock = Clock()
    queue = AdmissionQueue(max_waiting=1, max_waiting_tokens=10_000, now=clock)
    cold = queue.admit(10)
    with pytest.raises(RateLimited) as before_any_start:
        queue.admit(10)
    assert float(before_any_start.value.headers["retry-after-ms"]) == pytest.approx(1000 / COLD_DRAIN_PER_S)
    cold.started()
    for _ in range(20):  # 4 requests/s for 5 s
        clock.t += 0.25
        queue.admit(10).started()
    queue.admit(10)  # the one place is taken again
    waits = []
    for _ in range(3):
        with pytest.raises(RateLimited) as refused:
            queue.admit(10)
        waits.append(int(refused.value.headers["retry-after-ms"]))
    assert waits[0] == pytest.approx(1000 / 4, rel=0.3)  # one place, 4 requests/s
    assert waits[0] < waits[1] < waits[2]  # each later client is told to come after the ones before it
    assert all(w <= MAX_RETRY_AFTER_S * 1000 for w in waits)


def test_a_key_runs_at_most_its_concurrency_and_reports_it() -> None:
    limits = KeyLimits(max_concurrency=2, tokens_per_minute=None, now=Clock())
    first = limits.acquire("alice", 5)
    assert first.headers == {"x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "1"}
    limits.acquire("alice", 5)
    limits.acquire("bob", 5)  # another key's own allowance
    with pytest.raises(RateLimited) as refused:
        limits.acquire("alice", 5)
    assert refused.value.reason == "key_concurrency"
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    first.release(3)
    first.release(3)  # once only
    limits.acquire("alice", 5)


def test_tokens_per_minute_refill_and_generated_tokens_overdraw() -> None:
    clock = Clock()
    limits = KeyLimits(max_concurrency=None, tokens_per_minute=600, now=clock)  # 10 tokens/s
    lease = limits.acquire(None, 100)
    assert lease.headers["x-ratelimit-remaining-tokens"] == "500"
    assert lease.headers["x-ratelimit-reset-tokens"] == "10s"
    lease.release(700)  # 100 + 700 used: the bucket is 200 below zero
    with pytest.raises(RateLimited) as refused:
        limits.acquire(None, 1)
    assert refused.value.reason == "key_tokens"
    assert float(refused.value.headers["retry-after-ms"]) == pytest.approx(20_000, rel=0.01)
    clock.t += 21
    limits.acquire(None, 1)


def test_durations_read_like_openais() -> None:
    assert [duration(s) for s in (0.0175, 6, 90, 3600)] == ["18ms", "6s", "1m30s", "60m0s"]
