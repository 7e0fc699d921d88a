"""Waiting and running queues, KV admission and the token budget of each step (continuous batching).

The scheduler speaks plain data at both ends, as vLLM v1's does: `schedule() -> SchedulerOutput` says which
tokens of which requests the next step computes, and `update(SchedulerOutput, StepOutput)` takes the tokens
the step sampled and the emulated cycles its micro-batches left the pipeline, advances every request and
returns what each one produced. Neither touches a model, so both are tested with hand-built records.
Tokens only: text (detokenization, stop strings) is the output processor's job, outside the step loop.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from lpu_runtime.config import EngineConfig
from lpu_runtime.kv_cache import BlockAllocator
from lpu_runtime.types import EngineCoreOutput, FinishReason, GenerationRequest, HostTimings


@dataclass(eq=False)
class Sequence:
    """A request's state inside the engine."""

    request: GenerationRequest
    max_tokens: int  # resolved: the request's, or what the context leaves
    arrival: float  # host monotonic seconds
    arrival_cycles: int = 0  # emulated cycle it reached the engine
    output_ids: list[int] = field(default_factory=list)
    blocks: list[int] = field(
        default_factory=list
    )  # KV blocks, reserved for prompt + max_tokens at admission
    num_computed: int = 0  # tokens whose KV is in the cache
    scheduled_at: float | None = None  # host seconds of its first step
    first_token_at: float | None = None
    ready_cycles: int = 0  # emulated cycle its latest token left the pipeline (or its arrival)
    first_token_cycles: int | None = None
    last_token_cycles: int = 0
    finish_reason: FinishReason | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_prompt(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.num_prompt + len(self.output_ids)

    def token(self, index: int) -> int:
        n = self.num_prompt
        return self.request.prompt_token_ids[index] if index < n else self.output_ids[index - n]


@dataclass(frozen=True)
class ScheduledChunk:
    """The tokens of one request a step computes: a decode token or a piece of its prompt."""

    request_id: str
    start: int  # tokens already in its KV cache: the position of the first token computed
    token_ids: tuple[int, ...]  # the tokens computed, at positions start, start + 1, ...
    block_ids: tuple[int, ...]  # its KV-cache blocks
    samples: bool  # the chunk reaches its last known token, so the step samples its next one
    ready_cycles: int  # emulated cycle its inputs exist (its previous token left the pipeline)


@dataclass(frozen=True)
class SchedulerOutput:
    chunks: tuple[ScheduledChunk, ...]  # decodes first, then prompt chunks, each in running order
    admitted: tuple[str, ...] = ()  # requests moved from waiting to running by this schedule

    @property
    def n_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)


@dataclass(frozen=True)
class StepOutput:
    """What the step produced, per chunk of the SchedulerOutput it ran."""

    sampled: tuple[int | None, ...]  # the next token of each chunk that samples, else None
    done_cycles: tuple[int, ...]  # emulated cycle each chunk's micro-batch left the last stage


