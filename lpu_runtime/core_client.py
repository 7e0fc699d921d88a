"""Where the engine's step loop runs: a thread of this process, or a process of its own.

`AsyncEngine` (async_engine.py) talks to the loop through a `CoreClient`: `start(deliver, failed)`, `send(message)`,
`stats()`, `shutdown()`. `ProcessCoreClient` is the server's default, as vLLM runs its engine core: the step loop
gets its own interpreter, so its Python between kernels never holds the GIL the HTTP event loop needs, and the
event loop never waits on it (benchmarks/bench_llamacpp.py row 7 measures the lag). The child builds the chips
from the plan and a picklable checkpoint source, reports ready, then streams each step's outputs back over a
pipe. `InprocCoreClient` runs the same loop in a thread (tests, `--engine-in-process`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from lpu_runtime.checkpoint_source import CheckpointSource
from lpu_runtime.compiler import Plan
from lpu_runtime.engine import Engine
from lpu_runtime.engine_core import CoreMessage, EngineCore
from lpu_runtime.errors import EngineDeadError
from lpu_runtime.grammar import GrammarVocab
from lpu_runtime.types import EngineCoreOutput, EngineStats

log = logging.getLogger(__name__)

Deliver = Callable[[list[EngineCoreOutput]], None]
Failed = Callable[[str], None]  # the loop died: why
STATS_EVERY_S = 0.05  # the engine process's stats reach the server at least this fresh while it steps
READY_TIMEOUT_S = 3600.0  # loading a large model's weights into the emulated chips takes minutes


class CoreClient(Protocol):
    def start(self, deliver: Deliver, failed: Failed) -> None:
        """Starts the loop; `deliver` gets every batch of outputs, `failed` a description if the loop dies.
        Both are called from a thread of this process, never from the event loop."""

    def send(self, message: CoreMessage) -> None: ...

    def stats(self) -> EngineStats: ...

    def unavailable(self) -> str | None:
        """Why a pipeline stage is down (a Ray actor restarting), or None: asked on every request, so cheap."""
        ...

    def shutdown(self) -> None: ...


class InprocCoreClient:
    """The loop in a daemon thread of this process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._core = EngineCore(engine, self._emit)
        self._deliver: Deliver | None = None
        self._thread: threading.Thread | None = None

    def start(self, deliver: Deliver, failed: Failed) -> None:
        self._deliver = deliver

        def run() -> None:
            try:
                self._core.run()
            except BaseException as exc:  # a dead loop must show in /health, not hang every request
                log.exception("engine thread died")
                failed(_describe(exc))

        self._thread = threading.Thread(target=run, name="lpu-engine", daemon=True)
        self._thread.start()

    def _emit(self, outputs: list[EngineCoreOutput], stats: EngineStats | None) -> None:
        if self._deliver is not None and outputs:
            self._deliver(outputs)

    def send(self, message: CoreMessage) -> None:
        self._core.submit(message)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def unavailable(self) -> str | None:
        return self.engine.unavailable

    def shutdown(self) -> None:
        self._core.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass(frozen=True)
class EngineProcessSpec:
    """Everything the engine process needs, as plain data (it pickles into the child)."""

    plan: Plan
    source: CheckpointSource
    model_name: str  # for the load progress line
    eos_ids: tuple[int, ...]
    banned_ids: tuple[int, ...]
    log_level: int = logging.INFO
    distributed: str = "local"  # where the stage workers run: "local" (this process) or "ray"
    ray_address: str | None = None  # the Ray cluster to join (None: RAY_ADDRESS, else a local one)
    grammar_vocab: GrammarVocab | None = None  # constrained decoding compiles grammars against it


