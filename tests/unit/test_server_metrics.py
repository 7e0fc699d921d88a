"""Per-app metrics: bounded user labels and the numbers each finished request leaves behind."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from lpu_runtime import (
    ChipStats,
    EmulatedTimings,
    EngineStats,
    FinishReason,
    HostTimings,
    RequestOutput,
)
from server.metrics import ANONYMOUS, MAX_USER_CHARS, OTHER, ServerMetrics, UserLabels, sanitize_user


def test_user_labels_are_first_come_and_bounded() -> None:
    labels = UserLabels(max_users=2)
    assert [labels.label(u) for u in ("alice", "bob", "carol", "alice", None, "dave")] == [
        "alice", "bob", OTHER, "alice", ANONYMOUS, OTHER,
    ]  # fmt: skip


def test_thousands_of_users_make_a_bounded_set_of_labels() -> None:
    labels = UserLabels(max_users=50)
    assert len({labels.label(f"user-{i}") for i in range(5000)}) == 51  # 50 users + other


def test_user_strings_are_sanitised() -> None:
    assert sanitize_user(None) == ANONYMOUS
    assert sanitize_user("   ") == ANONYMOUS
    assert sanitize_user("a\nb\x00c") == "abc"
    assert len(sanitize_user("x" * 10_000)) == MAX_USER_CHARS


def _output(tokens: int, finished: bool, *, completion_tokens: int, **kw: object) -> RequestOutput:
    return RequestOutput(
        request_id="r",
        new_token_ids=tuple(range(tokens)),
        new_text="x" * tokens,
        prompt_tokens=10,
        completion_tokens=completion_tokens,
        finished=finished,
        **kw,  # type: ignore[arg-type]
    )


def sample(metrics: ServerMetrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    value = metrics.registry.get_sample_value(name, labels or {})
    return value


def test_a_finished_request_updates_counters_gauges_and_histograms() -> None:
    metrics = ServerMetrics(max_users=5, engine_stats=lambda: None)
    tracker = metrics.track("alice")
    tracker.on_output(_output(1, False, completion_tokens=1), now=100.0)
    tracker.on_output(_output(2, False, completion_tokens=3), now=100.25)  # two tokens share 0.25 s
    final = _output(
        1, True, completion_tokens=4, finish_reason=FinishReason.LENGTH,
        host=HostTimings(queue_time=0.01, prompt_time=0.04, completion_time=0.3),
        emulated=EmulatedTimings(
            prompt_cycles=900, completion_cycles=2700, clock_hz=900_000, n_chips=4, n_stages=4
        ),
    )  # fmt: skip
    tracker.on_output(final, now=100.375)

    assert sample(metrics, "lpu_generation_tokens_total") == 4
    assert sample(metrics, "lpu_prompt_tokens_total") == 10
    assert sample(metrics, "lpu_user_generation_tokens_total", {"user": "alice"}) == 4
    assert sample(metrics, "lpu_requests_total", {"finish_reason": "length"}) == 1
    assert sample(metrics, "lpu_requests_total", {"finish_reason": "stop"}) == 0
    assert sample(metrics, "lpu_user_generation_tokens_per_second", {"user": "alice"}) == 3 / 0.3
    assert sample(metrics, "lpu_user_emulated_tokens_per_second", {"user": "alice"}) == 3 / (2700 / 900_000)
    assert sample(metrics, "lpu_time_to_first_token_seconds_count") == 1
    assert sample(metrics, "lpu_time_to_first_token_seconds_sum") == pytest.approx(0.05)
    assert sample(metrics, "lpu_inter_token_latency_seconds_count") == 3
    assert sample(metrics, "lpu_inter_token_latency_seconds_sum") == pytest.approx(0.375)
    assert sample(metrics, "lpu_inter_token_latency_seconds_bucket", {"le": "0.1"}) == 0
    assert sample(metrics, "lpu_inter_token_latency_seconds_bucket", {"le": "0.25"}) == 3


def test_an_abandoned_request_counts_as_abort_once() -> None:
    metrics = ServerMetrics(max_users=5, engine_stats=lambda: None)
    tracker = metrics.track(None)
    tracker.on_output(_output(3, False, completion_tokens=3))
    tracker.on_abandoned()
    tracker.on_abandoned()
    assert sample(metrics, "lpu_requests_total", {"finish_reason": "abort"}) == 1
    assert sample(metrics, "lpu_user_generation_tokens_total", {"user": ANONYMOUS}) == 3


def test_engine_gauges_are_read_at_scrape_time() -> None:
    chips = tuple(
        ChipStats(chip_id=i, capacity_bytes=1000, weight_bytes=300, kv_bytes=200, buffer_bytes=10,
                  kv_used_bytes=5, busy_cycles=7 * i)
        for i in range(3)
    )  # fmt: skip
    stats = EngineStats(running=2, waiting=1, kv_blocks_total=64, kv_blocks_used=9, emulated_cycles=12345,
                        steps=17, chips=chips)  # fmt: skip
    current: list[EngineStats | None] = [None]
    metrics = ServerMetrics(max_users=5, engine_stats=lambda: current[0])
    assert sample(metrics, "lpu_requests_running") is None  # no engine yet: nothing exported

    current[0] = stats
    assert sample(metrics, "lpu_requests_running") == 2
    assert sample(metrics, "lpu_requests_waiting") == 1
    assert sample(metrics, "lpu_kv_cache_blocks_used") == 9
    assert sample(metrics, "lpu_kv_cache_blocks_total") == 64
    assert sample(metrics, "lpu_emulated_cycles_total") == 12345
    for i in range(3):
        assert sample(metrics, "lpu_chip_sram_used_bytes", {"chip": str(i)}) == 510
        assert sample(metrics, "lpu_chip_sram_capacity_bytes", {"chip": str(i)}) == 1000
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE lpu_emulated_cycles_total counter" in text


def test_two_apps_do_not_share_series() -> None:
    first = ServerMetrics(max_users=5, engine_stats=lambda: None)
    second = ServerMetrics(max_users=5, engine_stats=lambda: None)
    first.track("a").on_output(_output(2, False, completion_tokens=2))
    assert sample(first, "lpu_generation_tokens_total") == 2
    assert sample(second, "lpu_generation_tokens_total") == 0
