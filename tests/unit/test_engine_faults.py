"""Faults in the engine, made real with LPU_INJECT_FAULT (lpu_runtime/faults.py): a forward pass that raises
fails only the request that caused it, and a step loop that dies is restarted in place, within its budget."""

from __future__ import annotations

import asyncio
import threading

import pytest

from lpu_runtime.async_engine import AsyncEngine
from lpu_runtime.core_client import CoreClient, InprocCoreClient
from lpu_runtime.engine import Engine
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.faults import ENV, fault_from_env
from lpu_runtime.model import Checkpoint
from lpu_runtime.restart import RestartBudget
from lpu_runtime.types import FinishReason, GenerationRequest, SamplingParams

from .test_engine import MODEL, TOKENIZER, make_engine, request, run_to_end

POISON = 258  # <pad>: no text encodes to it


def poisoned(prompt: str) -> GenerationRequest:
    ids = (*TOKENIZER.encode(prompt, add_bos=True), POISON)
    return GenerationRequest("poisoned", ids, SamplingParams(temperature=0.0, max_tokens=6))


def test_a_forward_pass_that_raises_fails_only_its_request(
    tiny_checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = [request(p, temperature=0.0, max_tokens=6, ignore_eos=True) for p in ("one", "two", "three")]
    alone = run_to_end(make_engine(tiny_checkpoint), *good)
    monkeypatch.setenv(ENV, f"forward:{POISON}")
    outs = run_to_end(make_engine(tiny_checkpoint), *good, poisoned("four"))
    assert [o.finish_reason for o in outs["poisoned"]] == [FinishReason.ERROR]
    assert "injected forward fault" in (outs["poisoned"][-1].error or "")
    for r in good:  # the others' tokens, computed in the halves the failed step was split into, are unchanged
        assert [t for o in outs[r.request_id] for t in o.new_token_ids] == [
            t for o in alone[r.request_id] for t in o.new_token_ids
        ]


def test_the_fault_variable_is_checked() -> None:
    assert fault_from_env({}) is None
    with pytest.raises(ValueError, match=ENV):
        fault_from_env({ENV: "sideways:3"})


def test_a_dead_step_loop_is_restarted_in_place_until_the_budget_is_spent(
    tiny_checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, f"step:{POISON}")  # raises after the forward pass: the loop itself dies
    plan = make_engine(tiny_checkpoint).plan
    executor = PipelineExecutor(plan, tiny_checkpoint)

    def respawn() -> CoreClient:
        return InprocCoreClient(Engine(plan, executor, TOKENIZER.eos_ids, (TOKENIZER.bos_id,)))

    gone = threading.Event()
    engine = AsyncEngine(
        MODEL, plan, respawn(), respawn=respawn, max_restarts=1, on_fatal=lambda _: gone.set()
    )

    async def last(r: GenerationRequest) -> FinishReason | None:
        outputs = [o async for o in engine.generate(r)]
        return outputs[-1].finish_reason

    async def until_healthy() -> None:
        while not engine.is_healthy():
            await asyncio.sleep(0.01)

    async def run() -> None:
        assert await last(poisoned("a")) == FinishReason.ERROR
        await asyncio.wait_for(until_healthy(), 30)
        assert await last(request("c", temperature=0.0, max_tokens=3)) == FinishReason.LENGTH
        assert engine.restarts == 1
        assert await last(poisoned("d")) == FinishReason.ERROR  # a second death: no restart left

    engine.start()
    try:
        asyncio.run(run())
        assert gone.wait(10)
    finally:
        engine.shutdown()


def test_the_restart_budget_is_per_window() -> None:
    now = [0.0]
    budget = RestartBudget(2, window_s=60, now=lambda: now[0])
    assert budget.take() and budget.take() and not budget.take()
    now[0] = 61
    assert budget.take()
    assert not RestartBudget(0).take()
