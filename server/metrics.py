"""Prometheus metrics in a registry owned by one app, so two apps in a process (tests) never share series.

Request metrics are updated as outputs stream through the server; engine gauges are read from
`engine.stats()` when Prometheus scrapes, so they are never stale and cost nothing between scrapes.
Every name is documented in docs/metrics.md; a rename breaks dashboards, so names change only there first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from lpu_runtime import EngineStats, FinishReason, ModelInfo, RequestOutput
from server.admission import REJECT_REASONS, AdmissionQueue

ANONYMOUS = "anonymous"
OTHER = "other"
MAX_USER_CHARS = 64

# From 100 µs (a real LPU streams a token every millisecond or so) to 2 min (a long prompt queued on a busy
# 2-core CPU), so both ends land in a resolved bucket rather than +Inf.
LATENCY_BUCKETS_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
# A CPU decodes a few to a few hundred tokens/s; the emulated LPU hundreds of thousands for a small model.
SPEED_BUCKETS_TOKENS_PER_SECOND = tuple(m * 10.0**e for e in range(8) for m in (1.0, 2.5, 5.0))[
    :-2
]  # 1 .. 1e7
# Event-loop lag: the loop's resolution is about a millisecond (epoll and libuv timers), a healthy server stays
# near it and a blocked loop shows up as tens of milliseconds or more; fine steps from 0.1 ms to 100 ms resolve
# a p99 anywhere in 0.5 .. 100 ms, coarse ones above catch whole-second stalls.
EVENT_LOOP_LAG_BUCKETS_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015,
    0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
TOKEN_COUNT_BUCKETS = tuple(float(m * 10**e) for e in range(6) for m in (1, 2, 5))  # 1 .. 500,000 tokens

# Memory kinds a chip's SRAM is planned into; the label values of lpu_chip_sram_used_bytes.
SRAM_REGIONS = ("weights", "kv_cache", "buffers")


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


@dataclass(frozen=True)
class EngineSnapshot:
    """What a scrape reads from the running engine."""

    stats: EngineStats
    model: ModelInfo
    served_model: str
    restarts: int = 0


class EngineCollector(Collector):
    """Engine gauges and counters read at scrape time; nothing is exported until the engine exists."""

    def __init__(self, snapshot: Callable[[], EngineSnapshot | None], version: str) -> None:
        self._snapshot = snapshot
        self._version = version

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._snapshot())

    def _families(self, snap: EngineSnapshot | None) -> Iterator[Metric]:
        chip_labels = ["chip", "stage"]
        info = GaugeMetricFamily(
            "lpu_build_info",
            "Always 1; the labels say what is served: version, model, chips, pipeline stages, chip kind",
            labels=["version", "model", "served_model_name", "chips", "stages", "chip_name"],
        )
        running = GaugeMetricFamily("lpu_requests_running", "Requests in the engine's running batch")
        waiting = GaugeMetricFamily("lpu_requests_waiting", "Requests queued for admission (queue depth)")
        kv_used = GaugeMetricFamily("lpu_kv_cache_used_blocks", "KV-cache blocks held by running requests")
        kv_capacity = GaugeMetricFamily("lpu_kv_cache_capacity_blocks", "KV-cache blocks the system can hold")
        kv_usage = GaugeMetricFamily(
            "lpu_kv_cache_usage_ratio", "Fraction of the KV-cache blocks held by running requests (0..1)"
        )
        clock = GaugeMetricFamily("lpu_emulated_clock_hertz", "Clock frequency of the emulated chips")
        cycles = CounterMetricFamily(
            "lpu_emulated_cycles",
            "Cycles of the emulated LPU clock since start (the latest micro-batch to leave the pipeline)",
        )
        steps = CounterMetricFamily("lpu_engine_steps", "Engine steps since start")
        restarts = CounterMetricFamily(
            "lpu_engine_restarts", "Times the engine's step loop died and was started again in place"
        )
        micro = CounterMetricFamily(
            "lpu_pipeline_micro_batches", "Micro-batches that went through the emulated pipeline since start"
        )
        stage_busy = CounterMetricFamily(
            "lpu_pipeline_stage_busy_cycles",
            "Cycles a pipeline stage spent computing (its slowest chip); divide by lpu_emulated_cycles_total "
            "for the stage's occupancy, 1 - occupancy is its bubble fraction",
            labels=["stage"],
        )
        link = CounterMetricFamily(
            "lpu_pipeline_link_cycles", "Cycles spent moving activations between pipeline stages"
        )
        sram_used = GaugeMetricFamily(
            "lpu_chip_sram_used_bytes",
            "SRAM the compiler allocated on a chip, by region (weights, kv_cache reservation, buffers)",
            labels=[*chip_labels, "region"],
        )
        sram_capacity = GaugeMetricFamily(
            "lpu_chip_sram_capacity_bytes", "SRAM on a chip", labels=chip_labels
        )
        kv_chip = GaugeMetricFamily(
            "lpu_chip_kv_cache_used_bytes",
            "Part of a chip's KV-cache reservation held by running requests",
            labels=chip_labels,
        )
        busy = CounterMetricFamily(
            "lpu_chip_busy_cycles", "Cycles a chip spent computing", labels=chip_labels
        )
        if snap is not None:
            stats, model = snap.stats, snap.model
            info.add_metric(
                [
                    self._version, model.id, snap.served_model, str(model.n_chips), str(model.n_stages),
                    model.chip_name,
                ],
                1,
            )  # fmt: skip
            running.add_metric([], stats.running)
            waiting.add_metric([], stats.waiting)
            kv_used.add_metric([], stats.kv_blocks_used)
            kv_capacity.add_metric([], stats.kv_blocks_total)
            kv_usage.add_metric(
                [], stats.kv_blocks_used / stats.kv_blocks_total if stats.kv_blocks_total else 0.0
            )
            clock.add_metric([], stats.clock_hz)
            cycles.add_metric([], stats.emulated_cycles)
            steps.add_metric([], stats.steps)
            restarts.add_metric([], snap.restarts)
            micro.add_metric([], stats.micro_batches)
            for stage, stage_cycles in enumerate(stats.stage_busy_cycles):
                stage_busy.add_metric([str(stage)], stage_cycles)
            link.add_metric([], stats.link_cycles)
            for chip in stats.chips:
                labels = [str(chip.chip_id), str(chip.stage)]
                for region, nbytes in zip(
                    SRAM_REGIONS, (chip.weight_bytes, chip.kv_bytes, chip.buffer_bytes), strict=True
                ):
                    sram_used.add_metric([*labels, region], nbytes)
                sram_capacity.add_metric(labels, chip.capacity_bytes)
                kv_chip.add_metric(labels, chip.kv_used_bytes)
                busy.add_metric(labels, chip.busy_cycles)
        yield from (info, running, waiting, kv_used, kv_capacity, kv_usage, clock, cycles, steps)
        yield from (micro, stage_busy, link, sram_used, sram_capacity, kv_chip, busy, restarts)


def _histogram(
    registry: CollectorRegistry, name: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_SECONDS
) -> Histogram:
    return Histogram(name, doc, buckets=buckets, registry=registry)


class ServerMetrics:
    def __init__(
        self, max_users: int, snapshot: Callable[[], EngineSnapshot | None], version: str = "0.0.0"
    ) -> None:
        self.registry = r = CollectorRegistry()
        self.users = UserLabels(max_users)
        # The process, Python and GC collectors the default registry has, registered in ours instead.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests_received = Counter(
            "lpu_requests_received", "Requests submitted to the engine (after the server validated them)",
            registry=r,
        )  # fmt: skip
        self.requests_finished = Counter(
            "lpu_requests_finished",
            "Requests that ended, by finish reason: stop, length, abort (client gone or cancelled), error",
            ["finish_reason"], registry=r,
        )  # fmt: skip
        for reason in FinishReason:
            self.requests_finished.labels(reason.value)  # export zeros so rate() works from the first request
        self.requests_rejected = Counter(
            "lpu_requests_rejected",
            "Requests refused with 429 before reaching the engine, by reason: queue_requests, queue_tokens "
            "(admission bounds), key_concurrency, key_tokens (per-key limits)",
            ["reason"], registry=r,
        )  # fmt: skip
        for rejection in REJECT_REASONS:
            self.requests_rejected.labels(rejection)
        self.admission_waiting = Gauge(
            "lpu_admission_waiting_requests", "Admitted requests that have not started streaming", registry=r
        )
        self.admission_waiting_tokens = Gauge(
            "lpu_admission_waiting_prompt_tokens", "Prompt tokens of the admitted requests not yet streaming",
            registry=r,
        )  # fmt: skip
        self.admission_drain_rate = Gauge(
            "lpu_admission_drain_requests_per_second",
            "Requests that started streaming per second, over the last 30 s (what Retry-After is computed from)",
            registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter("lpu_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("lpu_generation_tokens", "Tokens generated", registry=r)
        self.user_tokens = Counter(
            "lpu_user_generation_tokens", "Tokens generated for a user", ["user"], registry=r
        )
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
        self.time_to_first_token = _histogram(
            r, "lpu_time_to_first_token_seconds", "Host seconds from arrival at the engine to the first token"
        )
        self.inter_token_latency = _histogram(
            r, "lpu_inter_token_latency_seconds",
            "Host seconds between consecutive tokens of a request, as the server streams them",
        )  # fmt: skip
        self.e2e_latency = _histogram(
            r, "lpu_e2e_request_latency_seconds", "Host seconds from arrival at the engine to the last token"
        )
        self.queue_time = _histogram(
            r, "lpu_request_queue_time_seconds", "Host seconds a request waited before its first step"
        )
        self.prefill_time = _histogram(
            r, "lpu_request_prefill_time_seconds", "Host seconds from the first step to the first token"
        )
        self.decode_time = _histogram(
            r, "lpu_request_decode_time_seconds", "Host seconds from the first token to the last"
        )
        self.decode_speed = _histogram(
            r, "lpu_request_decode_tokens_per_second",
            "Host wall-clock decode speed of each finished request: (tokens-1)/decode time",
            SPEED_BUCKETS_TOKENS_PER_SECOND,
        )  # fmt: skip
        self.emulated_decode_speed = _histogram(
            r, "lpu_request_emulated_decode_tokens_per_second",
            "Decode speed the emulated LPU gives each finished request, from the simulated clock",
            SPEED_BUCKETS_TOKENS_PER_SECOND,
        )  # fmt: skip
        self.request_prompt_tokens = _histogram(
            r, "lpu_request_prompt_tokens", "Prompt tokens of each finished request", TOKEN_COUNT_BUCKETS
        )
        self.request_generation_tokens = _histogram(
            r,
            "lpu_request_generation_tokens",
            "Tokens generated for each finished request",
            TOKEN_COUNT_BUCKETS,
        )
        self.event_loop_lag = _histogram(
            r, "lpu_event_loop_lag_seconds",
            "Seconds the server's event loop ran late: a fixed short sleep's overshoot, sampled continuously",
            EVENT_LOOP_LAG_BUCKETS_SECONDS,
        )  # fmt: skip
        r.register(EngineCollector(snapshot, version))

    def watch_admission(self, queue: AdmissionQueue) -> None:
        """The admission gauges read the queue at scrape time."""
        self.admission_waiting.set_function(lambda: queue.waiting)
        self.admission_waiting_tokens.set_function(lambda: queue.waiting_tokens)
        self.admission_drain_rate.set_function(lambda: queue.drain.per_second()[0])

    def track(self, user: str | None) -> RequestTracker:
        """Start following a request just submitted to the engine."""
        self.requests_received.inc()
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
        """The server stopped following the request before its final output (client gone, a failure, or
        the engine refusing it after submission, which counts as an error)."""
        if not self._done:
            self._done = True
            self._m.requests_finished.labels(reason.value).inc()

    def _finish(self, output: RequestOutput) -> None:
        if self._done:
            return
        self._done = True
        m = self._m
        reason = output.finish_reason or FinishReason.ERROR
        m.requests_finished.labels(reason.value).inc()
        host = output.host
        m.queue_time.observe(host.queue_time)
        m.e2e_latency.observe(host.total_time)
        m.request_prompt_tokens.observe(output.prompt_tokens)
        m.request_generation_tokens.observe(output.completion_tokens)
        if output.completion_tokens == 0:
            return
        m.time_to_first_token.observe(host.queue_time + host.prompt_time)
        m.prefill_time.observe(host.prompt_time)
        m.decode_time.observe(host.completion_time)
        if output.completion_tokens > 1 and host.completion_time > 0:
            tps = (output.completion_tokens - 1) / host.completion_time
            m.decode_speed.observe(tps)
            m.user_tokens_per_second.labels(self.user_label).set(tps)
        if output.emulated_tokens_per_second > 0:
            m.emulated_decode_speed.observe(output.emulated_tokens_per_second)
            m.user_emulated_tokens_per_second.labels(self.user_label).set(output.emulated_tokens_per_second)
