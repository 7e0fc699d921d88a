"""Prefill-decode disaggregation: prompts on a prefill pool timed as GPU servers, decode on the LPU pipeline.

The engine runs as always; the executor sends each sequence of a step to one of two pools of emulated chips
compiled from the same plan: a decoding token (one token past the prompt's start) to the decode pool, the
LPU pipeline on its own timeline; a prompt chunk to the prefill pool, whose time is the GPU server's
(`perfmodel.gpu_prefill_cycles`, in the LPU's cycles) on a timeline of its own: one prefill step at a time.
Both pools compute with the same int8 kernels, so the tokens are those colocated serving gives; only the
clock differs.

Each pool holds its own KV cache. A sequence's KV moves to the pool that runs it next: when its first token
is decoded, the prompt's KV is copied from the prefill pool's chips into the decode pool's (SRAM to SRAM, the
bytes the GPUs would send) and the micro-batch waits for the transfer (`perfmodel.kv_transfer_cycles` over the
`KvLink`). The first token comes from the prefill pool; the second waits for the KV: the planner's
`lpu plan --prefill-on` figures (`plan.gpu_prefill_cycles`, `PrefillAnswer.kv_transfer_s`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lpu_runtime import perfmodel
from lpu_runtime.backend import KernelBackend
from lpu_runtime.chip import Chip
from lpu_runtime.compiler import Plan
from lpu_runtime.executor import LoadStep, LocalStages, PipelineExecutor, StepResult
from lpu_runtime.hardware import GpuServer, KvLink
from lpu_runtime.model import SeqSlice, TokenBatch
from lpu_runtime.sram import RegionKind
from lpu_runtime.timeline import MicroBatchTimes, PipelineTimeline
from lpu_runtime.worker import WeightSource

PREFILL, DECODE = 0, 1  # the pools, as indices


class PrefillTimeline(PipelineTimeline):
    """The decode pipeline's timeline, and the prefill server, which takes one prefill step at a time."""

    def __init__(self, n_stages: int) -> None:
        super().__init__(n_stages)
        self.prefill_free = 0  # cycle the prefill server can take its next step
        self.prefill_busy = 0  # cycles it computed, summed

    def run_prefill(self, ready: int, cycles: int) -> MicroBatchTimes:
        entry = max(ready, self.prefill_free)
        done = self.prefill_free = entry + cycles
        self.prefill_busy += cycles
        self.now, self.end = max(self.now, entry), max(self.end, done)
        self.micro_batches += 1
        return MicroBatchTimes(entry, done)


def decodes(seq: SeqSlice) -> bool:
    """Whether the decode pool runs it: one token past the start (a prompt's last lone token too, exactly
    as well: the decode pool then receives the KV before it)."""
    return seq.n_tokens == 1 and seq.start_pos > 0


