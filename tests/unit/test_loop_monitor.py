"""The event-loop lag monitor: a blocked loop shows up as lag, in the monitor and in the app's /metrics."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lpu_runtime import EngineStats, GenerationRequest, ModelInfo, RequestOutput
from server.app import create_app
from server.loop_monitor import LoopLagMonitor
from server.metrics import EVENT_LOOP_LAG_BUCKETS_SECONDS, ServerMetrics
from server.settings import Settings

BLOCK_S = 0.06  # far above an idle loop's lag (about 1 ms), far below anything that makes the test slow


async def _sample_around_a_block(monitor: LoopLagMonitor) -> None:
    monitor.start()
    await asyncio.sleep(0.03)  # a few unblocked samples first
    time.sleep(BLOCK_S)  # holds the loop: the sleeping monitor wakes BLOCK_S late
    await asyncio.sleep(0.03)
    await monitor.stop()


def test_a_blocked_loop_shows_up_as_lag() -> None:
    lags: list[float] = []
    monitor = LoopLagMonitor(lags.append, interval_s=0.005)
    asyncio.run(_sample_around_a_block(monitor))
    assert not monitor.running
    assert len(lags) >= 3
    assert all(lag >= 0 for lag in lags)
    assert max(lags) >= BLOCK_S - 0.005 - 0.002  # the block, less at most one interval already slept
    assert sorted(lags)[len(lags) // 2] < 0.03  # most samples are not the block


def test_the_lag_lands_in_the_histogram_buckets() -> None:
    metrics = ServerMetrics(max_users=5, snapshot=lambda: None)
    asyncio.run(_sample_around_a_block(LoopLagMonitor(metrics.event_loop_lag.observe)))
    registry = metrics.registry
    count = registry.get_sample_value("lpu_event_loop_lag_seconds_count")
    assert count is not None and count >= 3
    below = registry.get_sample_value("lpu_event_loop_lag_seconds_bucket", {"le": "0.04"})
    assert below is not None and below < count  # the blocked sample is above 40 ms


def test_buckets_resolve_a_p99_between_half_a_millisecond_and_100_ms() -> None:
    inside = [b for b in EVENT_LOOP_LAG_BUCKETS_SECONDS if 0.0005 <= b <= 0.1]
    assert inside[0] == 0.0005 and inside[-1] == 0.1
    assert all(hi / lo <= 2.0 for lo, hi in itertools.pairwise(inside))


def test_stop_without_start_and_a_bad_interval() -> None:
    asyncio.run(LoopLagMonitor(lambda _: None).stop())
    with pytest.raises(ValueError, match="interval_s"):
        LoopLagMonitor(lambda _: None, interval_s=0)


class _IdleEngine:
    """Just enough engine for the app's lifespan to attach: nothing is generated."""

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            id="idle", description="", max_context=16, vocab_size=8, n_params=0, n_chips=1, n_stages=1,
            chip_name="test", created=0,
        )  # fmt: skip

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def encode_chat(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        return [1]

    def encode_text(self, prompt: str) -> list[int]:
        return [1]

    @property
    def chat_template_text(self) -> str | None:
        return None

    def token_bytes(self, token_id: int) -> bytes:
        return b"x"

    def check_fits(self, n_prompt: int, max_tokens: int | None) -> None:
        pass

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        raise NotImplementedError
        yield  # pragma: no cover

    def abort(self, request_id: str) -> None:
        pass

    def stats(self) -> EngineStats:
        return EngineStats(
            running=0, waiting=0, kv_blocks_total=1, kv_blocks_used=0, emulated_cycles=0, steps=0
        )

    def is_healthy(self) -> bool:
        return True

    def abort_all(self) -> None:
        pass

    restarts = 0


def _lag_buckets(metrics_text: str) -> dict[str, float]:
    pattern = r'^lpu_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$'
    return {le: float(v) for le, v in re.findall(pattern, metrics_text, re.MULTILINE)}


def test_the_app_samples_its_loop_while_it_serves() -> None:
    app = create_app(Settings(), engine=_IdleEngine())
    with TestClient(app) as client:
        time.sleep(0.05)  # the loop runs in the client's portal thread, sampling meanwhile
        assert client.portal is not None
        client.portal.call(time.sleep, BLOCK_S)  # a blocking call on the app's own loop
        time.sleep(0.02)
        body = client.get("/metrics").text
    buckets = _lag_buckets(body)
    assert buckets["+Inf"] >= 3
    assert buckets["0.04"] < buckets["+Inf"]  # the blocked sample
