"""Prefill-decode disaggregation on the emulator: prompts on a prefill pool timed as GPU servers, decode on
the LPU pipeline, the KV cache moved between their chips and charged; the same tokens and the planner's
figures."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from lpu_runtime.checkpoint_source import CheckpointSource, WeightFormat
from lpu_runtime.compiler import compile_model
from lpu_runtime.config import EngineConfig, SystemSpec
from lpu_runtime.disaggregated import DisaggregatedExecutor
from lpu_runtime.engine import Engine
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.hardware import HardwareSpec, KvLink, gpu_server
from lpu_runtime.model import TokenBatch
from lpu_runtime.perfmodel import kv_transfer_cycles
from lpu_runtime.plan import PlanRequest, gpu_prefill_cycles, plan_system, step_cycles
from lpu_runtime.sram import RegionKind
from lpu_runtime.types import GenerationRequest, SamplingParams
from server.settings import SettingsError, settings_from

from .pipeline_runs import run_prefill_and_decode
from .tiny_model import TINY

ENGINE = EngineConfig(max_num_seqs=4, max_num_batched_tokens=16, max_kv_tokens=512, prefill_on="h100")
SOURCE = CheckpointSource(WeightFormat.SYNTHETIC, TINY, seed=1)
SERVER, LINK = gpu_server("h100"), KvLink()
PLAN = compile_model(TINY, SystemSpec(3), ENGINE)


def _split() -> DisaggregatedExecutor:
    return DisaggregatedExecutor(PLAN, SOURCE, SERVER, LINK)


def test_the_split_computes_the_tokens_colocated_serving_computes() -> None:
    colocated, split = PipelineExecutor(PLAN, SOURCE), _split()
    for prompt in ([5, 9, 200], list(range(3, 16))):
        for a, b in zip(
            run_prefill_and_decode(colocated, prompt, 5),
            run_prefill_and_decode(split, prompt, 5),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


def test_the_prompts_kv_moves_from_the_prefill_chips_to_the_decode_chips() -> None:
    split = _split()
    prompt = list(range(20, 33))
    run_prefill_and_decode(split, prompt, 1)
    slots = np.arange(len(prompt))
    for a, b in zip(split.prefill_stages.chips, split.decode_stages.chips, strict=True):
        for shard in a.plan.shards:
            if shard.kind is RegionKind.KV:
                np.testing.assert_array_equal(a.tensor(shard.tensor)[slots], b.tensor(shard.tensor)[slots])


def _token_cycles(prompt_len: int, n_tokens: int) -> list[int]:
    """Each generated token's emulated cycle, one request alone from cycle 0, served through the engine."""
    engine = Engine(PLAN, _split(), ())
    params = SamplingParams(max_tokens=n_tokens, temperature=0.0, ignore_eos=True)
    engine.add(engine.make_sequence(GenerationRequest("r", tuple(range(1, prompt_len + 1)), params)))
    done = []
    while engine.has_work():
        done += [out.prompt_cycles + out.completion_cycles for out in engine.step() if out.new_token_ids]
    return done


def test_emulated_prefill_transfer_and_decode_are_the_planners_figures() -> None:
    """A 40-token prompt in 16-token chunks on the GPU server, its KV to the LPUs, then decode on them: the
    first token at the planner's time to first token, the second after the KV transfer and a decode step,
    then a decode step per token, to the cycle."""
    chip, prompt = PLAN.system.chip, 40
    done = _token_cycles(prompt, 4)
    ttft = gpu_prefill_cycles(PLAN, SERVER, prompt, ENGINE.max_num_batched_tokens)
    kv = kv_transfer_cycles(chip, LINK, TINY, prompt)
    assert done[0] == ttft
    assert done[1] == ttft + kv + step_cycles(PLAN, 1, prompt + 1, 1)[0]
    assert np.diff(done[1:]).tolist() == [step_cycles(PLAN, 1, prompt + 2 + i, 1)[0] for i in range(2)]
    hardware = HardwareSpec(prefill_server=SERVER, kv_link=LINK)
    report = plan_system(
        PlanRequest(TINY, context=128, prompt=prompt, max_num_batched_tokens=16, hardware=hardware)
    )
    assert report.prefill is not None
    assert report.lpu.speed.ttft_s == report.prefill.ttft_s == ttft / chip.clock_hz
    assert report.prefill.kv_transfer_s == kv / chip.clock_hz


def test_a_prompt_chunk_waits_for_the_prefill_server_and_decodes_do_not() -> None:
    """Two prompts in one step are one prefill step on the server; the decodes of other requests run on the
    LPU pipeline meanwhile (their own timeline)."""
    split = _split()
    a, b = TokenBatch.single([1, 2, 3]), TokenBatch.single([4, 5])
    first = split.execute(a).times[0]
    second = split.execute(b).times[0]
    assert second.entry == first.done  # the server was busy with the first prompt
    assert split.timeline.prefill_busy == first.done + (second.done - second.entry)
    assert split.timeline.busy == [0] * len(PLAN.stages)  # nothing decoded yet


def test_the_server_settings_choose_the_chip_and_the_prefill_gpus() -> None:
    settings = settings_from(argparse.Namespace(chip="groq3", prefill_on=None), {"LPU_PREFILL_ON": "h200"})
    assert settings.system_spec().chip.name == "Groq3-LP30"
    assert settings.engine_config().prefill_on == "h200"
    with pytest.raises(SettingsError, match="must be one of h100, h200"):
        settings_from(argparse.Namespace(), {"LPU_PREFILL_ON": "a100"})
