"""The pipelined executor: micro-batches in flight on the emulated timeline, and the planner's figure."""

from __future__ import annotations

import itertools
import pickle
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pytest

from lpu_runtime.checkpoint_source import CheckpointSource, WeightFormat
from lpu_runtime.compiler import compile_model
from lpu_runtime.config import ChipSpec, EngineConfig, SystemSpec
from lpu_runtime.engine import Engine
from lpu_runtime.executor import PipelineExecutor, StepResult
from lpu_runtime.microbatch import MicroBatcher, split_micro_batches
from lpu_runtime.model import TokenBatch
from lpu_runtime.plan import pipelined_token_cycles
from lpu_runtime.timeline import PipelineTimeline
from lpu_runtime.tokenizer import ByteTokenizer
from lpu_runtime.types import GenerationRequest, SamplingParams
from lpu_runtime.worker import StageWorker

from .tiny_model import TINY

ENGINE = EngineConfig(max_num_seqs=8, max_num_batched_tokens=64, max_kv_tokens=1024)
SOURCE = CheckpointSource(WeightFormat.SYNTHETIC, TINY, seed=1)


@pytest.mark.parametrize(
    ("tokens", "stages", "bounds"),
    [
        ([1] * 8, 4, (0, 2, 4, 6, 8)),  # decodes: equal micro-batches
        ([1] * 5, 4, (0, 2, 3, 4, 5)),  # larger first
        ([1] * 3, 4, (0, 1, 2, 3)),  # fewer sequences than stages: one each
        ([1] * 8, 1, (0, 8)),  # one stage: one micro-batch
        ([1, 1, 1, 40], 4, (0, 1, 2, 3, 4)),  # a long prompt chunk takes a micro-batch of its own
        ([30, 1, 1, 1, 1, 1, 1], 2, (0, 1, 7)),
        ([], 4, (0, 0)),
    ],
)
def test_micro_batches_split_a_step_into_near_equal_shares(
    tokens: list[int], stages: int, bounds: tuple[int, ...]
) -> None:
    assert split_micro_batches(tokens, stages) == bounds


def test_the_timeline_overlaps_micro_batches_one_stage_apart() -> None:
    tl = PipelineTimeline(3)
    a = tl.run(0, [10, 10, 10], [2, 2])
    b = tl.run(0, [10, 10, 10], [2, 2])
    assert (a.entry, a.done) == (0, 34)
    # b enters stage 0 once a has left it (and sent its activations on): one stage behind, not one trip
    assert (b.entry, b.done) == (12, 46)
    c = tl.run(100, [10, 10, 10], [2, 2])  # inputs ready late: it waits for them, not for the stages
    assert c.entry == 100
    assert tl.busy == [30, 30, 30] and tl.link_cycles == 12 and tl.micro_batches == 3


# Every op of the tiny model on a GroqChip1 costs its fixed latency, so fewer, larger micro-batches finish a
# round sooner; on a chip with no op latency and slow arithmetic the work grows with the tokens, and one
# micro-batch per stage wins.
COMPUTE_BOUND = ChipSpec(op_latency_cycles=0, int8_ops_per_s=2e9, fp16_flops_per_s=2e9)


def _engine(chips: int, chip: ChipSpec | None = None) -> Engine:
    plan = compile_model(TINY, SystemSpec(chips, chip or ChipSpec()), ENGINE)
    return Engine(plan, PipelineExecutor(plan, SOURCE), ByteTokenizer().eos_ids)


def _decode(
    engine: Engine, n_users: int, max_tokens: int
) -> tuple[dict[str, list[int]], list[tuple[TokenBatch, StepResult]]]:
    """Runs n_users identical-length greedy requests; returns each one's token done-cycles and every step."""
    steps: list[tuple[TokenBatch, StepResult]] = []
    execute = engine.executor.execute

    def recording(batch: TokenBatch, ready: Sequence[int] | None = None) -> StepResult:
        result = execute(batch, ready)
        steps.append((batch, result))
        return result

    engine.executor.execute = recording  # type: ignore[method-assign]
    for i in range(n_users):
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        engine.add(engine.make_sequence(GenerationRequest(f"u{i}", (1, 2, 3, 4, 5 + i), params)))
    done: dict[str, list[int]] = defaultdict(list)
    while engine.has_work():
        for out in engine.step():
            seq_done = out.prompt_cycles + out.completion_cycles  # its latest token, from its arrival
            done[out.request_id].append(seq_done)
    return done, steps


