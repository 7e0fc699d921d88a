"""The scheduler and the KV block allocator through their plain-data contract alone: no model, no chips.

Each test builds requests, calls `schedule()`, hands `update()` a hand-made StepOutput (the tokens a step
would have sampled and the cycles its micro-batches would have left the pipeline) and checks the records.
"""

from __future__ import annotations

import itertools

import pytest

from lpu_runtime.config import EngineConfig
from lpu_runtime.kv_cache import BlockAllocator
from lpu_runtime.scheduler import Scheduler, SchedulerOutput, Sequence, StepOutput
from lpu_runtime.types import FinishReason, GenerationRequest, SamplingParams

EOS = 2
_ids = itertools.count()


def seq(prompt_len: int, max_tokens: int, **params: object) -> Sequence:
    request = GenerationRequest(
        f"r{next(_ids)}",
        tuple(range(10, 10 + prompt_len)),
        SamplingParams(**params),  # type: ignore[arg-type]
    )
    return Sequence(request=request, max_tokens=max_tokens, arrival=0.0)


def scheduler(
    blocks: int = 64, block_tokens: int = 4, max_seqs: int = 4, budget: int = 16
) -> tuple[Scheduler, BlockAllocator]:
    alloc = BlockAllocator(blocks, block_tokens)
    config = EngineConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, kv_block_tokens=block_tokens)
    return Scheduler(config, alloc, eos_ids=(EOS,), now=lambda: 1.0), alloc


def step(
    s: Scheduler, out: SchedulerOutput, token: int = 7, done: int = 100
) -> list[tuple[str, tuple[int, ...], FinishReason | None]]:
    """Feeds back one step: every sampling chunk gets `token`, every micro-batch left the pipeline at `done`."""
    sampled = tuple(token if c.samples else None for c in out.chunks)
    outs = s.update(out, StepOutput(sampled, tuple(done for _ in out.chunks)))
    return [(o.request_id, o.new_token_ids, o.finish_reason) for o in outs]


def test_prompts_are_chunked_to_the_token_budget_and_decodes_go_first() -> None:
    s, _ = scheduler(budget=16)
    a, b = seq(3, 5), seq(30, 5)
    s.add(a)
    first = s.schedule()
    assert [(c.request_id, c.start, len(c.token_ids), c.samples) for c in first.chunks] == [
        (a.request_id, 0, 3, True)
    ]
    assert first.admitted == (a.request_id,)
    step(s, first)
    s.add(b)
    second = s.schedule()
    # a decodes (1 token) before b's prompt takes the rest of the budget (15 of its 30 tokens)
    assert [(c.request_id, c.start, len(c.token_ids), c.samples) for c in second.chunks] == [
        (a.request_id, 3, 1, True),
        (b.request_id, 0, 15, False),
    ]
    assert second.chunks[0].token_ids == (7,)  # the token the previous step sampled is the next input
    assert second.n_tokens == 16
    outs = step(s, second)
    assert [o[0] for o in outs] == [a.request_id]  # b's chunk does not reach its last token: no output
    third = s.schedule()
    assert [(c.request_id, c.start, len(c.token_ids)) for c in third.chunks] == [
        (a.request_id, 4, 1),
        (b.request_id, 15, 15),
    ]
    assert third.chunks[1].samples


def test_admission_is_first_come_first_served_without_overtaking() -> None:
    s, alloc = scheduler(blocks=10, block_tokens=4)  # 40 KV slots
    big = seq(4, 20)  # 24 tokens: 6 blocks
    huge = seq(4, 28)  # 32 tokens: 8 blocks, cannot fit beside `big`
    small = seq(1, 3)  # 1 block: would fit, but arrived after `huge`
    for x in (big, huge, small):
        s.add(x)
    out = s.schedule()
    assert out.admitted == (big.request_id,)
    assert [c.request_id for c in out.chunks] == [big.request_id]
    assert alloc.used_blocks == 6 and list(s.waiting) == [huge, small]
    # once big finishes its blocks go back and the queue moves on, in order
    s.remove(big.request_id)
    assert alloc.used_blocks == 0
    out = s.schedule()
    assert out.admitted == (huge.request_id, small.request_id)


def test_max_num_seqs_bounds_the_running_batch() -> None:
    s, _ = scheduler(max_seqs=2, budget=16)
    seqs = [seq(2, 4) for _ in range(3)]
    for x in seqs:
        s.add(x)
    out = s.schedule()
    assert out.admitted == (seqs[0].request_id, seqs[1].request_id)
    assert len(s.running) == 2 and list(s.waiting) == [seqs[2]]


def test_finished_requests_free_their_blocks_for_the_next_ones() -> None:
    s, alloc = scheduler(blocks=1, block_tokens=4)
    first, second = seq(2, 2), seq(2, 2)  # 4 tokens each: the one block
    s.add(first)
    s.add(second)
    out = s.schedule()
    assert out.admitted == (first.request_id,) and alloc.free_blocks == 0
    blocks = list(first.blocks)
    assert step(s, out) == [(first.request_id, (7,), None)]
    assert step(s, s.schedule()) == [(first.request_id, (7,), FinishReason.LENGTH)]
    assert alloc.used_blocks == 0 and not s.running
    out = s.schedule()
    assert out.admitted == (second.request_id,) and second.blocks == blocks  # the same blocks again


def test_eos_stop_token_ids_and_ignore_eos_decide_the_finish() -> None:
    s, _ = scheduler()
    plain, stopper = seq(1, 5), seq(1, 5, stop_token_ids=(9,), ignore_eos=True)
    ignoring = seq(1, 5, ignore_eos=True)
    for x in (plain, stopper, ignoring):
        s.add(x)
    outs = {rid: reason for rid, _, reason in step(s, s.schedule(), token=EOS)}
    assert outs == {
        plain.request_id: FinishReason.STOP,
        stopper.request_id: None,
        ignoring.request_id: None,
    }
    outs = {rid: reason for rid, _, reason in step(s, s.schedule(), token=9)}
    assert outs == {stopper.request_id: FinishReason.STOP, ignoring.request_id: None}
    assert s.running == [ignoring]


def test_abort_mid_prefill_frees_the_blocks_and_the_step_result_is_dropped() -> None:
    s, alloc = scheduler(budget=8)
    long = seq(20, 4)
    s.add(long)
    out = s.schedule()
    assert len(out.chunks[0].token_ids) == 8 and alloc.used_blocks == 6
    assert s.remove(long.request_id) is long
    assert alloc.used_blocks == 0 and not s.has_work()
    assert step(s, out) == []  # the step that was running it comes back: nothing to keep
    assert s.remove(long.request_id) is None


def test_emulated_cycles_flow_from_one_step_into_the_next_and_the_timings() -> None:
    s, _ = scheduler()
    x = seq(3, 3)
    x.arrival_cycles = 50
    s.add(x)
    out = s.schedule()
    assert out.chunks[0].ready_cycles == 50  # its inputs exist from its arrival
    step(s, out, done=1_000)
    out = s.schedule()
    assert out.chunks[0].ready_cycles == 1_000  # its next token needs the previous one out of the pipeline
    [core] = s.update(out, StepOutput((7,), (1_400,)))
    assert (core.prompt_cycles, core.completion_cycles) == (1_000 - 50, 400)


def test_a_request_id_cannot_be_scheduled_twice() -> None:
    s, _ = scheduler()
    x = seq(1, 2)
    s.add(x)
    with pytest.raises(ValueError, match="already scheduled"):
        s.add(x)
