"""Waiting and running queues, KV admission, and the token budget of each step (continuous batching)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from lpu_runtime.config import EngineConfig
from lpu_runtime.kv_cache import BlockAllocator
from lpu_runtime.sampler import Sampler
from lpu_runtime.stop import StopMatcher
from lpu_runtime.tokenizer import IncrementalDetokenizer
from lpu_runtime.types import FinishReason, GenerationRequest


@dataclass(eq=False)
class Sequence:
    """A request's state inside the engine."""

    request: GenerationRequest
    max_tokens: int  # resolved: the request's, or what the context leaves
    sampler: Sampler
    detokenizer: IncrementalDetokenizer
    stops: StopMatcher
    arrival: float  # host monotonic seconds
    output_ids: list[int] = field(default_factory=list)
    blocks: list[int] = field(
        default_factory=list
    )  # KV blocks, reserved for prompt + max_tokens at admission
    num_computed: int = 0  # tokens whose KV is in the cache
    scheduled_at: float | None = None
    first_token_at: float | None = None
    prompt_cycles: int = 0  # emulated cycles of the steps up to and including the first token
    completion_cycles: int = 0  # emulated cycles of the steps after it
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
class Scheduled:
    seq: Sequence
    n_tokens: int  # tokens this step computes, from seq.num_computed on

    @property
    def samples(self) -> bool:
        """True when this step reaches the sequence's last known token, so its logits give the next one."""
        return self.seq.num_computed + self.n_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(self, config: EngineConfig, allocator: BlockAllocator) -> None:
        if config.max_num_batched_tokens < config.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({config.max_num_batched_tokens}) must be at least max_num_seqs "
                f"({config.max_num_seqs}) so every running sequence can decode in one step"
            )
        self.config = config
        self.allocator = allocator
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, request_id: str) -> Sequence | None:
        """Takes a request out of either queue and frees its KV blocks."""
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return seq
        for seq in self.running:
            if seq.request_id == request_id:
                self.finish(seq)
                return seq
        return None

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.allocator.free(seq.blocks)
        seq.blocks = []

    def schedule(self) -> list[Scheduled]:
        """Admits waiting requests in arrival order while their whole KV fits, then fills the token budget:
        every decoding sequence's next token first, then prompt chunks."""
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            head = self.waiting[0]
            blocks = self.allocator.allocate(head.num_prompt + head.max_tokens)
            if blocks is None:
                break  # first come, first served: later requests do not overtake one waiting for KV
            head.blocks = blocks
            self.running.append(self.waiting.popleft())
        budget = self.config.max_num_batched_tokens
        out: list[Scheduled] = []
        for seq in self.running:
            if seq.num_computed >= seq.num_prompt:
                out.append(Scheduled(seq, 1))
                budget -= 1
        for seq in self.running:
            if seq.num_computed < seq.num_prompt and budget > 0:
                n = min(seq.num_prompt - seq.num_computed, budget)
                out.append(Scheduled(seq, n))
                budget -= n
        return out
