"""/metrics after real traffic: per-user speeds, counters, histograms, per-chip SRAM, bounded user labels."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.support import Server, sample


def _chat(server: Server, user: str, max_tokens: int = 8) -> None:
    body = {
        "model": server.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens,
        "ignore_eos": True, "user": user,
    }  # fmt: skip
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def alice_and_bob(server: Server) -> None:
    """alice and bob are served before any test floods the user label, so both have their own series."""
    _chat(server, "alice")
    _chat(server, "bob")


def test_per_user_speeds_and_counters(server: Server, alice_and_bob: None) -> None:
    samples = server.scrape()
    for user in ("alice", "bob"):
        assert (sample(samples, "lpu_user_generation_tokens_per_second", user=user) or 0) > 0, user
        assert (sample(samples, "lpu_user_emulated_tokens_per_second", user=user) or 0) > 0, user
        assert (sample(samples, "lpu_user_generation_tokens_total", user=user) or 0) >= 8, user
    assert (sample(samples, "lpu_generation_tokens_total") or 0) >= 16
    assert (sample(samples, "lpu_prompt_tokens_total") or 0) > 0
    assert (sample(samples, "lpu_requests_finished_total", finish_reason="length") or 0) >= 2


def test_counters_grow_by_what_a_request_generated(server: Server, alice_and_bob: None) -> None:
    server.wait_until_idle()
    before = server.scrape()
    _chat(server, "alice", max_tokens=5)
    after = server.scrape()

    def grew(name: str, **labels: str) -> float:
        return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert grew("lpu_generation_tokens_total") == 5
    assert grew("lpu_user_generation_tokens_total", user="alice") == 5
    assert grew("lpu_requests_finished_total", finish_reason="length") == 1
    assert grew("lpu_time_to_first_token_seconds_count") == 1
    assert grew("lpu_inter_token_latency_seconds_count") == 4  # gaps between 5 tokens
    assert grew("lpu_emulated_cycles_total") > 0
    assert grew("lpu_requests_received_total") == 1
    for histogram in (
        "lpu_e2e_request_latency_seconds", "lpu_request_queue_time_seconds", "lpu_request_prefill_time_seconds",
        "lpu_request_decode_time_seconds", "lpu_request_decode_tokens_per_second",
        "lpu_request_emulated_decode_tokens_per_second", "lpu_request_prompt_tokens",
        "lpu_request_generation_tokens",
    ):  # fmt: skip
        assert grew(f"{histogram}_count") == 1, histogram
    assert grew("lpu_request_generation_tokens_sum") == 5


def test_histograms_have_millisecond_to_minute_buckets(server: Server, alice_and_bob: None) -> None:
    samples = server.scrape()
    for name in ("lpu_time_to_first_token_seconds", "lpu_inter_token_latency_seconds"):
        assert sample(samples, f"{name}_bucket", le="0.001") is not None
        assert sample(samples, f"{name}_bucket", le="60.0") is not None
        assert (sample(samples, f"{name}_count") or 0) > 0
        assert sample(samples, f"{name}_bucket", le="+Inf") == sample(samples, f"{name}_count")


def test_engine_gauges_per_chip(server: Server, alice_and_bob: None) -> None:
    samples = server.scrape()
    for chip in range(server.chips):
        by_region = {
            dict(labels)["region"]: value
            for (name, labels), value in samples.items()
            if name == "lpu_chip_sram_used_bytes" and dict(labels)["chip"] == str(chip)
        }
        capacity = next(
            value
            for (name, labels), value in samples.items()
            if name == "lpu_chip_sram_capacity_bytes" and dict(labels)["chip"] == str(chip)
        )
        assert set(by_region) == {"weights", "kv_cache", "buffers"}, chip
        assert by_region["weights"] > 0 and 0 < sum(by_region.values()) <= capacity, chip
    chips = {dict(labels)["chip"] for (name, labels) in samples if name == "lpu_chip_sram_capacity_bytes"}
    assert chips == {str(c) for c in range(server.chips)}
    assert sample(samples, "lpu_requests_running") is not None
    assert sample(samples, "lpu_requests_waiting") is not None
    assert (sample(samples, "lpu_kv_cache_capacity_blocks") or 0) > 0
    assert sample(samples, "lpu_kv_cache_used_blocks") is not None
    usage = sample(samples, "lpu_kv_cache_usage_ratio")
    assert usage is not None and 0 <= usage <= 1
    stages = [value for (name, _), value in samples.items() if name == "lpu_pipeline_stage_busy_cycles_total"]
    cycles = sample(samples, "lpu_emulated_cycles_total") or 0
    assert len(stages) == 4 and all(0 < s < cycles for s in stages)
    # A lone sequence's step costs its stages plus its hops, so over one request alone the occupancies are
    # fractions that add up with the links (concurrent requests' micro-batches overlap on the stages).
    server.wait_until_idle()
    before = server.scrape()
    _chat(server, "alice", max_tokens=3)
    after = server.scrape()

    def grew(name: str) -> float:
        return sum(v for (n, _), v in after.items() if n == name) - sum(
            v for (n, _), v in before.items() if n == name
        )

    busy, links = grew("lpu_pipeline_stage_busy_cycles_total"), grew("lpu_pipeline_link_cycles_total")
    assert busy > 0 and busy + links == grew("lpu_emulated_cycles_total")
    build = [dict(labels) for (name, labels) in samples if name == "lpu_build_info"]
    assert len(build) == 1 and build[0]["chips"] == str(server.chips) and build[0]["model"] == server.model


def test_user_label_is_bounded(server: Server, alice_and_bob: None) -> None:
    for i in range(server.metrics_max_users + 3):
        _chat(server, f"flood-{i}", max_tokens=2)
    samples = server.scrape()
    users = {dict(labels)["user"] for (name, labels) in samples if name == "lpu_user_generation_tokens_total"}
    # at most max_users named users, plus the reserved 'anonymous' and 'other'
    assert len(users - {"anonymous", "other"}) == server.metrics_max_users
    assert "other" in users and {"alice", "bob"} <= users
    assert (sample(samples, "lpu_user_generation_tokens_total", user="other") or 0) >= 2


def test_series_count_stays_bounded_under_many_users(server: Server, alice_and_bob: None) -> None:
    """Every series in /metrics, counted before and after a flood of new users: the user label is full
    (previous test or this one), so new users add no series at all."""
    for i in range(server.metrics_max_users + 1):
        _chat(server, f"fill-{i}", max_tokens=2)
    before = server.scrape()
    for i in range(3 * server.metrics_max_users):
        _chat(server, f"flood-more-{i}", max_tokens=2)
    after = server.scrape()
    assert set(after) == set(before)
    user_series = [key for key in after if any(label == "user" for label, _ in key[1])]
    # the user's token counter (and its _created timestamp), host and emulated speeds; no histogram
    per_user_families = 4
    assert {name for name, _ in user_series} == {
        "lpu_user_generation_tokens_total", "lpu_user_generation_tokens_per_second",
        "lpu_user_emulated_tokens_per_second", "lpu_user_generation_tokens_created",
    }  # fmt: skip
    assert len(user_series) <= per_user_families * (server.metrics_max_users + 2)  # + anonymous, other