class DisaggregatedExecutor(PipelineExecutor):
    def __init__(
        self,
        plan: Plan,
        weights: WeightSource,
        server: GpuServer,
        link: KvLink,
        backend: KernelBackend | None = None,
        on_tensor: Callable[[LoadStep], None] | None = None,
    ) -> None:
        super().__init__(plan, weights, backend, on_tensor)  # the decode pool
        assert isinstance(self.stages, LocalStages), "the pools copy KV between chips of this process"
        self.decode_stages: LocalStages = self.stages
        self.prefill_stages = LocalStages(plan, weights.open(), backend, on_tensor)
        self.server, self.link = server, link
        self.timeline: PrefillTimeline = PrefillTimeline(len(plan.stages))
        # per sequence (its first KV slot): how many leading positions' KV each pool holds
        self.resident: dict[int, list[int]] = {}

    def micro_bounds(self, token_counts: Sequence[int], n_ctx: int) -> tuple[int, ...]:
        """The decodes (the scheduler puts them first) in the pipeline's micro-batches, the prompt chunks
        after them in one micro-batch for the prefill server."""
        n_dec = next((i for i, t in enumerate(token_counts) if t != 1), len(token_counts))
        head = super().micro_bounds(token_counts[:n_dec], n_ctx) if n_dec else (0,)
        return head if n_dec == len(token_counts) else (*head, len(token_counts))

    def execute(self, batch: TokenBatch, ready: Sequence[int] | None = None) -> StepResult:
        n_micro = len(batch.micro_tokens)
        ready = list(ready) if ready is not None else [0] * n_micro
        if len(ready) != n_micro:
            raise ValueError(f"{n_micro} micro-batches but {len(ready)} ready times")
        self.check_buffers(batch)
        pool_of = [DECODE if decodes(s) else PREFILL for s in batch.seqs]
        bounds = batch.micro_bounds
        for j in range(n_micro):  # each sequence's KV to the pool that runs it; the micro-batch waits for it
            moved = [self._make_resident(batch.seqs[i], pool_of[i]) for i in range(bounds[j], bounds[j + 1])]
            if any(moved):
                ready[j] += perfmodel.kv_transfer_cycles(
                    self.plan.system.chip, self.link, self.plan.model, max(moved)
                )
        logits: np.ndarray | None = None
        parts: list[dict[int, MicroBatchTimes]] = [{}, {}]  # per pool: original micro-batch -> its times
        stage_cycles = [(0,) * self.n_stages] * n_micro
        hops = [(0,) * (self.n_stages - 1)] * n_micro
        for pool in (PREFILL, DECODE):
            keep = [i for i, p in enumerate(pool_of) if p == pool]
            if not keep:
                continue
            sub = batch.subset(keep)
            runner = self.prefill_stages if pool == PREFILL else self.decode_stages
            out, per_stage = runner.run(sub)
            if logits is None:
                logits = np.empty((len(batch.seqs), out.shape[1]), dtype=out.dtype)
            logits[keep] = out
            for s in sub.seqs:
                self.resident[int(s.kv_slots[0])][pool] = s.start_pos + s.n_tokens
            micro = [j for j in range(n_micro) if any(bounds[j] <= i < bounds[j + 1] for i in keep)]
            for k, j in enumerate(micro):
                if pool == PREFILL:
                    seqs = sub.seqs[sub.micro_bounds[k] : sub.micro_bounds[k + 1]]
                    cycles = perfmodel.gpu_prefill_cycles(
                        self.plan.system.chip,
                        self.server,
                        self.plan.model,
                        sub.micro_tokens[k],
                        max(s.start_pos + s.n_tokens for s in seqs),
                        len(seqs),
                    )
                    parts[pool][j] = self.timeline.run_prefill(ready[j], cycles)
                else:
                    stage_cycles[j] = tuple(s[k] for s in per_stage)
                    hops[j] = tuple(
                        self.plan.transfer_cycles(i, sub.micro_tokens[k]) for i in range(self.n_stages - 1)
                    )
                    parts[pool][j] = self.timeline.run(ready[j], stage_cycles[j], hops[j])
        assert logits is not None
        times = tuple(
            MicroBatchTimes(min(t.entry for t in both), max(t.done for t in both))
            for both in ([p[j] for p in parts if j in p] for j in range(n_micro))
        )
        return StepResult(logits, times, tuple(stage_cycles), tuple(hops))

    def _make_resident(self, seq: SeqSlice, pool: int) -> int:
        """Copies the KV of seq's earlier positions that `pool` lacks from the other pool; returns the tokens
        moved (0 when the pool holds them already)."""
        key = int(seq.kv_slots[0])
        if seq.start_pos == 0 or key not in self.resident:
            self.resident[key] = [0, 0]  # a new sequence (its first block may have served another before)
        held = self.resident[key][pool]
        if held >= seq.start_pos:
            return 0
        slots = seq.kv_slots[held : seq.start_pos]
        src, dst = self.decode_stages, self.prefill_stages
        if pool == DECODE:
            src, dst = dst, src
        for a, b in zip(src.chips, dst.chips, strict=True):
            _copy_kv(a, b, slots)
        self.resident[key][pool] = seq.start_pos
        return int(seq.start_pos - held)


def _copy_kv(src: Chip, dst: Chip, slots: np.ndarray) -> None:
    """The fp16 K and V of `slots` in every layer a chip holds, from one pool's chip to its twin's SRAM."""
    for shard in src.plan.shards:
        if shard.kind is RegionKind.KV:
            dst.tensor(shard.tensor)[slots] = src.tensor(shard.tensor)[slots]
