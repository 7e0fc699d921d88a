"""The pipeline executor: stage workers run a step's micro-batches, the timeline places them on the clock.

The engine hands the executor one step: a token batch and, for each of its micro-batches, the cycle its
inputs exist. The host runs the stages one after another over the whole step (numpy is fastest on one large
batch; every row's result is independent of the others'), each op charging every micro-batch its own cycles;
the timeline then places the micro-batches one behind another through the stages, up to n_stages in flight.
So the overlap that matters, the emulated one, comes out of the schedule that ran, while the host computes
each weight once per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.backend import KernelBackend, default_backend
from lpu_runtime.chip import Chip
from lpu_runtime.compiler import Plan
from lpu_runtime.microbatch import MicroBatcher
from lpu_runtime.model import TokenBatch
from lpu_runtime.sram import RegionKind
from lpu_runtime.timeline import MicroBatchTimes, PipelineTimeline
from lpu_runtime.worker import StageInput, StageWorker, TensorLoaded, WeightSource


@dataclass(frozen=True)
class LoadStep:
    """Progress of filling the chips, reported after each tensor."""

    tensor: str
    nbytes: int  # bytes of float32 read for this tensor
    tensors_done: int
    tensors_total: int
    chips_filled: int  # chips whose every weight is in place
    chips_total: int


@dataclass(frozen=True)
class StepResult:
    logits: NDArray[np.float32]  # (n_seqs, vocab) at each sequence's last token
    times: tuple[MicroBatchTimes, ...]  # per micro-batch
    stage_cycles: tuple[tuple[int, ...], ...]  # [micro-batch][stage]: cycles of the stage's busiest chip
    hop_cycles: tuple[tuple[int, ...], ...]  # [micro-batch][boundary]


class PipelineExecutor:
    """Stage workers in this process, run one after another; the timeline pipelines them."""

    def __init__(
        self,
        plan: Plan,
        weights: WeightSource,
        backend: KernelBackend | None = None,
        on_tensor: Callable[[LoadStep], None] | None = None,
    ) -> None:
        checkpoint = weights.open()  # opened once here; every in-process worker reads its rows from it
        if checkpoint.config != plan.model:
            raise ValueError(
                f"checkpoint is {checkpoint.config.name!r} but the plan is for {plan.model.name!r}"
            )
        # The emulator's decoder runs dense layers on whole KV heads; the planner places more (`lpu plan`).
        if plan.model.is_moe or any(s.width > plan.model.n_kv_heads for s in plan.stages if s.layers):
            raise ValueError(
                f"{plan.model.name}: the emulator runs dense layers split over at most n_kv_heads "
                f"({plan.model.n_kv_heads}) chips; this plan is for `lpu plan` only"
            )
        self.plan = plan
        self.backend = backend or default_backend()
        progress = _Progress(plan, on_tensor)
        self.workers = [
            StageWorker(plan, i, checkpoint, self.backend, progress) for i in range(len(plan.stages))
        ]
        self.timeline = PipelineTimeline(len(plan.stages))
        self.micro_batcher = MicroBatcher(plan)

    @property
    def chips(self) -> list[Chip]:
        return [chip for worker in self.workers for chip in worker.chips]

    @property
    def n_stages(self) -> int:
        return len(self.workers)

    def micro_bounds(self, token_counts: Sequence[int], n_ctx: int) -> tuple[int, ...]:
        """How to cut a step whose sequences compute these tokens at about n_ctx (see microbatch.py)."""
        return self.micro_batcher.choose(token_counts, n_ctx)

    def execute(self, batch: TokenBatch, ready: Sequence[int] | None = None) -> StepResult:
        """Runs one step; ready[j] is the cycle micro-batch j's inputs exist (its sequences' last tokens
        left the pipeline), by default 0."""
        engine = self.plan.engine
        if batch.n_tokens > engine.max_num_batched_tokens or len(batch.seqs) > engine.max_num_seqs:
            raise ValueError(
                f"a step of {batch.n_tokens} tokens in {len(batch.seqs)} sequences exceeds the compiled buffers "
                f"({engine.max_num_batched_tokens} tokens, {engine.max_num_seqs} sequences)"
            )
        n_micro = len(batch.micro_tokens)
        ready = [0] * n_micro if ready is None else ready
        if len(ready) != n_micro:
            raise ValueError(f"{n_micro} micro-batches but {len(ready)} ready times")
        x = None
        per_stage: list[tuple[int, ...]] = []
        for worker in self.workers:
            out = worker.execute(StageInput(batch, x))
            x, cycles = out.x, out.cycles
            per_stage.append(cycles)
        assert x is not None
        stage_cycles = tuple(tuple(s[j] for s in per_stage) for j in range(n_micro))
        hops = tuple(
            tuple(self.plan.transfer_cycles(i, n) for i in range(self.n_stages - 1))
            for n in batch.micro_tokens
        )
        times = tuple(self.timeline.run(ready[j], stage_cycles[j], hops[j]) for j in range(n_micro))
        return StepResult(x, times, stage_cycles, hops)


class _Progress:
    """Turns each worker's per-tensor reports into the whole system's progress."""

    def __init__(self, plan: Plan, on_tensor: Callable[[LoadStep], None] | None) -> None:
        self.on_tensor = on_tensor
        # each worker reads a tensor once for all the chips of its stage
        self.total = sum(
            len(
                {
                    s.tensor
                    for c in stage.chips
                    for s in plan.chips[c].shards
                    if s.kind is RegionKind.WEIGHT and not s.tensor.endswith(".scale")
                }
            )
            for stage in plan.stages
        )
        self.chips_total = len(plan.chips)
        self.done = self.filled = 0

    def __call__(self, step: TensorLoaded) -> None:
        self.done += 1
        self.filled += step.chips_filled
        if self.on_tensor is not None:
            self.on_tensor(
                LoadStep(step.tensor, step.nbytes, self.done, self.total, self.filled, self.chips_total)
            )
