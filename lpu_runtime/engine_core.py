"""The engine's step loop and the plain-data messages that drive it, wherever it runs.

`EngineCore` owns an `Engine`: it takes `AddRequest` and `AbortRequest` messages from an inbox, steps while
there is work, and hands every step's outputs (and the engine's stats) to an `emit` callback. The same loop runs
in a thread of the server's process (`InprocCoreClient`) or in a process of its own (`ProcessCoreClient`, the
server's default, so the step loop and the HTTP event loop never share a GIL), see core_client.py.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lpu_runtime.engine import Engine
from lpu_runtime.errors import StageUnavailableError
from lpu_runtime.types import EngineCoreOutput, EngineStats, GenerationRequest


@dataclass(frozen=True)
class AddRequest:
    request: GenerationRequest
    max_tokens: int  # resolved by `engine.admit` where the request arrived


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


CoreMessage = AddRequest | AbortRequest
RECOVER_POLL_S = 2.0  # seconds between readiness probes of a failed stage
Emit = Callable[[list[EngineCoreOutput], EngineStats | None], None]  # stats None: unchanged enough to skip


class EngineCore:
    def __init__(self, engine: Engine, emit: Emit, stats_every_s: float = 0.0) -> None:
        """stats_every_s: between steps, the engine's stats go with the outputs at most this often (they cost
        a few percent of a small model's step to build and pickle); always when a request ends or a stage is
        down, so gauges and /health never miss a change of state."""
        self.engine = engine
        self.emit = emit
        self.stats_every_s = stats_every_s
        self._stats_due = 0.0  # time.monotonic() after which a step's outputs carry stats
        self._inbox: queue.SimpleQueue[CoreMessage] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()

    def submit(self, message: CoreMessage) -> None:
        """Thread-safe: the next loop iteration picks it up."""
        self._inbox.put(message)
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Steps until stopped. An exception escapes to the caller, which fails what is pending."""
        engine = self.engine
        while not self._stop.is_set():
            aborted = self._drain_inbox()
            if aborted:
                self.emit(aborted, engine.stats())
            if not engine.has_work():
                self._wake.wait()
                self._wake.clear()
                continue
            outputs = engine.step()
            self.emit(outputs, self._stats_for(outputs))
            if engine.unavailable is not None:
                self._recover()

    def _stats_for(self, outputs: list[EngineCoreOutput]) -> EngineStats | None:
        now = time.monotonic()
        if now < self._stats_due and self.engine.unavailable is None and not any(o.finished for o in outputs):
            return None
        self._stats_due = now + self.stats_every_s
        return self.engine.stats()

    def _recover(self) -> None:
        """Waits for a failed stage to come back; requests that arrive meanwhile fail at once, not hang."""
        engine = self.engine
        while not self._stop.is_set() and not engine.recover(timeout_s=RECOVER_POLL_S):
            down = StageUnavailableError(engine.unavailable or "")
            failed = [
                engine.fail(message.request.request_id, down)
                for message in self._pending()
                if isinstance(message, AddRequest)  # an abort: its request already failed with the stage
            ]
            self.emit(failed, engine.stats())
        self.emit([], engine.stats())

    def _pending(self) -> Iterator[CoreMessage]:
        """The inbox's messages, until it is empty."""
        while True:
            try:
                yield self._inbox.get_nowait()
            except queue.Empty:
                return

    def _drain_inbox(self) -> list[EngineCoreOutput]:
        aborted: list[EngineCoreOutput] = []
        for message in self._pending():
            if isinstance(message, AddRequest):
                self.engine.add(self.engine.make_sequence(message.request, message.max_tokens))
            else:
                out = self.engine.abort(message.request_id)
                if out is not None:
                    aborted.append(out)
        return aborted
