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
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.backend import KernelBackend, backend_for, default_backend
from lpu_runtime.checkpoint_source import CheckpointSource
from lpu_runtime.chip import Chip
from lpu_runtime.compiler import ChipPlan, Plan
from lpu_runtime.config import ChipSpec
from lpu_runtime.microbatch import MicroBatcher
from lpu_runtime.model import Checkpoint, TokenBatch
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


class ChipView(Protocol):
    """What the engine's stats read of a chip, wherever it runs."""

    @property
    def chip_id(self) -> int: ...
    @property
    def spec(self) -> ChipSpec: ...
    @property
    def plan(self) -> ChipPlan: ...
    @property
    def busy_cycles(self) -> int: ...


class StageRunner(Protocol):
    """Where the stage workers live and how a step's activations travel between them."""

    backend_name: str

    @property
    def chips(self) -> Sequence[ChipView]: ...

    def run(self, batch: TokenBatch) -> tuple[NDArray[np.float32], list[tuple[int, ...]]]:
        """The step through every stage: the last stage's logits and, per stage, its cycles per micro-batch."""
        ...

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether every stage answers within timeout_s (after one died and was restarted)."""
        ...

    def shutdown(self) -> None: ...


class LocalStages:
    """Stage workers in this process, run one after another on the whole step: all of the plan's stages, or
    (in a Ray actor, ray_stages.py) the ones one node holds."""

    def __init__(
        self,
        plan: Plan,
        checkpoint: Checkpoint,
        backend: KernelBackend | None = None,
        on_tensor: Callable[[LoadStep], None] | None = None,
        stages: Sequence[int] | None = None,
    ) -> None:
        backend = backend_for(plan.system.chip, backend or default_backend())
        self.backend_name = backend.name
        progress = _Progress(plan, on_tensor)
        indices = range(len(plan.stages)) if stages is None else stages
        self.workers = [StageWorker(plan, i, checkpoint, backend, progress) for i in indices]

    @property
    def chips(self) -> list[Chip]:
        return [chip for worker in self.workers for chip in worker.chips]

    def run(
        self, batch: TokenBatch, x: NDArray[np.float32] | None = None
    ) -> tuple[NDArray[np.float32], list[tuple[int, ...]]]:
        """x: the previous stage's activations when the first worker here is not the plan's first stage."""
        per_stage: list[tuple[int, ...]] = []
        for worker in self.workers:
            out = worker.execute(StageInput(batch, x))
            x = out.x
            per_stage.append(out.cycles)
        assert x is not None
        return x, per_stage

    def wait_ready(self, timeout_s: float) -> bool:
        return True  # in this process, a stage lives as long as the engine

    def shutdown(self) -> None:
        pass  # nothing outlives the process


class PipelineExecutor:
    """The step on the stage workers (`LocalStages` by default, or a `StageRunner` elsewhere, e.g. Ray
    actors: ray_stages.py); the timeline pipelines the micro-batches on the emulated clock."""

    def __init__(
        self,
        plan: Plan,
        weights: WeightSource,
        backend: KernelBackend | None = None,
        on_tensor: Callable[[LoadStep], None] | None = None,
        stages: Callable[[Plan], StageRunner] | None = None,
    ) -> None:
        """stages: builds the runner once the plan is checked; by default the workers run in this process."""
        checkpoint = weights.open()  # headers only; opened once here so in-process workers share it
        if checkpoint.config != plan.model:
            raise ValueError(
                f"checkpoint is {checkpoint.config.name!r} but the plan is for {plan.model.name!r}"
            )
        self.plan = plan
        self.stages = stages(plan) if stages else LocalStages(plan, checkpoint, backend, on_tensor)
        self.timeline = PipelineTimeline(len(plan.stages))
        self.micro_batcher = MicroBatcher(plan)

    @property
    def chips(self) -> Sequence[ChipView]:
        return self.stages.chips

    @property
    def local_chips(self) -> list[Chip]:
        """The chips themselves (their SRAM, their tensors), when the stages run in this process."""
        if not isinstance(self.stages, LocalStages):
            raise TypeError(f"the chips live in {type(self.stages).__name__}, not in this process")
        return self.stages.chips

    @property
    def n_stages(self) -> int:
        return len(self.plan.stages)

    def micro_bounds(self, token_counts: Sequence[int], n_ctx: int) -> tuple[int, ...]:
        """How to cut a step whose sequences compute these tokens at about n_ctx (see microbatch.py)."""
        return self.micro_batcher.choose(token_counts, n_ctx)

    def execute(self, batch: TokenBatch, ready: Sequence[int] | None = None) -> StepResult:
        """Runs one step; ready[j] is the cycle micro-batch j's inputs exist (its sequences' last tokens
        left the pipeline), by default 0."""
        self.check_buffers(batch)
        n_micro = len(batch.micro_tokens)
        ready = [0] * n_micro if ready is None else ready
        if len(ready) != n_micro:
            raise ValueError(f"{n_micro} micro-batches but {len(ready)} ready times")
        logits, per_stage = self.stages.run(batch)
        stage_cycles = tuple(tuple(s[j] for s in per_stage) for j in range(n_micro))
        hops = tuple(
            tuple(self.plan.transfer_cycles(i, n) for i in range(self.n_stages - 1))
            for n in batch.micro_tokens
        )
        times = tuple(self.timeline.run(ready[j], stage_cycles[j], hops[j]) for j in range(n_micro))
        return StepResult(logits, times, stage_cycles, hops)

    def wait_ready(self, timeout_s: float) -> bool:
        return self.stages.wait_ready(timeout_s)

    def check_buffers(self, batch: TokenBatch) -> None:
        """ValueError if the step is larger than the compiled activation buffers."""
        engine = self.plan.engine
        if batch.n_tokens > engine.max_num_batched_tokens or len(batch.seqs) > engine.max_num_seqs:
            raise ValueError(
                f"a step of {batch.n_tokens} tokens in {len(batch.seqs)} sequences exceeds the compiled buffers "
                f"({engine.max_num_batched_tokens} tokens, {engine.max_num_seqs} sequences)"
            )

    def shutdown(self) -> None:
        self.stages.shutdown()


def build_executor(
    plan: Plan,
    source: CheckpointSource,
    model_name: str,
    distributed: str = "local",
    ray_address: str | None = None,
) -> PipelineExecutor:
    """The executor `lpu serve` runs: stage workers in this process ("local") or Ray actors ("ray")."""
    if distributed == "ray":
        if plan.engine.prefill_on is not None:
            raise ValueError(
                "--prefill-on copies KV between chips of one process: it runs with local stages only"
            )
        from lpu_runtime.ray_stages import ray_stages  # the optional extra: imported only when asked for

        return PipelineExecutor(plan, source, stages=ray_stages(source, ray_address))
    if distributed != "local":
        raise ValueError(f"unknown distributed executor {distributed!r} (local or ray)")
    from lpu_runtime.loaders.progress import LoadProgress

    if plan.engine.prefill_on is not None:  # prefill-decode disaggregation: two pools of chips here
        from lpu_runtime.disaggregated import DisaggregatedExecutor
        from lpu_runtime.hardware import KvLink, gpu_server

        server = gpu_server(plan.engine.prefill_on)
        return DisaggregatedExecutor(plan, source, server, KvLink(), on_tensor=LoadProgress(model_name))
    return PipelineExecutor(plan, source, on_tensor=LoadProgress(model_name))


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
                    for s in plan.chip(c).shards
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