class Scheduler:
    def __init__(
        self,
        config: EngineConfig,
        allocator: BlockAllocator,
        eos_ids: Collection[int] = (),
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.max_num_batched_tokens < config.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({config.max_num_batched_tokens}) must be at least max_num_seqs "
                f"({config.max_num_seqs}) so every running sequence can decode in one step"
            )
        self.config = config
        self.allocator = allocator
        self.eos_ids = frozenset(eos_ids)
        self.now = now
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}

    def add(self, seq: Sequence) -> None:
        if seq.request_id in self._by_id:
            raise ValueError(f"request id {seq.request_id!r} is already scheduled")
        seq.ready_cycles = seq.arrival_cycles
        self._by_id[seq.request_id] = seq
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def get(self, request_id: str) -> Sequence | None:
        return self._by_id.get(request_id)

    def remove(self, request_id: str) -> Sequence | None:
        """Takes a request out of either queue and frees its KV blocks (an abort, or a failure)."""
        seq = self._by_id.pop(request_id, None)
        if seq is None:
            return None
        if seq in self.running:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.allocator.free(seq.blocks)
        seq.blocks = []
        return seq

    def schedule(self) -> SchedulerOutput:
        """Admits waiting requests in arrival order while their whole KV (prompt + max_tokens) fits, then fills
        the token budget: every decoding sequence's next token first, then prompt chunks."""
        admitted = []
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            head = self.waiting[0]
            blocks = self.allocator.allocate(head.num_prompt + head.max_tokens)
            if blocks is None:
                break  # first come, first served: later requests do not overtake one waiting for KV
            head.blocks = blocks
            self.running.append(self.waiting.popleft())
            admitted.append(head.request_id)
        budget = self.config.max_num_batched_tokens
        now = self.now()
        chunks: list[ScheduledChunk] = []
        for seq in self.running:
            if seq.num_computed >= seq.num_prompt:
                chunks.append(self._chunk(seq, 1, now))
                budget -= 1
        for seq in self.running:
            if seq.num_computed < seq.num_prompt and budget > 0:
                n = min(seq.num_prompt - seq.num_computed, budget)
                chunks.append(self._chunk(seq, n, now))
                budget -= n
        return SchedulerOutput(tuple(chunks), tuple(admitted))

    def _chunk(self, seq: Sequence, n: int, now: float) -> ScheduledChunk:
        if seq.scheduled_at is None:
            seq.scheduled_at = now
        start = seq.num_computed
        return ScheduledChunk(
            request_id=seq.request_id,
            start=start,
            token_ids=tuple(seq.token(p) for p in range(start, start + n)),
            block_ids=tuple(seq.blocks),
            samples=start + n == seq.num_tokens,
            ready_cycles=seq.ready_cycles,
        )

    def update(self, scheduled: SchedulerOutput, step: StepOutput) -> list[EngineCoreOutput]:
        """Advances every request the step ran; returns an output for each that got a token."""
        now = self.now()
        outputs = []
        for chunk, token, done in zip(scheduled.chunks, step.sampled, step.done_cycles, strict=True):
            seq = self._by_id.get(chunk.request_id)
            if seq is None or seq.num_computed != chunk.start:
                continue  # aborted (or rescheduled) while the step ran: nothing of it to keep
            seq.num_computed += len(chunk.token_ids)
            seq.ready_cycles = done
            if token is None:
                continue
            if seq.first_token_at is None:
                seq.first_token_at = now
                seq.first_token_cycles = done
            seq.last_token_cycles = done
            seq.output_ids.append(token)
            params = seq.request.params
            if (not params.ignore_eos and token in self.eos_ids) or token in params.stop_token_ids:
                seq.finish_reason = FinishReason.STOP
            elif len(seq.output_ids) >= seq.max_tokens:
                seq.finish_reason = FinishReason.LENGTH
            if seq.finish_reason is not None:
                self.remove(seq.request_id)
            outputs.append(self.output(seq, (token,), now))
        return outputs

    def output(
        self, seq: Sequence, new_ids: tuple[int, ...], now: float, error: str | None = None
    ) -> EngineCoreOutput:
        scheduled = seq.scheduled_at if seq.scheduled_at is not None else now
        first = seq.first_token_at if seq.first_token_at is not None else now
        first_cycles = seq.first_token_cycles
        return EngineCoreOutput(
            request_id=seq.request_id,
            new_token_ids=new_ids,
            prompt_tokens=seq.num_prompt,
            completion_tokens=len(seq.output_ids),
            finished=seq.finish_reason is not None,
            finish_reason=seq.finish_reason,
            host=HostTimings(scheduled - seq.arrival, first - scheduled, now - first),
            prompt_cycles=0 if first_cycles is None else first_cycles - seq.arrival_cycles,
            completion_cycles=0 if first_cycles is None else seq.last_token_cycles - first_cycles,
            error=error,
        )
