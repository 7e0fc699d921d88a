"""Per-app metrics: bounded user labels and the numbers each finished request leaves behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from lpu_runtime import (
    ChipStats,
    EmulatedTimings,
    EngineStats,
    FinishReason,
    HostTimings,
    ModelInfo,
    RequestOutput,
)
from server.metrics import (
    ANONYMOUS,
    MAX_USER_CHARS,
    OTHER,
    EngineSnapshot,
    ServerMetrics,
    UserLabels,
    sanitize_user,
)


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
    metrics = ServerMetrics(max_users=5, snapshot=lambda: None)
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
    tracker.on_abandoned()  # after the final output: nothing more to count

    assert sample(metrics, "lpu_requests_received_total") == 1
    assert sample(metrics, "lpu_generation_tokens_total") == 4
    assert sample(metrics, "lpu_prompt_tokens_total") == 10
    assert sample(metrics, "lpu_user_generation_tokens_total", {"user": "alice"}) == 4
    assert sample(metrics, "lpu_requests_finished_total", {"finish_reason": "length"}) == 1
    assert sample(metrics, "lpu_requests_finished_total", {"finish_reason": "stop"}) == 0
    assert sample(metrics, "lpu_requests_finished_total", {"finish_reason": "abort"}) == 0
    assert sample(metrics, "lpu_user_generation_tokens_per_second", {"user": "alice"}) == 3 / 0.3
    emulated_tps = 3 / (2700 / 900_000)
    assert sample(metrics, "lpu_user_emulated_tokens_per_second", {"user": "alice"}) == emulated_tps
    assert sample(metrics, "lpu_time_to_first_token_seconds_count") == 1
    assert sample(metrics, "lpu_time_to_first_token_seconds_sum") == pytest.approx(0.05)
    assert sample(metrics, "lpu_inter_token_latency_seconds_count") == 3
    assert sample(metrics, "lpu_inter_token_latency_seconds_sum") == pytest.approx(0.375)
    assert sample(metrics, "lpu_inter_token_latency_seconds_bucket", {"le": "0.1"}) == 0
    assert sample(metrics, "lpu_inter_token_latency_seconds_bucket", {"le": "0.25"}) == 3
    assert sample(metrics, "lpu_request_queue_time_seconds_sum") == pytest.approx(0.01)
    assert sample(metrics, "lpu_request_prefill_time_seconds_sum") == pytest.approx(0.04)
    assert sample(metrics, "lpu_request_decode_time_seconds_sum") == pytest.approx(0.3)
    assert sample(metrics, "lpu_e2e_request_latency_seconds_sum") == pytest.approx(0.35)
    assert sample(metrics, "lpu_request_decode_tokens_per_second_sum") == pytest.approx(10.0)
    assert sample(metrics, "lpu_request_decode_tokens_per_second_bucket", {"le": "10.0"}) == 1
    assert sample(metrics, "lpu_request_decode_tokens_per_second_bucket", {"le": "5.0"}) == 0
    assert sample(metrics, "lpu_request_emulated_decode_tokens_per_second_sum") == pytest.approx(emulated_tps)
    assert sample(metrics, "lpu_request_prompt_tokens_sum") == 10
    assert sample(metrics, "lpu_request_generation_tokens_sum") == 4


def test_an_abandoned_request_counts_as_abort_once() -> None:
    metrics = ServerMetrics(max_users=5, snapshot=lambda: None)
    tracker = metrics.track(None)
    tracker.on_output(_output(3, False, completion_tokens=3))
    tracker.on_abandoned()
    tracker.on_abandoned()
    assert sample(metrics, "lpu_requests_finished_total", {"finish_reason": "abort"}) == 1
    assert sample(metrics, "lpu_user_generation_tokens_total", {"user": ANONYMOUS}) == 3
    assert sample(metrics, "lpu_time_to_first_token_seconds_count") == 0  # no final output, no timings


def test_histograms_carry_no_user_label() -> None:
    metrics = ServerMetrics(max_users=5, snapshot=lambda: None)
    for family in metrics.registry.collect():
        if family.type == "histogram":
            assert all("user" not in s.labels for s in family.samples), family.name


def _snapshot() -> EngineSnapshot:
    chips = tuple(
        ChipStats(chip_id=i, capacity_bytes=1000, weight_bytes=300, kv_bytes=200, buffer_bytes=10,
                  kv_used_bytes=50, busy_cycles=7 * i, stage=i // 2)
        for i in range(4)
    )  # fmt: skip
    stats = EngineStats(running=2, waiting=1, kv_blocks_total=64, kv_blocks_used=16, emulated_cycles=1000,
                        steps=17, chips=chips, clock_hz=900_000_000, stage_busy_cycles=(400, 500),
                        link_cycles=100, micro_batches=40)  # fmt: skip
    model = ModelInfo(id="m", description="", max_context=256, vocab_size=259, n_params=1, n_chips=4,
                      n_stages=2, chip_name="GroqChip1", created=0)  # fmt: skip
    return EngineSnapshot(stats, model, "served/m")


def test_engine_gauges_are_read_at_scrape_time() -> None:
    current: list[EngineSnapshot | None] = [None]
    metrics = ServerMetrics(max_users=5, snapshot=lambda: current[0], version="1.2.3")
    assert sample(metrics, "lpu_requests_running") is None  # no engine yet: nothing exported
    assert sample(metrics, "lpu_build_info", {"version": "1.2.3"}) is None

    current[0] = _snapshot()
    assert sample(metrics, "lpu_requests_running") == 2
    assert sample(metrics, "lpu_requests_waiting") == 1
    assert sample(metrics, "lpu_kv_cache_used_blocks") == 16
    assert sample(metrics, "lpu_kv_cache_capacity_blocks") == 64
    assert sample(metrics, "lpu_kv_cache_usage_ratio") == 0.25
    assert sample(metrics, "lpu_emulated_cycles_total") == 1000
    assert sample(metrics, "lpu_engine_steps_total") == 17
    assert sample(metrics, "lpu_pipeline_micro_batches_total") == 40
    assert sample(metrics, "lpu_emulated_clock_hertz") == 900_000_000
    assert sample(metrics, "lpu_pipeline_stage_busy_cycles_total", {"stage": "0"}) == 400
    assert sample(metrics, "lpu_pipeline_stage_busy_cycles_total", {"stage": "1"}) == 500
    assert sample(metrics, "lpu_pipeline_link_cycles_total") == 100
    build = {"version": "1.2.3", "model": "m", "served_model_name": "served/m", "chips": "4", "stages": "2",
             "chip_name": "GroqChip1"}  # fmt: skip
    assert sample(metrics, "lpu_build_info", build) == 1
    for i in range(4):
        chip = {"chip": str(i), "stage": str(i // 2)}
        regions = {r: sample(metrics, "lpu_chip_sram_used_bytes", {**chip, "region": r})
                   for r in ("weights", "kv_cache", "buffers")}  # fmt: skip
        assert regions == {"weights": 300, "kv_cache": 200, "buffers": 10}
        assert sample(metrics, "lpu_chip_sram_capacity_bytes", chip) == 1000
        assert sample(metrics, "lpu_chip_kv_cache_used_bytes", chip) == 50
        assert sample(metrics, "lpu_chip_busy_cycles_total", chip) == 7 * i
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE lpu_emulated_cycles_total counter" in text
    assert "process_cpu_seconds_total" in text and "python_info" in text  # in the app's own registry


def test_two_apps_do_not_share_series() -> None:
    first = ServerMetrics(max_users=5, snapshot=lambda: None)
    second = ServerMetrics(max_users=5, snapshot=lambda: None)
    first.track("a").on_output(_output(2, False, completion_tokens=2))
    assert sample(first, "lpu_generation_tokens_total") == 2
    assert sample(second, "lpu_generation_tokens_total") == 0


def test_every_exported_family_is_documented_and_every_documented_one_exported() -> None:
    """docs/metrics.md and the registry list the same lpu_ families (a rename must touch both)."""
    metrics = ServerMetrics(max_users=5, snapshot=_snapshot)
    exported = set()
    for family in metrics.registry.collect():
        if family.name.startswith("lpu_"):
            exported.add(family.name + ("_total" if family.type == "counter" else ""))
    docs = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
    documented = {name for name in re.findall(r"^\| `(lpu_[a-z0-9_]+)` \|", docs.read_text(), re.MULTILINE)}
    assert exported == documented


def test_names_follow_prometheus_conventions() -> None:
    metrics = ServerMetrics(max_users=5, snapshot=_snapshot)
    units = ("_seconds", "_bytes", "_cycles", "_hertz", "_ratio", "_tokens", "_blocks", "_per_second")
    for family in metrics.registry.collect():
        if not family.name.startswith("lpu_"):
            continue
        name = family.name
        if family.type == "counter":
            assert not name.endswith("_total")  # the client appends it to the sample
        else:
            assert not name.endswith("_total"), f"{name}: _total is for counters"
        if family.type == "histogram":
            assert name.endswith(units), f"{name}: a histogram's name ends with its unit"
