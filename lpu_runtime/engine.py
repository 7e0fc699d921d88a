"""The engine step: schedule -> execute on the pipelined chips -> sample -> update.

`Engine` is single-threaded: only the engine thread (see async_engine.py) calls `step`, `add` and `abort`.
It speaks tokens only; text is made on the output side (output_processor.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.compiler import Plan
from lpu_runtime.errors import ContextLengthExceededError, InvalidRequestError, StageUnavailableError
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.faults import fault_from_env
from lpu_runtime.grammar import GrammarCompiler, GrammarVocab
from lpu_runtime.kv_cache import BlockAllocator
from lpu_runtime.model import SeqSlice, TokenBatch
from lpu_runtime.output_processor import EmulatedSystem
from lpu_runtime.sampler import Sampler
from lpu_runtime.scheduler import ScheduledChunk, Scheduler, Sequence, StepOutput
from lpu_runtime.sram import RegionKind
from lpu_runtime.types import (
    ChipStats,
    EngineCoreOutput,
    EngineStats,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
)


def resolve_max_tokens(plan: Plan, n_prompt: int, max_tokens: int | None, param: str = "messages") -> int:
    """The request's token budget, or ContextLengthExceededError if it can never fit the context or the
    system's KV cache (every layer-holding chip reserves plan.kv_tokens slots)."""
    context = plan.model.max_context
    limit = min(context, plan.kv_tokens)
    what = "context length" if context <= plan.kv_tokens else "KV-cache capacity of this system"
    if n_prompt < 1:
        raise InvalidRequestError(param, "the prompt is empty: at least one token is needed")
    if max_tokens is None:
        if n_prompt >= limit:
            raise ContextLengthExceededError(
                f"This model's maximum {what} is {limit} tokens. However, your prompt has {n_prompt} tokens, "
                "leaving no room for a completion. Please shorten the prompt.",
                prompt_tokens=n_prompt,
                limit=limit,
                param=param,
            )
        return limit - n_prompt
    if n_prompt + max_tokens > limit:
        raise ContextLengthExceededError(
            f"This model's maximum {what} is {limit} tokens. However, you requested {n_prompt + max_tokens} "
            f"tokens ({n_prompt} in the prompt, {max_tokens} for the completion). Please reduce the prompt "
            "or max_tokens.",
            prompt_tokens=n_prompt,
            limit=limit,
            param=param,
        )
    return max_tokens


