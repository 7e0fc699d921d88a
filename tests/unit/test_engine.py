from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict

import pytest

from lpu_runtime.async_engine import AsyncEngine
from lpu_runtime.catalog import LoadedModel
from lpu_runtime.checkpoint_source import CheckpointSource, WeightFormat
from lpu_runtime.compiler import compile_model
from lpu_runtime.config import EngineConfig, SystemSpec
from lpu_runtime.core_client import InprocCoreClient
from lpu_runtime.engine import Engine
from lpu_runtime.errors import ContextLengthExceededError, EngineDeadError, InvalidRequestError
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.model import Checkpoint
from lpu_runtime.output_processor import OutputProcessor
from lpu_runtime.tokenizer import ByteTokenizer
from lpu_runtime.types import (
    EngineCoreOutput,
    FinishReason,
    GenerationRequest,
    RequestOutput,
    SamplingParams,
)

from .tiny_model import TINY, TINY_ENGINE

_ids = itertools.count()


TOKENIZER = ByteTokenizer()
# the tiny_checkpoint fixture's weights, as a source
MODEL = LoadedModel(
    CheckpointSource(WeightFormat.SYNTHETIC, TINY, seed=1), TOKENIZER, None, TINY.name, "tiny test model"
)


def make_engine(checkpoint: Checkpoint, config: EngineConfig = TINY_ENGINE, chips: int = 2) -> Engine:
    plan = compile_model(TINY, SystemSpec(chips), config)
    banned = (TOKENIZER.bos_id,) if TOKENIZER.bos_id is not None else ()
    return Engine(plan, PipelineExecutor(plan, checkpoint), TOKENIZER.eos_ids, banned)


def make_async(checkpoint: Checkpoint) -> AsyncEngine:
    engine = make_engine(checkpoint)
    return AsyncEngine(MODEL, engine.plan, InprocCoreClient(engine))


def request(prompt: str, **params: object) -> GenerationRequest:
    ids = tuple(ByteTokenizer().encode(prompt, add_bos=True))
    return GenerationRequest(f"req-{next(_ids)}", ids, SamplingParams(**params))  # type: ignore[arg-type]


def run_to_end(engine: Engine, *requests: GenerationRequest) -> dict[str, list[RequestOutput]]:
    """Steps until every request ends, turning outputs into text as AsyncEngine does (aborting on a stop).
    Requests added to the engine before the call are run too."""
    processors = {
        seq.request_id: OutputProcessor(TOKENIZER, seq.request.params, engine.system)
        for seq in (*engine.scheduler.waiting, *engine.scheduler.running)
    }
    for r in requests:
        engine.add(engine.make_sequence(r))
        processors[r.request_id] = OutputProcessor(TOKENIZER, r.params, engine.system)
    outs: dict[str, list[RequestOutput]] = defaultdict(list)
    for _ in range(10_000):
        if not engine.has_work():
            break
        for core in engine.step():
            processor = processors[core.request_id]
            if processor.finished:
                continue  # computed past its stop string before the abort landed
            out = processor.process(core)
            outs[out.request_id].append(out)
            if out.finished and not core.finished:
                engine.abort(core.request_id)
    assert not engine.has_work()
    return outs


def tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def text(outs: list[RequestOutput]) -> str:
    return "".join(o.new_text for o in outs)


def test_max_tokens_ends_with_length_and_counts(tiny_checkpoint: Checkpoint) -> None:
    engine = make_engine(tiny_checkpoint)
    r = request("Hello", max_tokens=7, temperature=0.0, ignore_eos=True)
    outs = run_to_end(engine, r)[r.request_id]
    last = outs[-1]
    assert last.finished and last.finish_reason is FinishReason.LENGTH
    assert last.completion_tokens == 7 and len(tokens(outs)) == 7
    assert last.prompt_tokens == len(r.prompt_token_ids)
    assert last.emulated.prompt_cycles > 0 and last.emulated.completion_cycles > 0
    assert last.emulated_tokens_per_second > 0
    assert last.host.total_time >= last.host.completion_time >= 0
    assert engine.allocator.used_blocks == 0


