"""Stop strings over streamed text: emit as early as possible, never a character that a stop may swallow."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Finds the first stop string in text that arrives in pieces.

    Only the longest tail of the text seen so far that could still grow into a stop string is held back;
    everything before it is released, so streaming lags by at most the longest stop string minus one.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(stop == "" for stop in stops):
            raise ValueError("stop strings must not be empty")
        self._stops = tuple(stops)
        self._held = ""
        self._stopped = False

    def push(self, text: str) -> tuple[str, bool]:
        """Returns the text safe to emit now and whether a stop string completed.

        On a stop the returned text is everything before the stop string and the matcher is finished.
        """
        if self._stopped:
            raise RuntimeError("StopMatcher.push called after a stop string matched")
        pending = self._held + text
        # The earliest start wins among stops that completed in this push. Emitted text is never part of a
        # match (it was not a prefix of any stop), so searching only the pending text is enough.
        starts = [i for i in (pending.find(stop) for stop in self._stops) if i >= 0]
        if starts:
            self._stopped = True
            self._held = ""
            return pending[: min(starts)], True
        keep = self._partial_stop_len(pending)
        self._held = pending[len(pending) - keep :]
        return pending[: len(pending) - keep], False

    def flush(self) -> str:
        """Releases held text when generation ended without a stop string."""
        held, self._held = self._held, ""
        return held

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
