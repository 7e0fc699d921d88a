"""Prometheus metrics in a registry owned by one app, so two apps in a process (tests) never share series.

Request metrics are updated as outputs stream through the server; engine gauges are read from
`engine.stats()` when Prometheus scrapes, so they are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lpu_runtime import EngineStats, FinishReason, RequestOutput

ANONYMOUS = "anonymous"
OTHER = "other"
MAX_USER_CHARS = 64

# From 1 ms (an emulated LPU answers in microseconds, the host in milliseconds) to 60 s (a long prompt on a
# busy 2-core CPU), so both ends land in a resolved bucket rather than +Inf.
LATENCY_BUCKETS_SECONDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip


def sanitize_user(user: str | None) -> str:
    """A label value from the request's `user` field: printable, trimmed and capped; absent or blank is
    anonymous."""
    if user is None:
        return ANONYMOUS
    cleaned = "".join(ch for ch in user if ch.isprintable()).strip()[:MAX_USER_CHARS]
    return cleaned or ANONYMOUS


class UserLabels:
    """Hands out at most `max_users` distinct user labels, first come first served; later users share `other`.

    The `user` field is client-controlled, so without a bound any client could create series until the
    Prometheus server falls over. `anonymous` and `other` are always available and do not count.
    """

    def __init__(self, max_users: int) -> None:
        self.max_users = max_users
        self._admitted: set[str] = set()

    def label(self, user: str | None) -> str:
        name = sanitize_user(user)
        if name in (ANONYMOUS, OTHER) or name in self._admitted:
            return name
        if len(self._admitted) < self.max_users:
            self._admitted.add(name)
            return name
        return OTHER


class EngineCollector(Collector):
    """Engine gauges read at scrape time; nothing is exported until the engine exists."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._stats())

    @staticmethod
    def _families(stats: EngineStats | None) -> Iterator[Metric]:
        running = GaugeMetricFamily("lpu_requests_running", "Requests in the engine's running batch")
        waiting = GaugeMetricFamily("lpu_requests_waiting", "Requests queued for admission")
        kv_used = GaugeMetricFamily("lpu_kv_cache_blocks_used", "KV-cache blocks held by running requests")
        kv_total = GaugeMetricFamily("lpu_kv_cache_blocks_total", "KV-cache blocks the system can hold")
        cycles = CounterMetricFamily("lpu_emulated_cycles", "Cycles of the emulated LPU clock since start")
        steps = CounterMetricFamily("lpu_engine_steps", "Engine steps executed since start")
        sram_used = GaugeMetricFamily(
            "lpu_chip_sram_used_bytes",
            "SRAM allocated on a chip (weights, KV reservation, buffers)",
            labels=["chip"],
        )
        sram_capacity = GaugeMetricFamily("lpu_chip_sram_capacity_bytes", "SRAM on a chip", labels=["chip"])
        busy = CounterMetricFamily("lpu_chip_busy_cycles", "Cycles a chip spent computing", labels=["chip"])
        if stats is not None:
            running.add_metric([], stats.running)
            waiting.add_metric([], stats.waiting)
            kv_used.add_metric([], stats.kv_blocks_used)
            kv_total.add_metric([], stats.kv_blocks_total)
            cycles.add_metric([], stats.emulated_cycles)
            steps.add_metric([], stats.steps)
            for chip in stats.chips:
                label = [str(chip.chip_id)]
                sram_used.add_metric(label, chip.used_bytes)
                sram_capacity.add_metric(label, chip.capacity_bytes)
                busy.add_metric(label, chip.busy_cycles)
        yield from (running, waiting, kv_used, kv_total, cycles, steps, sram_used, sram_capacity, busy)


class ServerMetrics:
    def __init__(self, max_users: int, engine_stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry()
        self.users = UserLabels(max_users)
        r = self.registry
        self.user_tokens_per_second = Gauge(
            "lpu_user_generation_tokens_per_second",
            "Host wall-clock decode speed of the user's latest finished request: (tokens-1)/completion time",
            ["user"], registry=r,
        )  # fmt: skip
        self.user_emulated_tokens_per_second = Gauge(
            "lpu_user_emulated_tokens_per_second",
            "Decode speed the emulated LPU would give the user's latest finished request",
            ["user"], registry=r,
        )  # fmt: skip
        self.user_tokens = Counter(
            "lpu_user_generation_tokens", "Tokens generated for a user", ["user"], registry=r
        )
        self.generation_tokens = Counter("lpu_generation_tokens", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("lpu_prompt_tokens", "Prompt tokens processed", registry=r)
        self.requests = Counter(
            "lpu_requests", "Finished requests by finish reason", ["finish_reason"], registry=r
        )
        for reason in FinishReason:
            self.requests.labels(reason.value)  # export zeros so rate() works from the first request
        self.time_to_first_token = Histogram(
            "lpu_time_to_first_token_seconds",
            "Host seconds from arrival at the engine to the first token",
            buckets=LATENCY_BUCKETS_SECONDS, registry=r,
        )  # fmt: skip
        self.inter_token_latency = Histogram(
            "lpu_inter_token_latency_seconds",
            "Host seconds between consecutive tokens of a request, as the server streams them",
            buckets=LATENCY_BUCKETS_SECONDS, registry=r,
        )  # fmt: skip
        r.register(EngineCollector(engine_stats))

    def track(self, user: str | None) -> RequestTracker:
        return RequestTracker(self, self.users.label(user))


class RequestTracker:
    """Follows one request's outputs and turns them into metric updates."""

    def __init__(self, metrics: ServerMetrics, user_label: str) -> None:
        self._m = metrics
        self.user_label = user_label
        self._last_token_at: float | None = None
        self._done = False

    def on_output(self, output: RequestOutput, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        n_new = len(output.new_token_ids)
        if self._last_token_at is None and n_new:
            self._m.prompt_tokens.inc(output.prompt_tokens)
            n_gaps = n_new - 1  # the first token has no predecessor
        else:
            n_gaps = n_new
        if n_gaps > 0 and self._last_token_at is not None:
            gap = (now - self._last_token_at) / n_gaps  # tokens that arrive together share the interval
            for _ in range(n_gaps):
                self._m.inter_token_latency.observe(gap)
        if n_new:
            self._last_token_at = now
            self._m.generation_tokens.inc(n_new)
            self._m.user_tokens.labels(self.user_label).inc(n_new)
        if output.finished:
            self._finish(output)

    def on_abandoned(self, reason: FinishReason = FinishReason.ABORT) -> None:
        """The server stopped following the request before its final output (client gone, or a failure)."""
        if not self._done:
            self._done = True
            self._m.requests.labels(reason.value).inc()

    def _finish(self, output: RequestOutput) -> None:
        self._done = True
        reason = output.finish_reason or FinishReason.ERROR
        self._m.requests.labels(reason.value).inc()
        if output.completion_tokens == 0:
            return
        host = output.host
        self._m.time_to_first_token.observe(host.queue_time + host.prompt_time)
        if output.completion_tokens > 1 and host.completion_time > 0:
            tps = (output.completion_tokens - 1) / host.completion_time
            self._m.user_tokens_per_second.labels(self.user_label).set(tps)
        if output.emulated_tokens_per_second > 0:
            self._m.user_emulated_tokens_per_second.labels(self.user_label).set(
                output.emulated_tokens_per_second
            )