class ProcessCoreClient:
    """The loop in a child process: requests go down a pipe, each step's outputs and stats come back up."""

    def __init__(self, spec: EngineProcessSpec) -> None:
        self.spec = spec
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or locks inherited
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._process = ctx.Process(
            target=engine_process_main, args=(spec, child_conn), name="lpu-engine", daemon=True
        )
        self._send_lock = threading.Lock()
        self._closing = False  # shutdown asked for the child's exit: the reader's EOF is not a failure
        self._stats: EngineStats | None = None
        self._reader: threading.Thread | None = None
        self._process.start()
        child_conn.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Blocks until the child has filled its chips; raises with the child's own error if it could not."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._conn.poll(0.5):
            if not self._process.is_alive():
                raise RuntimeError(f"the engine process exited with status {self._process.exitcode}")
            if time.monotonic() > deadline:
                self._process.kill()
                raise RuntimeError("the engine process did not report ready")
        kind, payload = self._conn.recv()
        if kind == "failed":
            self._process.join(timeout=10)
            raise RuntimeError(f"the engine process failed to start: {payload}")
        self._stats = payload

    def start(self, deliver: Deliver, failed: Failed) -> None:
        def read() -> None:
            try:
                while True:
                    kind, payload, *rest = self._conn.recv()
                    if kind == "outputs":
                        if rest[0] is not None:
                            self._stats = rest[0]
                        deliver(payload)
                    elif kind == "failed":
                        failed(payload)
                        return
            except (EOFError, OSError):
                if self._closing:
                    return
                self._process.join(timeout=5)
                failed(f"the engine process exited (status {self._process.exitcode})")

        self._reader = threading.Thread(target=read, name="lpu-engine-reader", daemon=True)
        self._reader.start()

    def send(self, message: CoreMessage) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except (OSError, ValueError) as exc:  # the child is gone; the reader reports why to every request
            raise EngineDeadError(f"the engine process is gone (status {self._process.exitcode})") from exc

    def unavailable(self) -> str | None:
        return self.stats().unavailable  # the latest stats the child sent: no work here

    def stats(self) -> EngineStats:
        assert self._stats is not None
        return self._stats

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def shutdown(self) -> None:
        """Asks the child to stop (None on the pipe), waits for it, and kills it if it will not go."""
        self._closing = True
        with self._send_lock, contextlib.suppress(OSError):
            # Closing our end would not wake our own reader blocked on it, so the child is told in-band.
            self._conn.send(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._conn.close()


def engine_process_main(spec: EngineProcessSpec, conn: Connection) -> None:
    """The child: fill the chips, report ready, then step until the parent closes the pipe."""
    # Ctrl-C reaches the whole process group; the server decides when the engine stops (by closing the pipe).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=spec.log_level, format="%(levelname)s:     %(name)s: %(message)s")
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    try:
        from lpu_runtime.executor import build_executor

        executor = build_executor(spec.plan, spec.source, spec.model_name, spec.distributed, spec.ray_address)
        engine = Engine(spec.plan, executor, spec.eos_ids, spec.banned_ids, grammar_vocab=spec.grammar_vocab)
    except BaseException as exc:
        send(("failed", _describe(exc)))
        raise SystemExit(1) from None
    log.info(
        "engine process %d: %s on %d chips in %d stages (%s kernels)",
        multiprocessing.current_process().pid,
        spec.model_name,
        spec.plan.n_chips_used,
        len(spec.plan.stages),
        executor.stages.backend_name,
    )
    core = EngineCore(
        engine, lambda outputs, stats: send(("outputs", outputs, stats)), stats_every_s=STATS_EVERY_S
    )

    def read() -> None:
        try:
            while (message := conn.recv()) is not None:
                core.submit(message)
        except (EOFError, OSError):
            pass  # the parent is gone
        core.stop()

    send(("ready", engine.stats()))
    threading.Thread(target=read, name="lpu-engine-inbox", daemon=True).start()
    try:
        core.run()
    except BaseException as exc:
        log.exception("engine process failed")
        send(("failed", _describe(exc)))
        raise SystemExit(1) from None
    conn.close()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
