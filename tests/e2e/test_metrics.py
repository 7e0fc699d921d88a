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
    assert (sample(samples, "lpu_requests_total", finish_reason="length") or 0) >= 2


def test_counters_grow_by_what_a_request_generated(server: Server, alice_and_bob: None) -> None:
    server.wait_until_idle()
    before = server.scrape()
    _chat(server, "alice", max_tokens=5)
    after = server.scrape()

    def grew(name: str, **labels: str) -> float:
        return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert grew("lpu_generation_tokens_total") == 5
    assert grew("lpu_user_generation_tokens_total", user="alice") == 5
    assert grew("lpu_requests_total", finish_reason="length") == 1
    assert grew("lpu_time_to_first_token_seconds_count") == 1
    assert grew("lpu_inter_token_latency_seconds_count") == 4  # gaps between 5 tokens
    assert grew("lpu_emulated_cycles_total") > 0


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
        used = sample(samples, "lpu_chip_sram_used_bytes", chip=str(chip))
        capacity = sample(samples, "lpu_chip_sram_capacity_bytes", chip=str(chip))
        assert used is not None and capacity is not None and 0 < used <= capacity, chip
    assert sample(samples, "lpu_chip_sram_used_bytes", chip=str(server.chips)) is None
    assert sample(samples, "lpu_requests_running") is not None
    assert sample(samples, "lpu_requests_waiting") is not None
    assert (sample(samples, "lpu_kv_cache_blocks_total") or 0) > 0
    assert sample(samples, "lpu_kv_cache_blocks_used") is not None


def test_user_label_is_bounded(server: Server, alice_and_bob: None) -> None:
    for i in range(server.metrics_max_users + 3):
        _chat(server, f"flood-{i}", max_tokens=2)
    samples = server.scrape()
    users = {dict(labels)["user"] for (name, labels) in samples if name == "lpu_user_generation_tokens_total"}
    # at most max_users named users, plus the reserved 'anonymous' and 'other'
    assert len(users - {"anonymous", "other"}) == server.metrics_max_users
    assert "other" in users and {"alice", "bob"} <= users
    assert (sample(samples, "lpu_user_generation_tokens_total", user="other") or 0) >= 2