def test_same_prompt_and_seed_give_same_tokens_whatever_else_runs(tiny_checkpoint: Checkpoint) -> None:
    alone = make_engine(tiny_checkpoint)
    target = request("The same prompt", max_tokens=12, temperature=0.9, seed=1234, ignore_eos=True)
    want = tokens(run_to_end(alone, target)[target.request_id])

    busy = make_engine(tiny_checkpoint)
    again = request("The same prompt", max_tokens=12, temperature=0.9, seed=1234, ignore_eos=True)
    others = [
        request("x" * n, max_tokens=5 + n, temperature=1.0, seed=n, ignore_eos=True) for n in (1, 9, 30)
    ]
    got = run_to_end(busy, others[0], again, *others[1:])
    assert tokens(got[again.request_id]) == want

    different = request("The same prompt", max_tokens=12, temperature=0.9, seed=99, ignore_eos=True)
    assert tokens(run_to_end(make_engine(tiny_checkpoint), different)[different.request_id]) != want


def test_greedy_output_is_identical_on_one_chip_and_many(tiny_checkpoint: Checkpoint) -> None:
    r1 = request("pipeline", max_tokens=10, temperature=0.0, ignore_eos=True)
    r4 = request("pipeline", max_tokens=10, temperature=0.0, ignore_eos=True)
    one = tokens(run_to_end(make_engine(tiny_checkpoint, chips=1), r1)[r1.request_id])
    four = tokens(run_to_end(make_engine(tiny_checkpoint, chips=4), r4)[r4.request_id])
    assert one == four


def test_new_requests_join_the_running_batch_between_steps(tiny_checkpoint: Checkpoint) -> None:
    engine = make_engine(tiny_checkpoint)
    first = request("first", max_tokens=20, temperature=0.0, ignore_eos=True)
    engine.add(engine.make_sequence(first))
    for _ in range(3):
        engine.step()
    assert engine.stats().running == 1
    second = request("second", max_tokens=5, temperature=0.0, ignore_eos=True)
    engine.add(engine.make_sequence(second))
    outs = engine.step()
    assert {o.request_id for o in outs} == {first.request_id, second.request_id}
    assert engine.stats().running == 2


def test_long_prompts_are_prefilled_in_chunks_of_the_token_budget(tiny_checkpoint: Checkpoint) -> None:
    engine = make_engine(tiny_checkpoint)
    r = request("a" * 100, max_tokens=2, temperature=0.0, ignore_eos=True)  # 101 tokens, budget 64
    outs = run_to_end(engine, r)[r.request_id]
    assert engine.steps == 3  # 64 + 37 prompt tokens, then one decode step
    assert outs[-1].completion_tokens == 2


def test_a_request_waits_until_its_kv_fits_then_runs(tiny_checkpoint: Checkpoint) -> None:
    # 128 KV slots: one request reserving 100 tokens leaves no room for a second.
    engine = make_engine(
        tiny_checkpoint, EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, max_kv_tokens=128)
    )
    a = request("a", max_tokens=98, temperature=0.0, ignore_eos=True)
    b = request("b", max_tokens=98, temperature=0.0, ignore_eos=True)
    engine.add(engine.make_sequence(a))
    engine.add(engine.make_sequence(b))
    engine.step()
    stats = engine.stats()
    assert stats.running == 1 and stats.waiting == 1
    c = request("c", max_tokens=1, temperature=0.0)
    outs = run_to_end(engine, c)
    assert {a.request_id, b.request_id, c.request_id} == set(outs)
    assert all(o[-1].finish_reason is not None for o in outs.values())
    assert engine.stats().waiting == 0 and engine.allocator.used_blocks == 0


def test_a_request_that_can_never_fit_is_refused_with_the_limit(tiny_checkpoint: Checkpoint) -> None:
    engine = make_engine(tiny_checkpoint)
    with pytest.raises(ContextLengthExceededError, match="maximum context length is 128 tokens") as info:
        engine.make_sequence(request("x" * 100, max_tokens=50))
    assert info.value.limit == 128 and info.value.prompt_tokens == 101
    with pytest.raises(ContextLengthExceededError, match="leaving no room"):
        engine.make_sequence(request("x" * 200))
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        engine.make_sequence(GenerationRequest("bad", (1, 5000)))
    # no max_tokens: the context decides
    assert engine.make_sequence(request("x" * 27)).max_tokens == 128 - 28


