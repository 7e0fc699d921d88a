"""The engine step: schedule -> execute on the chip pipeline -> sample -> update.

`Engine` is single-threaded: only the engine thread (see async_engine.py) calls `step`, `add` and `abort`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from lpu_runtime.catalog import LoadedModel
from lpu_runtime.clock import SimClock
from lpu_runtime.compiler import Plan
from lpu_runtime.errors import ContextLengthExceededError, InvalidRequestError
from lpu_runtime.kv_cache import BlockAllocator
from lpu_runtime.model import SeqSlice, TokenBatch
from lpu_runtime.pipeline import Pipeline
from lpu_runtime.sampler import Sampler
from lpu_runtime.scheduler import Scheduled, Scheduler, Sequence
from lpu_runtime.sram import RegionKind
from lpu_runtime.stop import StopMatcher
from lpu_runtime.tokenizer import IncrementalDetokenizer
from lpu_runtime.types import (
    ChipStats,
    EmulatedTimings,
    EngineStats,
    FinishReason,
    GenerationRequest,
    HostTimings,
    RequestOutput,
)


class Engine:
    def __init__(
        self, model: LoadedModel, plan: Plan, pipeline: Pipeline, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.model = model
        self.plan = plan
        self.pipeline = pipeline
        self.clock = SimClock(plan.system.chip.clock_hz)
        self.allocator = BlockAllocator(plan.kv_blocks, plan.engine.kv_block_tokens)
        self.scheduler = Scheduler(plan.engine, self.allocator)
        self.now = now
        self.steps = 0
        self.stage_busy_cycles = [0] * len(plan.stages)  # cycles, summed over steps
        self.link_cycles = 0  # cycles, summed over steps
        tok = model.tokenizer
        self._banned = frozenset({tok.bos_id} if tok.bos_id is not None else ())

    # -- admission -------------------------------------------------------------------------------------

    def resolve_max_tokens(self, n_prompt: int, max_tokens: int | None, param: str = "messages") -> int:
        """The request's token budget, or ContextLengthExceededError if it can never fit."""
        context = self.plan.model.max_context
        kv_capacity = self.allocator.capacity_tokens
        limit = min(context, kv_capacity)
        what = "context length" if context <= kv_capacity else "KV-cache capacity of this system"
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

    def make_sequence(self, request: GenerationRequest) -> Sequence:
        """Validates a request and builds its state; raises before anything is queued."""
        vocab = self.plan.model.vocab_size
        bad = [t for t in request.prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError("prompt", f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
        max_tokens = self.resolve_max_tokens(len(request.prompt_token_ids), request.params.max_tokens)
        return Sequence(
            request=request,
            max_tokens=max_tokens,
            sampler=Sampler(request.params, vocab, banned_ids=self._banned),
            detokenizer=IncrementalDetokenizer(self.model.tokenizer),
            stops=StopMatcher(request.params.stop),
            arrival=self.now(),
        )

    def add(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self.scheduler.remove(request_id)
        if seq is None:
            return None
        seq.finish_reason = FinishReason.ABORT
        return self._output(seq, (), "")

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # -- the step --------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return []
        now = self.now()
        for s in scheduled:
            if s.seq.scheduled_at is None:
                s.seq.scheduled_at = now
        try:
            logits, cost = self.pipeline.forward(self._batch(scheduled))
        except Exception as exc:  # a failed step must not strand its requests: fail them, keep serving
            return [self._fail(s.seq, exc) for s in scheduled]
        self.clock.advance(cost.cycles)
        self.steps += 1
        for stage, cycles in enumerate(cost.stage_cycles):
            self.stage_busy_cycles[stage] += cycles
        self.link_cycles += cost.link_cycles
        outputs = []
        for i, s in enumerate(scheduled):
            seq = s.seq
            samples = s.samples
            seq.num_computed += s.n_tokens
            if seq.output_ids:
                seq.completion_cycles += cost.cycles
            else:
                seq.prompt_cycles += cost.cycles
            if samples:
                outputs.append(self._append(seq, seq.sampler.sample(logits[i])))
        return outputs

    def _batch(self, scheduled: list[Scheduled]) -> TokenBatch:
        ids: list[int] = []
        positions: list[int] = []
        seqs: list[SeqSlice] = []
        row = 0
        for s in scheduled:
            start = s.seq.num_computed
            ids.extend(s.seq.token(p) for p in range(start, start + s.n_tokens))
            positions.extend(range(start, start + s.n_tokens))
            slots = self.allocator.slots(s.seq.blocks, start + s.n_tokens)
            seqs.append(SeqSlice(row, s.n_tokens, start, slots))
            row += s.n_tokens
        return TokenBatch(np.asarray(ids, dtype=np.int64), np.asarray(positions, dtype=np.int64), tuple(seqs))

    def _append(self, seq: Sequence, token: int) -> RequestOutput:
        if seq.first_token_at is None:
            seq.first_token_at = self.now()
        seq.output_ids.append(token)
        params = seq.request.params
        text, hit_stop = seq.stops.push(seq.detokenizer.push(token))
        is_eos = not params.ignore_eos and token in self.model.tokenizer.eos_ids
        if hit_stop or is_eos or token in params.stop_token_ids:
            seq.finish_reason = FinishReason.STOP
        elif len(seq.output_ids) >= seq.max_tokens:
            seq.finish_reason = FinishReason.LENGTH
        if seq.finish_reason is not None:
            if not hit_stop:
                tail, hit_stop = seq.stops.push(seq.detokenizer.flush())
                text += tail if hit_stop else tail + seq.stops.flush()
                if hit_stop:
                    seq.finish_reason = FinishReason.STOP
            self.scheduler.finish(seq)
        return self._output(seq, (token,), text)

    def fail(self, request_id: str, exc: BaseException) -> RequestOutput:
        """Ends a request with an error, whether it is queued, running or not yet handed to the engine."""
        seq = self.scheduler.remove(request_id)
        if seq is None:
            return RequestOutput(request_id, (), "", 0, 0, True, FinishReason.ERROR, error=_describe(exc))
        return self._fail(seq, exc)

    def _fail(self, seq: Sequence, exc: BaseException) -> RequestOutput:
        self.scheduler.remove(seq.request_id)
        seq.finish_reason = FinishReason.ERROR
        return self._output(seq, (), "", error=_describe(exc))

    def _output(
        self, seq: Sequence, new_ids: tuple[int, ...], text: str, error: str | None = None
    ) -> RequestOutput:
        finished = seq.finish_reason is not None
        host = HostTimings()
        if finished:
            end = self.now()
            scheduled = seq.scheduled_at if seq.scheduled_at is not None else end
            first = seq.first_token_at if seq.first_token_at is not None else end
            host = HostTimings(scheduled - seq.arrival, first - scheduled, end - first)
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=new_ids,
            new_text=text,
            prompt_tokens=seq.num_prompt,
            completion_tokens=len(seq.output_ids),
            finished=finished,
            finish_reason=seq.finish_reason,
            host=host,
            emulated=EmulatedTimings(
                prompt_cycles=seq.prompt_cycles,
                completion_cycles=seq.completion_cycles,
                clock_hz=self.clock.clock_hz,
                n_chips=self.plan.n_chips_used,
                n_stages=len(self.plan.stages),
            ),
            error=error,
        )

    # -- introspection ---------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        alloc = self.allocator
        used_fraction = alloc.used_blocks / alloc.n_blocks if alloc.n_blocks else 0.0
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
            for chip in self.pipeline.chips
        )
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_blocks_total=alloc.n_blocks,
            kv_blocks_used=alloc.used_blocks,
            emulated_cycles=self.clock.cycles,
            steps=self.steps,
            chips=chips,
            clock_hz=self.clock.clock_hz,
            stage_busy_cycles=tuple(self.stage_busy_cycles),
            link_cycles=self.link_cycles,
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
