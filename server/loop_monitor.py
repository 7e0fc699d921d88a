"""Event-loop lag: how late the server's event loop wakes a task that asked to wake at a fixed time.

One task sleeps a fixed short interval, over and over, and records by how much each sleep overshot. Whatever
holds the loop (a slow handler, a blocking call, another thread keeping the GIL) delays every stream's next
chunk by the same amount, so this is the latency the HTTP layer adds on top of the engine. The loop's own timer
resolution (about a millisecond: epoll and libuv both count milliseconds) is the floor of an idle server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 0.005


class LoopLagMonitor:
    """Samples the running loop's lag into `observe` (a histogram's `observe`) until stopped."""

    def __init__(self, observe: Callable[[float], None], interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._observe = observe
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start sampling on the running loop (call it from a coroutine, e.g. the app's lifespan)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lpu-loop-lag-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        interval = self.interval_s
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(interval)
            # A timer may fire a hair early (the loop rounds to its clock resolution): that is no lag.
            self._observe(max(0.0, time.perf_counter() - asked - interval))
