"""The engine on its own thread, and the asyncio face the server talks to.

The step loop runs in one background thread; its kernels release the GIL while they compute, so the event
loop keeps moving bytes. Requests and aborts cross into the thread through an inbox; each step's outputs
cross back in one `call_soon_threadsafe` per event loop and are turned into text there (output_processor.py),
outside the step loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from typing import Any

from lpu_runtime.catalog import load_model
from lpu_runtime.compiler import check_host_memory, compile_model
from lpu_runtime.config import DEMO_MODEL, EngineConfig, SystemSpec
from lpu_runtime.engine import Engine
from lpu_runtime.errors import ChatTemplateError, EngineDeadError
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.loaders.progress import LoadProgress
from lpu_runtime.output_processor import OutputProcessor
from lpu_runtime.scheduler import Sequence
from lpu_runtime.tokenizer import encode_prompt
from lpu_runtime.types import EngineCoreOutput, EngineStats, GenerationRequest, ModelInfo, RequestOutput

log = logging.getLogger(__name__)

_Deliver = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[EngineCoreOutput]"]


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._inbox: queue.SimpleQueue[Sequence | str | None] = queue.SimpleQueue()  # add, abort id, wake
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._queues: dict[str, _Deliver] = {}
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None
        self._created = int(time.time())

    @classmethod
    def create(
        cls,
        model: str = DEMO_MODEL.name,
        system: SystemSpec | None = None,
        engine_config: EngineConfig | None = None,
        tokenizer: str | None = None,
        chat_template: str | None = None,
        max_context: int | None = None,
    ) -> AsyncEngine:
        """Loads the model, compiles it onto the system and fills the chips' SRAM (slow; synchronous).

        tokenizer / chat_template: files that replace the model's own (`--tokenizer`, `--chat-template`);
        max_context: a context shorter than the model's own (`--max-model-len`).
        """
        config = engine_config or EngineConfig()
        loaded = load_model(
            model, seed=config.seed, tokenizer=tokenizer, chat_template=chat_template, max_context=max_context
        )
        plan = compile_model(loaded.config, system or SystemSpec(), config)
        check_host_memory(plan)
        executor = PipelineExecutor(plan, loaded.source, on_tensor=LoadProgress(loaded.name))
        log.info(
            "compiled %s onto %d chips in %d stages (%s kernels)",
            loaded.name,
            plan.n_chips_used,
            len(plan.stages),
            executor.backend.name,
        )
        return cls(Engine(loaded, plan, executor))

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="lpu-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for request_id in list(self._queues):
            out = self.engine.abort(request_id)
            if out is not None:
                self._deliver([out])

    def is_healthy(self) -> bool:
        return self._failed is None and (self._thread is None or self._thread.is_alive())

    # -- what the server asks ----------------------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo:
        e = self.engine
        return ModelInfo(
            id=e.model.name,
            description=e.model.description,
            max_context=e.plan.model.max_context,
            vocab_size=e.plan.model.vocab_size,
            n_params=e.plan.model.n_params,
            n_chips=e.plan.n_chips_used,
            n_stages=len(e.plan.stages),
            chip_name=e.plan.system.chip.name,
            created=self._created,
        )

    def encode_chat(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        template = self.engine.model.chat_template
        if template is None:
            raise ChatTemplateError(
                f"model {self.engine.model.name!r} has no chat template: use /v1/completions, or start the server with --chat-template FILE"
            )
        text = template.render(messages, add_generation_prompt=True, tools=tools)
        # The template usually writes the BOS itself; encode_prompt never adds a second one.
        return encode_prompt(self.engine.model.tokenizer, text)

    def encode_text(self, prompt: str) -> list[int]:
        return encode_prompt(self.engine.model.tokenizer, prompt)

    def check_fits(self, n_prompt: int, max_tokens: int | None) -> None:
        """Raises ContextLengthExceededError when prompt + max_tokens can never fit."""
        self.engine.resolve_max_tokens(n_prompt, max_tokens)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Yields the request's increments; closing the generator early aborts it and frees its KV cache."""
        if not self.is_healthy():
            raise EngineDeadError(f"the engine thread has stopped: {self._failed!r}")
        seq = self.engine.make_sequence(request)
        if request.request_id in self._queues:
            raise ValueError(f"request id {request.request_id!r} is already running")
        processor = OutputProcessor(self.engine.model.tokenizer, request.params, self.engine.system)
        outputs: asyncio.Queue[EngineCoreOutput] = asyncio.Queue()
        self._queues[request.request_id] = (asyncio.get_running_loop(), outputs)
        self._submit(seq)
        engine_done = False
        try:
            while not processor.finished:
                core = await outputs.get()
                engine_done = core.finished
                yield processor.process(core)
        finally:
            self._queues.pop(request.request_id, None)
            if not engine_done:  # a stop string, or the consumer went away: the engine still runs it
                self._submit(request.request_id)

    def abort(self, request_id: str) -> None:
        self._submit(request_id)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    # -- the engine thread -----------------------------------------------------------------------------

    def _submit(self, item: Sequence | str) -> None:
        self._inbox.put(item)
        self._wake.set()

    def _deliver(self, outs: list[EngineCoreOutput]) -> None:
        """Hands a step's outputs to their requests' queues: one wake-up per event loop, not per token."""
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[EngineCoreOutput], EngineCoreOutput]]
        ]
        by_loop = {}
        for out in outs:
            target = self._queues.get(out.request_id)
            if target is not None:
                by_loop.setdefault(target[0], []).append((target[1], out))
        for loop, items in by_loop.items():
            # A closed loop means nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_put_all, items)

    def _drain_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Sequence):
                if item.request_id in self._queues:
                    self.engine.add(item)
            elif isinstance(item, str):
                out = self.engine.abort(item)
                if out is not None:
                    self._deliver([out])

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_inbox()
                if not self.engine.has_work():
                    self._wake.wait()
                    self._wake.clear()
                    continue
                self._deliver(self.engine.step())
        except BaseException as exc:  # a dead engine thread must show in /health, not hang every request
            self._failed = exc
            log.exception("engine thread died")
            self._deliver([self.engine.fail(request_id, exc) for request_id in list(self._queues)])


def _put_all(items: list[tuple[asyncio.Queue[EngineCoreOutput], EngineCoreOutput]]) -> None:
    for outputs, out in items:
        outputs.put_nowait(out)
