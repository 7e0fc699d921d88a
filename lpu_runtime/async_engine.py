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
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from lpu_runtime.catalog import LoadedModel, load_model
from lpu_runtime.compiler import Plan, check_host_memory, compile_model
from lpu_runtime.config import DEMO_MODEL, EngineConfig, SystemSpec
from lpu_runtime.core_client import CoreClient, EngineProcessSpec, InprocCoreClient, ProcessCoreClient
from lpu_runtime.engine import Engine, admit, resolve_max_tokens
from lpu_runtime.engine_core import AbortRequest, AddRequest
from lpu_runtime.errors import ChatTemplateError, EngineDeadError
from lpu_runtime.executor import build_executor
from lpu_runtime.grammar import GrammarVocab
from lpu_runtime.literal_content import render_with_literal_content
from lpu_runtime.output_processor import EmulatedSystem, OutputProcessor
from lpu_runtime.restart import RestartBudget
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
    def __init__(
        self,
        model: LoadedModel,
        plan: Plan,
        core: CoreClient,
        *,
        respawn: Callable[[], CoreClient] | None = None,
        max_restarts: int = 0,
        on_fatal: Callable[[str], None] | None = None,
        allow_special_in_content: bool = False,
    ) -> None:
        """allow_special_in_content: special-token strings in chat messages become control tokens (by
        default they are text, see literal_content.py); respawn: builds a fresh step loop when the running one dies (at most `max_restarts` times in
        `restart.RESTART_WINDOW_S`); on_fatal: told why when the engine is dead for good (no respawn, the
        budget spent, or the respawn failed), called from a thread of its own."""
        self.model = model
        self.plan = plan
        self.core = core
        self.system = EmulatedSystem.of(plan)
        self._queues: dict[str, _Target] = {}
        self._started = False
        self._failed: str | None = None
        self._closing = False
        self._respawn = respawn
        self._budget = RestartBudget(max_restarts)
        self._on_fatal = on_fatal
        self.restarts = 0  # step loops started after the first
        self.allow_special_in_content = allow_special_in_content
        # Taken where a request checks the engine is up and registers, and where a failure snapshots the
        # registered requests, so no request slips in between and waits on a dead loop forever.
        self._lock = threading.Lock()
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
        distributed: str = "local",
        ray_address: str | None = None,
        max_restarts: int = 0,
        on_fatal: Callable[[str], None] | None = None,
        allow_special_in_content: bool = False,
    ) -> AsyncEngine:
        """Loads the model, compiles it onto the system and fills the chips' SRAM (slow; synchronous).

        tokenizer / chat_template: files that replace the model's own (`--tokenizer`, `--chat-template`);
        max_context: a context shorter than the model's own (`--max-model-len`); in_process: run the step loop
        in a thread of this process instead of an engine process of its own; distributed, ray_address: where
        the pipeline stages run ("local", or "ray": actors on the Ray cluster at ray_address); max_restarts, on_fatal,
        allow_special_in_content: see __init__ (a new engine process is spawned, or a new step loop around the same chips in a thread).
        """
        config = engine_config or EngineConfig()
        loaded = load_model(
            model, seed=config.seed, tokenizer=tokenizer, chat_template=chat_template, max_context=max_context
        )
        plan = compile_model(loaded.config, system or SystemSpec(), config)
        if distributed == "local":
            check_host_memory(plan)  # on Ray, each node's memory is checked where its stages go
        tok = loaded.tokenizer
        banned = (tok.bos_id,) if tok.bos_id is not None else ()
        vocab = GrammarVocab.of(tok)
        respawn: Callable[[], CoreClient]
        if in_process:
            executor = build_executor(plan, loaded.source, loaded.name, distributed, ray_address)

            def respawn() -> CoreClient:
                # The chips keep their weights; the scheduler, KV blocks and samplers start afresh.
                return InprocCoreClient(
                    Engine(plan, executor, tuple(tok.eos_ids), banned, grammar_vocab=vocab)
                )
        else:
            spec = EngineProcessSpec(
                plan,
                loaded.source,
                loaded.name,
                tuple(tok.eos_ids),
                banned,
                logging.getLogger().level,
                grammar_vocab=vocab,
                distributed=distributed,
                ray_address=ray_address,
            )

            def respawn() -> CoreClient:
                return ProcessCoreClient(spec)

        log.info("compiled %s onto %d chips in %d stages", loaded.name, plan.n_chips_used, len(plan.stages))
        return cls(
            loaded,
            plan,
            respawn(),
            respawn=respawn,
            max_restarts=max_restarts,
            on_fatal=on_fatal,
            allow_special_in_content=allow_special_in_content,
        )

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.core.start(self._deliver, self._core_failed)

    def shutdown(self) -> None:
        """Stops the loop; requests still running end with an abort."""
        self._closing = True
        self.core.shutdown()
        self._end_all(FinishReason.ABORT)

    def abort_all(self) -> None:
        """Aborts every running request and refuses new ones (a server draining for shutdown)."""
        self._closing = True
        for request_id in list(self._queues):
            self.abort(request_id)

    def is_healthy(self) -> bool:
        # unavailable: a pipeline stage elsewhere (a Ray actor) is down until it restarts
        return self._failed is None and not self._closing and self.core.unavailable() is None

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
        tokenizer = self.model.tokenizer
        specials = () if self.allow_special_in_content else tokenizer.special_tokens.keys()
        text, plain = render_with_literal_content(
            template, messages, specials, add_generation_prompt=True, tools=tools
        )
        # The template usually writes the BOS itself; encode_prompt never adds a second one.
        return encode_prompt(tokenizer, text, plain)

    def encode_text(self, prompt: str) -> list[int]:
        return encode_prompt(self.model.tokenizer, prompt)

    @property
    def chat_template_text(self) -> str | None:
        """The template a request with tools renders through (a model's "tool_use" one when it has one):
        the server reads which tool-call format it teaches."""
        template = self.model.chat_template
        if template is None:
            return None
        source = template.source
        return source if isinstance(source, str) else source.get("tool_use", source["default"])

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token adds to the text (b"" for special tokens): logprobs name tokens by them."""
        return self.model.tokenizer.token_bytes(token_id)

    def check_fits(self, n_prompt: int, max_tokens: int | None) -> None:
        """Raises ContextLengthExceededError when prompt + max_tokens can never fit."""
        resolve_max_tokens(self.plan, n_prompt, max_tokens)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Yields the request's increments; closing the generator early aborts it and frees its KV cache."""
        max_tokens = admit(self.plan, request)
        processor = OutputProcessor(self.model.tokenizer, request.params, self.system)
        outputs: asyncio.Queue[EngineCoreOutput] = asyncio.Queue()
        with self._lock:
            if self._failed is not None or self._closing:
                why = "the server is shutting down" if self._closing else f"the engine failed: {self._failed}"
                raise EngineDeadError(why)
            stage_down = self.core.unavailable()
            if stage_down is not None:  # a Ray actor is restarting: fail now rather than queue behind it
                raise EngineDeadError(f"a pipeline stage is down until it restarts: {stage_down}")
            if request.request_id in self._queues:
                raise ValueError(f"request id {request.request_id!r} is already running")
            self._queues[request.request_id] = (asyncio.get_running_loop(), outputs)
            client = self.core
        try:
            client.send(AddRequest(request, max_tokens))
        except EngineDeadError:
            self._queues.pop(request.request_id, None)
            raise
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
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        # A dead loop took its requests with it; they end (as errors) through _core_failed.
        with contextlib.suppress(EngineDeadError):
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
        """The step loop died: every pending request ends with the error (and /health says so), then a new
        loop is started in place of it, or the owner is told the engine is gone for good."""
        log.error("engine failed: %s", reason)
        with self._lock:
            self._failed = reason
            self._end_all(FinishReason.ERROR, reason)
        if self._closing:
            return
        if self._respawn is None or not self._budget.take():
            self._fatal(f"{reason} (restarts left: none)")
            return
        threading.Thread(target=self._restart, name="lpu-engine-restart", daemon=True).start()

    def _restart(self) -> None:
        assert self._respawn is not None
        log.warning("restarting the engine (%d restarts so far)", self.restarts)
        with contextlib.suppress(Exception):
            self.core.shutdown()  # reaps the dead process and its pipe
        try:
            core = self._respawn()
        except Exception as exc:
            self._fatal(f"the engine could not be restarted: {type(exc).__name__}: {exc}")
            return
        if self._closing:
            core.shutdown()
            return
        core.start(self._deliver, self._core_failed)
        with self._lock:
            self.core = core
            self.restarts += 1
            self._failed = None
        log.warning("engine restarted")

    def _fatal(self, reason: str) -> None:
        log.critical("the engine is gone for good: %s", reason)
        if self._on_fatal is not None:
            self._on_fatal(reason)

    def _end_all(self, reason: FinishReason, error: str | None = None) -> None:
        self._deliver(
            [
                EngineCoreOutput(request_id, (), 0, 0, True, reason, error=error)
                for request_id in list(self._queues)
            ]
        )


def _put_all(items: list[tuple[asyncio.Queue[EngineCoreOutput], EngineCoreOutput]]) -> None:
    for outputs, out in items:
        outputs.put_nowait(out)
