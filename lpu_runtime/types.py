"""Plain-data contracts at the runtime's boundaries: what the server submits and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

MAX_TOP_LOGPROBS = 20  # the OpenAI API's limit


class FinishReason(StrEnum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"  # the client went away or the request was cancelled
    ERROR = "error"  # the engine failed while running it


@dataclass(frozen=True)
class GrammarSpec:
    """A constraint on the generated text, as plain data (it travels to the engine process, which compiles it
    once per distinct spec: grammar.py). `source` is a JSON Schema as JSON text, or a Lark grammar in
    llguidance's dialect (JSON Schemas inline with `%json`)."""

    kind: Literal["json_schema", "lark"]
    source: str
    lenient: bool = False  # json_schema: ignore keywords the compiler does not implement instead of refusing


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. Validation names the offending field so the server can report it."""

    max_tokens: int | None = None  # None: until EOS or the context limit
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    seed: int | None = None  # None: a fresh random seed per request
    stop: tuple[str, ...] = ()  # stop strings; the matched text is not returned
    stop_token_ids: tuple[int, ...] = ()  # extra token ids that end generation like EOS
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # vLLM's / HF's: the logits of tokens in the prompt or the output divided (> 0) or multiplied (< 0) by it
    repetition_penalty: float = 1.0
    # EOS and stop_token_ids are refused, and stop strings ignored, before this many tokens
    min_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    logprobs: int | None = None  # None: none; k: the sampled token's logprob and the k most likely tokens'
    grammar: GrammarSpec | None = None  # constrained decoding: only tokens the grammar allows are sampled

    def __post_init__(self) -> None:
        from lpu_runtime.errors import InvalidRequestError

        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequestError("max_tokens", f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidRequestError("temperature", f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequestError("top_k", f"top_k must be 0 (off) or positive, got {self.top_k}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise InvalidRequestError(name, f"{name} must be in [-2, 2], got {value}")
        if len(self.stop) > 4:
            raise InvalidRequestError("stop", f"at most 4 stop sequences are allowed, got {len(self.stop)}")
        if any(s == "" for s in self.stop):
            raise InvalidRequestError("stop", "stop sequences must not be empty")
        if self.repetition_penalty <= 0.0:
            raise InvalidRequestError(
                "repetition_penalty", f"repetition_penalty must be positive, got {self.repetition_penalty}"
            )
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise InvalidRequestError(
                "min_tokens", f"min_tokens must be in [0, max_tokens], got {self.min_tokens}"
            )
        for _, bias in self.logit_bias:
            if not -100.0 <= bias <= 100.0:
                raise InvalidRequestError(
                    "logit_bias", f"logit_bias values must be in [-100, 100], got {bias}"
                )
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(
                "top_logprobs", f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """A tokenized request as the server submits it to the engine."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    user: str = "anonymous"


@dataclass(frozen=True)
class HostTimings:
    """Wall-clock seconds on the host (time.monotonic), as the Groq API reports them."""

    queue_time: float = 0.0  # arrival -> first scheduled
    prompt_time: float = 0.0  # first scheduled -> first token sampled
    completion_time: float = 0.0  # first token -> finished

    @property
    def total_time(self) -> float:
        return self.queue_time + self.prompt_time + self.completion_time


@dataclass(frozen=True)
class EmulatedTimings:
    """What the emulated LPU hardware would have taken, from the simulated clock only."""

    prompt_cycles: int = 0  # from its arrival to its first token leaving the pipeline (queueing included)
    completion_cycles: int = 0  # from its first token to its latest, on the pipelined schedule
    clock_hz: int = 1
    n_chips: int = 1
    n_stages: int = 1
    # Prefill-decode disaggregation: the GPU server the prompt ran on (None: the LPU chips), and the cycles
    # its KV took to reach the LPUs, part of the completion time (it delays the second token).
    prefill_on: str | None = None
    kv_transfer_cycles: int = 0

    @property
    def prompt_time(self) -> float:
        return self.prompt_cycles / self.clock_hz  # seconds

    @property
    def kv_transfer_time(self) -> float:
        return self.kv_transfer_cycles / self.clock_hz  # seconds

    @property
    def completion_time(self) -> float:
        return self.completion_cycles / self.clock_hz  # seconds


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log probability under the distribution it was drawn from, and the `top` most likely
    tokens of that distribution (most likely first; only tokens it could draw)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class EngineCoreOutput:
    """What the engine's step loop produces for a request: tokens and timings, no text (the output processor
    detokenizes and applies stop strings outside the loop)."""

    request_id: str
    new_token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int  # total generated so far
    finished: bool = False
    finish_reason: FinishReason | None = None
    host: HostTimings = field(default_factory=HostTimings)  # so far
    prompt_cycles: int = 0  # emulated: arrival -> first token left the pipeline
    completion_cycles: int = 0  # emulated: first token -> latest token
    error: str | None = None  # set with FinishReason.ERROR
    logprobs: tuple[TokenLogprob, ...] = ()  # one per new token, when the request asked for logprobs


@dataclass(frozen=True)
class RequestOutput:
    """One increment of a request's generation: the tokens and text since the previous one."""

    request_id: str
    new_token_ids: tuple[int, ...]
    new_text: str
    prompt_tokens: int
    completion_tokens: int  # total generated so far
    finished: bool = False
    finish_reason: FinishReason | None = None
    host: HostTimings = field(default_factory=HostTimings)
    emulated: EmulatedTimings = field(default_factory=EmulatedTimings)
    error: str | None = None  # set with FinishReason.ERROR
    logprobs: tuple[TokenLogprob, ...] = ()  # one per new token, when the request asked for logprobs

    @property
    def emulated_tokens_per_second(self) -> float:
        """Decode speed the hardware would give this user (tokens after the first / decode time)."""
        if self.completion_tokens <= 1 or self.emulated.completion_cycles == 0:
            return 0.0
        return (self.completion_tokens - 1) / self.emulated.completion_time


@dataclass(frozen=True)
class ChipStats:
    chip_id: int
    capacity_bytes: int
    weight_bytes: int  # int8 weights and their fp32 scales, norms, embeddings
    kv_bytes: int  # KV cache reservation
    buffer_bytes: int  # activation buffers
    kv_used_bytes: int  # part of the KV reservation held by running requests
    busy_cycles: int  # cycles this chip spent computing since start
    stage: int = 0  # the pipeline stage the chip belongs to

    @property
    def used_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.buffer_bytes


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_blocks_total: int
    kv_blocks_used: int
    emulated_cycles: int  # the simulated clock: the latest cycle a micro-batch left the pipeline
    steps: int
    chips: tuple[ChipStats, ...] = ()
    clock_hz: int = 1  # the emulated chips' clock
    # cycles each pipeline stage computed, summed over micro-batches; stage_busy_cycles[i] / emulated_cycles
    # is stage i's occupancy on the pipelined schedule (1 - it: its bubble fraction, idle time included)
    stage_busy_cycles: tuple[int, ...] = ()
    link_cycles: int = 0  # cycles spent on hops between stages, summed over steps
    micro_batches: int = 0  # micro-batches that went through the pipeline
    unavailable: str | None = None  # why a pipeline stage is down (a dead Ray actor) until it is back


@dataclass(frozen=True)
class ModelInfo:
    """What /v1/models says about the served model."""

    id: str
    description: str
    max_context: int  # tokens
    vocab_size: int
    n_params: int
    n_chips: int
    n_stages: int
    chip_name: str
    created: int  # unix seconds when the engine was built
