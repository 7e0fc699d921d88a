"""The simulated clock: integer cycles, advanced only by the performance model, never by wall time."""

from __future__ import annotations

import threading


class SimClock:
    def __init__(self, clock_hz: int) -> None:
        self.clock_hz = clock_hz
        self._cycles = 0
        self._lock = threading.Lock()

    @property
    def cycles(self) -> int:
        return self._cycles

    def advance(self, cycles: int) -> int:
        """Moves time forward and returns the new time (cycles)."""
        if cycles < 0:
            raise ValueError(f"the simulated clock cannot go back ({cycles} cycles)")
        with self._lock:
            self._cycles += cycles
            return self._cycles

    def seconds(self, cycles: int | None = None) -> float:
        return (self._cycles if cycles is None else cycles) / self.clock_hz