def test_abort_frees_the_kv_cache(tiny_checkpoint: Checkpoint) -> None:
    engine = make_engine(tiny_checkpoint)
    r = request("abort me", max_tokens=50, temperature=0.0, ignore_eos=True)
    engine.add(engine.make_sequence(r))
    engine.step()
    assert engine.allocator.used_blocks > 0
    out = engine.abort(r.request_id)
    assert out is not None and out.finished and out.finish_reason is FinishReason.ABORT
    assert engine.allocator.used_blocks == 0 and not engine.has_work()
    assert engine.abort(r.request_id) is None


def test_stop_string_ends_generation_and_is_not_returned(tiny_checkpoint: Checkpoint) -> None:
    free = request("stop test", max_tokens=40, temperature=0.0, ignore_eos=True)
    full = text(run_to_end(make_engine(tiny_checkpoint), free)[free.request_id])
    # the first two-character string that first occurs at index 5 or later
    start = next(i for i in range(5, len(full) - 1) if full[i : i + 2] not in full[: i + 1])
    stop = full[start : start + 2]
    stopped = request("stop test", max_tokens=40, temperature=0.0, ignore_eos=True, stop=(stop,))
    outs = run_to_end(make_engine(tiny_checkpoint), stopped)[stopped.request_id]
    assert text(outs) == full[: full.index(stop)]
    assert outs[-1].finish_reason is FinishReason.STOP


def test_stop_token_ids_end_generation(tiny_checkpoint: Checkpoint) -> None:
    free = request("tok", max_tokens=20, temperature=0.0, ignore_eos=True)
    ids = tokens(run_to_end(make_engine(tiny_checkpoint), free)[free.request_id])
    stopped = request("tok", max_tokens=20, temperature=0.0, ignore_eos=True, stop_token_ids=(ids[5],))
    outs = run_to_end(make_engine(tiny_checkpoint), stopped)[stopped.request_id]
    assert tokens(outs) == ids[: ids.index(ids[5]) + 1]
    assert outs[-1].finish_reason is FinishReason.STOP


def test_async_engine_streams_and_a_closed_generator_aborts(tiny_checkpoint: Checkpoint) -> None:
    async def scenario() -> None:
        engine = make_async(tiny_checkpoint)
        engine.start()
        try:
            got = [
                o
                async for o in engine.generate(request("hi", max_tokens=6, temperature=0.0, ignore_eos=True))
            ]
            assert got[-1].finished and got[-1].completion_tokens == 6

            gen = engine.generate(request("long", max_tokens=100, temperature=0.0, ignore_eos=True))
            await gen.__anext__()
            assert engine.stats().running == 1
            await gen.aclose()
            for _ in range(200):
                if engine.stats().running == 0:
                    break
                await asyncio.sleep(0.01)
            stats = engine.stats()
            assert stats.running == 0 and stats.kv_blocks_used == 0

            results = await asyncio.gather(
                *(
                    _collect(engine, request(f"user {i}", max_tokens=4 + i, temperature=0.0, ignore_eos=True))
                    for i in range(6)
                )
            )
            assert [r[-1].completion_tokens for r in results] == [4 + i for i in range(6)]
            assert engine.is_healthy()
        finally:
            engine.shutdown()

    asyncio.run(scenario())


async def _collect(engine: AsyncEngine, r: GenerationRequest) -> list[RequestOutput]:
    return [o async for o in engine.generate(r)]


def test_a_dead_engine_thread_fails_pending_requests_and_refuses_new_ones(
    tiny_checkpoint: Checkpoint,
) -> None:
    async def scenario() -> None:
        engine = make_async(tiny_checkpoint)

        def broken_step() -> list[EngineCoreOutput]:
            raise MemoryError("emulated host failure")

        assert isinstance(engine.core, InprocCoreClient)
        engine.core.engine.step = broken_step  # type: ignore[method-assign]
        engine.start()
        try:
            outs = [o async for o in engine.generate(request("doomed", max_tokens=5))]
            assert outs[-1].finish_reason is FinishReason.ERROR and "MemoryError" in (outs[-1].error or "")
            assert not engine.is_healthy()
            with pytest.raises(EngineDeadError):
                await engine.generate(request("after", max_tokens=5)).__anext__()
        finally:
            engine.shutdown()

    asyncio.run(scenario())