def admit(plan: Plan, request: GenerationRequest) -> int:
    """Validates a request against the compiled system; returns its resolved max_tokens. Runs where the
    request arrives (the server's side), so a bad request fails before anything is queued."""
    vocab = plan.model.vocab_size
    bad = [t for t in request.prompt_token_ids if not 0 <= t < vocab]
    if bad:
        raise InvalidRequestError("prompt", f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
    return resolve_max_tokens(plan, len(request.prompt_token_ids), request.params.max_tokens)


class Engine:
    def __init__(
        self,
        plan: Plan,
        executor: PipelineExecutor,
        eos_ids: Collection[int] = (),
        banned_ids: Collection[int] = (),
        now: Callable[[], float] = time.monotonic,
        grammar_vocab: GrammarVocab | None = None,
    ) -> None:
        """eos_ids end a request (unless it ignores EOS); banned_ids are never sampled (the BOS token);
        grammar_vocab: the vocabulary constrained requests' grammars compile against (none: refused)."""
        self.plan = plan
        self.executor = executor
        self.allocator = BlockAllocator(plan.kv_blocks, plan.engine.kv_block_tokens)
        self.scheduler = Scheduler(plan.engine, self.allocator, eos_ids, now)
        self.now = now
        self.steps = 0
        self.samplers: dict[str, Sampler] = {}
        self.system = EmulatedSystem.of(plan)
        self._banned = frozenset(banned_ids)
        self._eos = frozenset(eos_ids)
        self._grammars = GrammarCompiler(grammar_vocab) if grammar_vocab is not None else None
        self._rejected: list[EngineCoreOutput] = []  # requests whose grammar failed to compile, for step()
        self._fault = fault_from_env()  # test-only (faults.py)
        self.unavailable: str | None = None  # why a stage is down (a dead Ray actor), until it is back

    # -- admission -------------------------------------------------------------------------------------

    def make_sequence(self, request: GenerationRequest, max_tokens: int | None = None) -> Sequence:
        """The engine's state for a request; max_tokens as `admit` resolved it (validated here if not)."""
        resolved = admit(self.plan, request) if max_tokens is None else max_tokens
        return Sequence(request=request, max_tokens=resolved, arrival=self.now())

    def add(self, seq: Sequence) -> None:
        # The emulated present: the latest micro-batch's entry while the pipeline works, its drain when idle.
        timeline = self.executor.timeline
        seq.arrival_cycles = timeline.now if self.scheduler.has_work() else timeline.end
        self.scheduler.add(seq)
        params = seq.request.params
        try:
            grammar = None
            if params.grammar is not None:
                if self._grammars is None:
                    raise ValueError("this engine was built without a vocabulary for grammars")
                grammar = self._grammars.matcher(params.grammar)
        except Exception as exc:  # the server checked the grammar; one that still fails ends its request only
            self._rejected.append(self._fail(seq.request_id, exc))
            return
        self.samplers[seq.request_id] = Sampler(
            params,
            self.plan.model.vocab_size,
            banned_ids=self._banned,
            eos_ids=() if params.ignore_eos else self._eos,
            prompt_ids=seq.request.prompt_token_ids if params.repetition_penalty != 1.0 else (),
            grammar=grammar,
        )

    def abort(self, request_id: str) -> EngineCoreOutput | None:
        seq = self.scheduler.remove(request_id)
        if seq is None:
            return None
        self.samplers.pop(request_id, None)
        seq.finish_reason = FinishReason.ABORT
        return self.scheduler.output(seq, (), self.now())

    def recover(self, timeout_s: float) -> bool:
        """After a stage failed: whether every stage answers again within timeout_s (then available)."""
        if self.executor.wait_ready(timeout_s):
            self.unavailable = None
        return self.unavailable is None

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._rejected)

    # -- the step --------------------------------------------------------------------------------------

    def step(self) -> list[EngineCoreOutput]:
        rejected, self._rejected = self._rejected, []
        scheduled = self.scheduler.schedule()
        if not scheduled.chunks:
            return rejected
        try:
            ran, failed = self._execute(scheduled.chunks)
        except StageUnavailableError as exc:
            # A stage elsewhere died: its chips come back empty, so every running request's KV cache is gone,
            # not only this step's. They fail; until `recover` the engine reports itself unavailable.
            self.unavailable = str(exc)
            return [self._fail(seq.request_id, exc) for seq in list(self.scheduler.running)]
        self.steps += 1
        outputs = rejected + [self._fail(request_id, exc) for request_id, exc in failed.items()]
        logprobs: dict[str, TokenLogprob] = {}
        sampled: list[int | None] = []
        done: list[int] = []
        for chunk in scheduled.chunks:
            token, cycles = None, 0
            if chunk.request_id in ran:
                logits, cycles = ran[chunk.request_id]
                if chunk.samples:
                    try:
                        sampler = self.samplers[chunk.request_id]
                        token = sampler.sample(logits)
                        if sampler.logprob is not None:
                            logprobs[chunk.request_id] = sampler.logprob
                    except Exception as exc:  # NaN logits, say: this request's failure, not the step's
                        outputs.append(self._fail(chunk.request_id, exc))
            sampled.append(token)
            done.append(cycles)
        if self._fault is not None:
            self._fault.check("step", np.asarray([t for c in scheduled.chunks for t in c.token_ids]))
        # Failed requests are out of the scheduler, so update() skips their chunks.
        outputs += self.scheduler.update(scheduled, StepOutput(tuple(sampled), tuple(done)))
        if logprobs:
            outputs = [
                replace(out, logprobs=(logprobs[out.request_id],))
                if out.new_token_ids and out.request_id in logprobs
                else out
                for out in outputs
            ]
        for out in outputs:
            if out.finished:
                self.samplers.pop(out.request_id, None)
        return outputs

    def _execute(
        self, chunks: tuple[ScheduledChunk, ...]
    ) -> tuple[dict[str, tuple[NDArray[np.float32], int]], dict[str, Exception]]:
        """Runs the chunks as one batch: each request's logits and the cycle its micro-batch left the
        pipeline. If the forward pass raises, each half runs again on its own, down to the requests that fail
        alone: one bad request fails by itself and every other one still gets this step's token (a batch and
        its parts compute bit-identical rows, and a failed pass never reached the timeline)."""
        try:
            batch, ready = self._batch(chunks)
            if self._fault is not None:
                self._fault.check("forward", batch.token_ids)
            result = self.executor.execute(batch, ready)
        except StageUnavailableError:
            raise  # no request's fault, and no half of the batch would run either
        except Exception as exc:
            if len(chunks) == 1:
                return {}, {chunks[0].request_id: exc}
            mid = len(chunks) // 2
            left, failed_left = self._execute(chunks[:mid])
            right, failed_right = self._execute(chunks[mid:])
            return left | right, failed_left | failed_right
        bounds = batch.micro_bounds
        ran: dict[str, tuple[NDArray[np.float32], int]] = {}
        for j, times in enumerate(result.times):
            for i in range(bounds[j], bounds[j + 1]):
                ran[chunks[i].request_id] = (result.logits[i], times.done)
        return ran, {}

    def _batch(self, chunks: tuple[ScheduledChunk, ...]) -> tuple[TokenBatch, list[int]]:
        ids: list[int] = []
        positions: list[int] = []
        seqs: list[SeqSlice] = []
        row = 0
        for c in chunks:
            n = len(c.token_ids)
            ids.extend(c.token_ids)
            positions.extend(range(c.start, c.start + n))
            seqs.append(SeqSlice(row, n, c.start, self.allocator.slots(list(c.block_ids), c.start + n)))
            row += n
        n_ctx = (sum(c.start for c in chunks) + row) // len(chunks)
        bounds = self.executor.micro_bounds([len(c.token_ids) for c in chunks], n_ctx)
        ready = [
            max(c.ready_cycles for c in chunks[bounds[j] : bounds[j + 1]]) for j in range(len(bounds) - 1)
        ]
        batch = TokenBatch(
            np.asarray(ids, dtype=np.int64), np.asarray(positions, dtype=np.int64), tuple(seqs), bounds
        )
        return batch, ready

    def fail(self, request_id: str, exc: BaseException) -> EngineCoreOutput:
        """Ends a request with an error, whether it is queued, running or not yet handed to the engine."""
        if self.scheduler.get(request_id) is None:
            return EngineCoreOutput(request_id, (), 0, 0, True, FinishReason.ERROR, error=_describe(exc))
        return self._fail(request_id, exc)

    def _fail(self, request_id: str, exc: BaseException) -> EngineCoreOutput:
        seq = self.scheduler.remove(request_id)
        assert seq is not None
        self.samplers.pop(request_id, None)
        seq.finish_reason = FinishReason.ERROR
        return self.scheduler.output(seq, (), self.now(), error=_describe(exc))

    # -- introspection ---------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        alloc = self.allocator
        used_fraction = alloc.used_blocks / alloc.n_blocks if alloc.n_blocks else 0.0
        timeline = self.executor.timeline
        chips = tuple(
            ChipStats(
                chip_id=chip.chip_id,
                capacity_bytes=chip.spec.sram_bytes,
                weight_bytes=chip.plan.bytes_of(RegionKind.WEIGHT),
                kv_bytes=chip.plan.bytes_of(RegionKind.KV),
                buffer_bytes=chip.plan.bytes_of(RegionKind.BUFFER),
                kv_used_bytes=int(chip.plan.bytes_of(RegionKind.KV) * used_fraction),
                busy_cycles=chip.busy_cycles,
                stage=chip.plan.stage,
            )
            for chip in self.executor.chips
        )
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_blocks_total=alloc.n_blocks,
            kv_blocks_used=alloc.used_blocks,
            emulated_cycles=timeline.end,
            steps=self.steps,
            chips=chips,
            clock_hz=self.system.clock_hz,
            stage_busy_cycles=tuple(timeline.busy),
            link_cycles=timeline.link_cycles,
            micro_batches=timeline.micro_batches,
            unavailable=self.unavailable,
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
