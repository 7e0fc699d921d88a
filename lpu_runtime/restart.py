"""How often a dead engine may be restarted before the server gives up and exits non-zero.

A step loop that dies once (a bug one request tripped, the engine process killed) is restarted in place; one that
dies over and over would only fail every request it is given, and a supervisor restarting the whole server
(Docker, systemd, Kubernetes) is the better judge of that, so past the budget the server exits instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

RESTART_WINDOW_S = 600.0


class RestartBudget:
    """At most `max_restarts` restarts in any `window_s` seconds; 0 means never restart."""

    def __init__(
        self,
        max_restarts: int,
        window_s: float = RESTART_WINDOW_S,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be 0 or more, got {max_restarts}")
        self.max_restarts = max_restarts
        self.window_s = window_s
        self._now = now
        self._times: deque[float] = deque()

    def take(self) -> bool:
        """Uses one restart if the window has one left."""
        now = self._now()
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True