@pytest.mark.parametrize(
    ("chip", "micro_batches"), [(ChipSpec(), 3), (COMPUTE_BOUND, 4)], ids=["groqchip1", "compute-bound"]
)
def test_emulated_throughput_at_batch_8_equals_the_planners_pipelined_figure(
    chip: ChipSpec, micro_batches: int
) -> None:
    """8 users on 4 stages: every round, in which each gets a token, takes the cycles `lpu plan` predicts for
    that batch and context, with the micro-batches in flight the performance model chooses (on the
    compute-bound chip one per stage: four times the one-batch rate). On GroqChip1 the costs do not move
    with the context here, so to the cycle; on the compute-bound chip attention grows every round and a
    round overlaps its neighbours, so within the change of the planner's figure between them."""
    engine = _engine(4, chip)
    plan = engine.plan
    assert len(plan.stages) == 4
    done, steps = _decode(engine, 8, 24)
    prompt = 5
    for user, times in done.items():
        periods = np.diff(times)
        for r in range(6, len(times)):  # past the prefill's transient
            n_ctx = prompt + r  # round r's token attends the prompt, r - 1 earlier tokens and itself
            want = pipelined_token_cycles(plan, 8, n_ctx)
            drift = pipelined_token_cycles(plan, 8, n_ctx + 1) - pipelined_token_cycles(plan, 8, n_ctx - 1)
            assert abs(int(periods[r - 1]) - want) <= drift, (user, r, periods[r - 1], want)
            if chip == ChipSpec():
                assert drift == 0 and periods[r - 1] == want
    decode_steps = [result for batch, result in steps if batch.n_tokens == 8]
    assert {len(result.times) for result in decode_steps} == {micro_batches}
    batcher = MicroBatcher(plan)
    one_batch = batcher.round_cycles([(8, 8)], 20)
    if micro_batches == 4:
        assert pipelined_token_cycles(plan, 8, 20) * 3 < one_batch
    else:
        assert pipelined_token_cycles(plan, 8, 20) <= one_batch


def test_at_most_one_micro_batch_per_stage_and_one_token_per_sequence_in_flight() -> None:
    engine = _engine(4)
    _, steps = _decode(engine, 6, 10)
    intervals = [(t.entry, t.done) for _, r in steps for t in r.times]
    for entry, _ in intervals:
        assert sum(1 for a, b in intervals if a <= entry < b) <= len(engine.plan.stages)
    # every sequence's micro-batches follow one another: the next enters after the previous left
    per_seq: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for batch, result in steps:
        bounds = batch.micro_bounds
        for j, t in enumerate(result.times):
            for s in batch.seqs[bounds[j] : bounds[j + 1]]:
                per_seq[int(s.kv_slots[0])].append((t.entry, t.done))
    for spans in per_seq.values():
        for (_, done), (entry, _) in itertools.pairwise(spans):
            assert entry >= done


def test_the_pipeline_bubble_reflects_the_load() -> None:
    """One user keeps one of 4 stages busy at a time; 8 users keep them nearly all busy."""

    def occupancy(users: int) -> float:
        engine = _engine(4)
        _decode(engine, users, 16)
        stats = engine.stats()
        return max(stats.stage_busy_cycles) / stats.emulated_cycles

    alone, loaded = occupancy(1), occupancy(8)
    assert alone < 0.4 and loaded > 0.8


def test_a_pickled_checkpoint_source_loads_the_same_bytes_in_a_worker() -> None:
    """What a worker in another process gets: the source as plain data, opened there."""
    plan = compile_model(TINY, SystemSpec(3), ENGINE)
    here = StageWorker(plan, 1, SOURCE)
    there = StageWorker(plan, 1, pickle.loads(pickle.dumps(SOURCE)))
    for a, b in zip(here.chips, there.chips, strict=True):
        for shard in a.plan.shards:
            if shard.kind.value == "weight":
                np.testing.assert_array_equal(a.tensor(shard.tensor), b.tensor(shard.tensor))
