"""The asyncio face the server talks to: tokenization, admission, and each request's stream of outputs.

The step loop runs elsewhere, behind a `CoreClient` (core_client.py): by default in a process of its own, so
its Python never holds the GIL the event loop needs; or in a thread of this process. Requests are validated
here (admission needs only the compiled plan) and sent to the loop; each step's outputs come back in one
`call_soon_threadsafe` per event loop and are turned into text here (output_processor.py), outside the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from lpu_runtime.catalog import LoadedModel, load_model
from lpu_runtime.compiler import Plan, check_host_memory, compile_model
from lpu_runtime.config import DEMO_MODEL, EngineConfig, SystemSpec
from lpu_runtime.core_client import CoreClient, EngineProcessSpec, InprocCoreClient, ProcessCoreClient
from lpu_runtime.engine import Engine, admit, resolve_max_tokens
from lpu_runtime.engine_core import AbortRequest, AddRequest
from lpu_runtime.errors import ChatTemplateError, EngineDeadError
from lpu_runtime.output_processor import EmulatedSystem, OutputProcessor
from lpu_runtime.tokenizer import encode_prompt
from lpu_runtime.types import (
    EngineCoreOutput,
    EngineStats,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    RequestOutput,
)

log = logging.getLogger(__name__)

_Target = tuple[asyncio.AbstractEventLoop, "asyncio.Queue[EngineCoreOutput]"]


class AsyncEngine:
    def __init__(self, model: LoadedModel, plan: Plan, core: CoreClient) -> None:
        self.model = model
        self.plan = plan
        self.core = core
        self.system = EmulatedSystem(plan.system.chip.clock_hz, plan.n_chips_used, len(plan.stages))
        self._queues: dict[str, _Target] = {}
        self._started = False
        self._failed: str | None = None
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
        in_process: bool = False,
    ) -> AsyncEngine:
        """Loads the model, compiles it onto the system and fills the chips' SRAM (slow; synchronous).

        tokenizer / chat_template: files that replace the model's own (`--tokenizer`, `--chat-template`);
        max_context: a context shorter than the model's own (`--max-model-len`); in_process: run the step loop
        in a thread of this process instead of an engine process of its own.
        """
        config = engine_config or EngineConfig()
        loaded = load_model(
            model, seed=config.seed, tokenizer=tokenizer, chat_template=chat_template, max_context=max_context
        )
        plan = compile_model(loaded.config, system or SystemSpec(), config)
        check_host_memory(plan)
        tok = loaded.tokenizer
        banned = (tok.bos_id,) if tok.bos_id is not None else ()
        core: CoreClient
        if in_process:
            from lpu_runtime.executor import PipelineExecutor
            from lpu_runtime.loaders.progress import LoadProgress

            executor = PipelineExecutor(plan, loaded.source, on_tensor=LoadProgress(loaded.name))
            core = InprocCoreClient(Engine(plan, executor, tuple(tok.eos_ids), banned))
        else:
            spec = EngineProcessSpec(
                plan, loaded.source, loaded.name, tuple(tok.eos_ids), banned, logging.getLogger().level
            )
            core = ProcessCoreClient(spec)
        log.info("compiled %s onto %d chips in %d stages", loaded.name, plan.n_chips_used, len(plan.stages))
        return cls(loaded, plan, core)

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.core.start(self._deliver, self._core_failed)

    def shutdown(self) -> None:
        """Stops the loop; requests still running end with an abort."""
        self.core.shutdown()
        self._deliver(
            [
                EngineCoreOutput(request_id, (), 0, 0, True, FinishReason.ABORT)
                for request_id in list(self._queues)
            ]
        )

    def is_healthy(self) -> bool:
        return self._failed is None

    # -- what the server asks ----------------------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo:
        m, plan = self.model, self.plan
        return ModelInfo(
            id=m.name,
            description=m.description,
            max_context=plan.model.max_context,
            vocab_size=plan.model.vocab_size,
            n_params=plan.model.n_params,
            n_chips=plan.n_chips_used,
            n_stages=len(plan.stages),
            chip_name=plan.system.chip.name,
            created=self._created,
        )

    def encode_chat(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        template = self.model.chat_template
        if template is None:
            raise ChatTemplateError(
                f"model {self.model.name!r} has no chat template: use /v1/completions, or start the server with --chat-template FILE"
            )
        text = template.render(messages, add_generation_prompt=True, tools=tools)
        # The template usually writes the BOS itself; encode_prompt never adds a second one.
        return encode_prompt(self.model.tokenizer, text)

    def encode_text(self, prompt: str) -> list[int]:
        return encode_prompt(self.model.tokenizer, prompt)

    def check_fits(self, n_prompt: int, max_tokens: int | None) -> None:
        """Raises ContextLengthExceededError when prompt + max_tokens can never fit."""
        resolve_max_tokens(self.plan, n_prompt, max_tokens)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Yields the request's increments; closing the generator early aborts it and frees its KV cache."""
        if self._failed is not None:
            raise EngineDeadError(f"the engine has stopped: {self._failed}")
        max_tokens = admit(self.plan, request)
        if request.request_id in self._queues:
            raise ValueError(f"request id {request.request_id!r} is already running")
        processor = OutputProcessor(self.model.tokenizer, request.params, self.system)
        outputs: asyncio.Queue[EngineCoreOutput] = asyncio.Queue()
        self._queues[request.request_id] = (asyncio.get_running_loop(), outputs)
        self.core.send(AddRequest(request, max_tokens))
        engine_done = False
        try:
            while not processor.finished:
                core = await outputs.get()
                engine_done = core.finished
                yield processor.process(core)
        finally:
            self._queues.pop(request.request_id, None)
            if not engine_done and self._failed is None:
                # a stop string, or the consumer went away: the engine still runs it
                self.core.send(AbortRequest(request.request_id))

    def abort(self, request_id: str) -> None:
        self.core.send(AbortRequest(request_id))

    def stats(self) -> EngineStats:
        return self.core.stats()

    # -- outputs from the loop ---------------------------------------------------------------------------

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

    def _core_failed(self, reason: str) -> None:
        """The step loop died: every pending request ends with the error; /health reports it."""
        self._failed = reason
        log.error("engine failed: %s", reason)
        self._deliver(
            [
                EngineCoreOutput(request_id, (), 0, 0, True, FinishReason.ERROR, error=reason)
                for request_id in list(self._queues)
            ]
        )


def _put_all(items: list[tuple[asyncio.Queue[EngineCoreOutput], EngineCoreOutput]]) -> None:
    for outputs, out in items:
        outputs.put_nowait(out)
