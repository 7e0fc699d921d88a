"""The emulated pipeline's timeline: when each micro-batch enters and leaves each stage, in cycles.

A micro-batch enters stage i at max(stage i free, stage i-1 done + hop): a stage holds one micro-batch at a
time and is free again once it has sent its activations on, so up to n_stages micro-batches are in flight,
one per stage. A micro-batch enters stage 0 no earlier than its sequences' previous tokens left the last stage
(a sequence never has two tokens in flight). With k equal micro-batches cycling through stages of s_i = stage
cycles + outgoing hop, each sequence then gets a token every max(sum s_i, k x max s_i) cycles: the pipelined
figure `lpu plan` predicts, which here emerges from the schedule that ran. Nothing reads wall time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MicroBatchTimes:
    entry: int  # cycle it entered stage 0
    done: int  # cycle it left the last stage: its sampled tokens exist from here on


class PipelineTimeline:
    def __init__(self, n_stages: int) -> None:
        self.n_stages = n_stages
        self.free = [0] * n_stages  # cycle each stage can take its next micro-batch
        self.busy = [0] * n_stages  # cycles each stage computed, summed
        self.link_cycles = 0  # cycles of hops between stages, summed
        self.now = 0  # the latest entry into stage 0: the present of the emulated system while it works
        self.end = 0  # the latest exit from the last stage
        self.micro_batches = 0

    def run(self, ready: int, stage_cycles: Sequence[int], hops: Sequence[int]) -> MicroBatchTimes:
        """Places one micro-batch: ready is the cycle its inputs exist; stage_cycles (n_stages,) and hops
        (n_stages - 1,) what it costs."""
        if len(stage_cycles) != self.n_stages or len(hops) != self.n_stages - 1:
            raise ValueError(f"a micro-batch needs {self.n_stages} stage costs and {self.n_stages - 1} hops")
        t, entry = ready, -1
        for i, cycles in enumerate(stage_cycles):
            start = max(self.free[i], t)
            if i == 0:
                entry = start
            t = start + cycles
            self.busy[i] += cycles
            if i < len(hops):
                t += hops[i]
                self.link_cycles += hops[i]
            self.free[i] = t
        self.now = max(self.now, entry)
        self.end = max(self.end, t)
        self.micro_batches += 1
        return MicroBatchTimes(entry, t)
