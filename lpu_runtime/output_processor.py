"""The output side of a request: token ids from the engine become text, cut at the first stop string.

This runs where the request is consumed (the server's event loop), not in the engine's step loop, as vLLM v1's
output processor does: detokenizing never delays a step. When a stop string matches, the request is finished
here and the caller aborts it in the engine, which may already have computed a token or two beyond it; those
are dropped, and the counts reported are those of the tokens up to the stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from lpu_runtime import perfmodel
from lpu_runtime.compiler import Plan
from lpu_runtime.config import ChipSpec, ModelConfig
from lpu_runtime.hardware import KvLink, gpu_server
from lpu_runtime.stop import StopMatcher
from lpu_runtime.tokenizer import IncrementalDetokenizer, Tokenizer
from lpu_runtime.types import EmulatedTimings, EngineCoreOutput, FinishReason, RequestOutput, SamplingParams


@dataclass(frozen=True)
class Disaggregation:
    """Prompts prefilled on a GPU server, their KV moved to the LPU chips over `link` (disaggregated.py)."""

    server: str  # the prefill server's name, as x_lpu reports it
    link: KvLink
    chip: ChipSpec
    model: ModelConfig

    def kv_transfer_cycles(self, n_prompt: int) -> int:
        return perfmodel.kv_transfer_cycles(self.chip, self.link, self.model, n_prompt)


@dataclass(frozen=True)
class EmulatedSystem:
    """What every request's emulated timings are reported against."""

    clock_hz: int
    n_chips: int
    n_stages: int
    disaggregation: Disaggregation | None = None

    @classmethod
    def of(cls, plan: Plan) -> EmulatedSystem:
        split = None
        if plan.engine.prefill_on is not None:
            server = gpu_server(plan.engine.prefill_on).name
            split = Disaggregation(server, KvLink(), plan.system.chip, plan.model)
        return cls(plan.system.chip.clock_hz, plan.n_chips_used, len(plan.stages), split)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, params: SamplingParams, system: EmulatedSystem) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stops = StopMatcher(params.stop)
        self.system = system
        self.finished = False
        self.min_tokens = params.min_tokens
        self.generated = 0

    def process(self, out: EngineCoreOutput) -> RequestOutput:
        """The request's increment for one engine output. After a stop string matched, `finished` is set and
        the caller must abort the request in the engine."""
        if self.finished:
            raise ValueError(f"request {out.request_id} already finished")
        text, hit_stop, used = "", False, 0
        for token in out.new_token_ids:
            self.generated += 1
            piece = self.detokenizer.push(token)
            if self.generated < self.min_tokens:
                text += piece  # vLLM's min_tokens: no stop string ends a request before it either
            else:
                piece, hit_stop = self.stops.push(piece)
                text += piece
            used += 1
            if hit_stop:
                break
        dropped = len(out.new_token_ids) - used  # tokens past a stop string
        reason = FinishReason.STOP if hit_stop else out.finish_reason
        if out.finished and not hit_stop and out.finish_reason is not FinishReason.ERROR:
            tail, hit_stop = self.stops.push(self.detokenizer.flush())
            text += tail if hit_stop else tail + self.stops.flush()
            if hit_stop:
                reason = FinishReason.STOP
        self.finished = out.finished or hit_stop
        s = self.system
        return RequestOutput(
            request_id=out.request_id,
            new_token_ids=out.new_token_ids[:used],
            logprobs=out.logprobs[:used],
            new_text=text,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens - dropped,
            finished=self.finished,
            finish_reason=reason if self.finished else None,
            host=out.host,
            emulated=EmulatedTimings(
                out.prompt_cycles,
                out.completion_cycles,
                s.clock_hz,
                s.n_chips,
                s.n_stages,
                None if s.disaggregation is None else s.disaggregation.server,
                0 if s.disaggregation is None else s.disaggregation.kv_transfer_cycles(out.prompt_tokens),
            ),
            error=out.error,
        )
