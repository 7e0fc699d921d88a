"""How a step's sequences are cut into the micro-batches the pipeline runs one behind another.

More micro-batches in flight keep more stages busy at once, but each one pays every op's fixed latency and
streams the stage's weights again. With k micro-batches cycling through stages whose cost (cycles plus the
outgoing hop) for micro-batch j is s_i(j), a round, in which every sequence gets one token, takes

    max( max_j sum_i s_i(j),   max_i sum_j s_i(j) )
         a micro-batch's trip   the busiest stage's share of the round

(exact for equal micro-batches: the timeline reproduces it to the cycle). The executor picks the k, up to
one micro-batch per stage, that the performance model says finishes a round soonest, as a static schedule
would be compiled; `lpu plan` predicts with the same choice. When stages are compute-bound (large batches)
that is one micro-batch per stage; when every op costs its fixed latency (small models) fewer, larger ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from lpu_runtime.compiler import Plan, UnitKind, step_unit_cycles

CTX_BUCKET = 64  # tokens: contexts this close choose alike (the choice is cached per bucket)
MAX_CACHED = 4096  # choices remembered before the cache starts over


def split_micro_batches(token_counts: Sequence[int], k: int) -> tuple[int, ...]:
    """Sequence boundaries of min(k, n_seqs) contiguous micro-batches of near-equal tokens.

    Decodes (one token each) split into groups whose sizes differ by at most one, larger first; a long
    prompt chunk takes a micro-batch of its own.
    """
    n = len(token_counts)
    k = min(k, n)
    if k <= 1:
        return (0, n)
    total = sum(token_counts)
    bounds, cum, j = [0], 0, 1
    for i, t in enumerate(token_counts):
        cum += t
        # close group j once it holds its share, leaving at least one sequence for each later group
        if j < k and cum * k >= j * total and n - (i + 1) >= k - j:
            bounds.append(i + 1)
            j += 1
    bounds += [n] if bounds[-1] != n else []
    while len(bounds) < k + 1:  # shares met early: the last groups take one sequence each
        bounds.insert(-1, bounds[-2] + 1)
    return tuple(bounds)


class MicroBatcher:
    """Chooses a step's micro-batches for one compiled plan, from the performance model's costs."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._units: dict[tuple[int, int, int, int], int] = {}
        self._choices: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}

    def stage_cycles(self, stage: int, n_tokens: int, n_seqs: int, n_ctx: int) -> int:
        """One micro-batch through a stage, its hop to the next included (cycles)."""
        key = (stage, n_tokens, n_seqs, n_ctx)
        if key not in self._units:
            plan, st = self.plan, self.plan.stages[stage]
            chip, model, place = plan.system.chip, plan.model, plan.placement(stage)
            layer = 0
            cycles = 0
            for unit in st.units:
                if unit.kind is UnitKind.LAYER:  # every layer costs the same: compute one
                    layer = layer or step_unit_cycles(
                        chip, model, unit, st.width, n_tokens, n_ctx, n_seqs, place
                    )
                    cycles += layer
                else:
                    cycles += step_unit_cycles(chip, model, unit, st.width, n_tokens, n_ctx, n_seqs, place)
            if stage + 1 < len(plan.stages):
                cycles += plan.transfer_cycles(stage, n_tokens)
            self._units[key] = cycles
        return self._units[key]

    def round_cycles(self, micro: Sequence[tuple[int, int]], n_ctx: int) -> int:
        """A round of micro-batches (tokens, sequences) at n_ctx, cycling through the pipeline (cycles)."""
        busy = [[self.stage_cycles(i, t, s, n_ctx) for i in range(len(self.plan.stages))] for t, s in micro]
        trip = max(sum(row) for row in busy)
        stage = max(sum(row[i] for row in busy) for i in range(len(self.plan.stages)))
        return max(trip, stage)

    def choose(self, token_counts: Sequence[int], n_ctx: int) -> tuple[int, ...]:
        """Boundaries of the micro-batches for a step whose sequences compute these tokens at about n_ctx."""
        bucket = n_ctx // CTX_BUCKET
        key = (tuple(token_counts), bucket)
        choice = self._choices.get(key)
        if choice is None:
            ctx = bucket * CTX_BUCKET + CTX_BUCKET // 2
            best = -1
            for k in range(1, min(len(self.plan.stages), len(token_counts)) + 1):
                bounds = split_micro_batches(token_counts, k)
                micro = [(sum(token_counts[a:b]), b - a) for a, b in itertools.pairwise(bounds)]
                cycles = self.round_cycles(micro, ctx)
                if best < 0 or cycles <= best:  # ties go to more micro-batches: more stages busy
                    best, choice = cycles, bounds
            if choice is None:
                choice = (0, len(token_counts))
            if len(self._choices) >= MAX_CACHED:
                self._choices.clear()
            self._choices[key] = choice
        return choice
