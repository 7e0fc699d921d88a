"""The performance model: how ops are costed, and its agreement with the emulator's clock and the compiler.

Its calibration against published speeds is tests/unit/test_calibration.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lpu_runtime import perfmodel
from lpu_runtime.compiler import BALANCE_CONTEXT, compile_model
from lpu_runtime.config import MODEL_PRESETS, ChipSpec, EngineConfig, ModelConfig, SystemSpec
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.hardware import CHIP_PRESETS
from lpu_runtime.model import SeqSlice, TokenBatch
from lpu_runtime.plan import stage_step_cycles, step_cycles
from lpu_runtime.synthetic import synthetic_checkpoint

from .tiny_model import TINY, TINY_ENGINE

# Heads wider than dim / n_heads (q_dim 512 in dim 256), large enough that o_proj's extra input columns cost
# whole cycles: a cost model charging wo as (dim, dim) would disagree with the chips by several cycles.
WIDE_HEADS = ModelConfig(
    name="test-wide-heads", dim=256, n_layers=2, n_heads=8, n_kv_heads=2, head_dim=64, ffn_dim=512,
    vocab_size=259, max_context=128,
)  # fmt: skip


def test_a_batch_1_gemm_is_bound_by_its_weights_and_a_large_batch_by_arithmetic() -> None:
    chip = ChipSpec()
    one, two = (perfmodel.linear_cycles(chip, n, 8192, 8192) for n in (1, 2))
    assert two < 1.01 * one  # weights are streamed once per step, whatever the batch
    big = perfmodel.linear_cycles(chip, 2048, 8192, 8192)
    compute = chip.cycles(2.0 * 2048 * 8192 * 8192 / chip.int8_ops_per_s)
    assert big == chip.op_latency_cycles + compute


def test_every_op_carries_the_fitted_latency_and_weight_stream_rate() -> None:
    slow = ChipSpec(weight_stream_efficiency=0.05)
    fast = ChipSpec(weight_stream_efficiency=0.5)
    assert perfmodel.op_cycles(fast) == fast.op_latency_cycles
    assert perfmodel.linear_cycles(slow, 1, 4096, 4096) > 5 * (
        perfmodel.linear_cycles(fast, 1, 4096, 4096) - fast.op_latency_cycles
    )


def test_a_moe_layer_streams_only_the_experts_its_tokens_route_to() -> None:
    mixtral = MODEL_PRESETS["mixtral-8x7b"]
    load = perfmodel.balanced_expert_load
    assert load(mixtral, 1, 8) == perfmodel.ExpertLoad((1,))
    assert load(mixtral, 64, 8) == perfmodel.ExpertLoad((16,))  # each chip holds one expert
    assert load(mixtral, 64, 4) == perfmodel.ExpertLoad((16, 16))
    assert load(mixtral, 1, 1) == perfmodel.ExpertLoad((1, 1))  # a token's two experts, both local
    assert load(mixtral, 1, 16) == perfmodel.ExpertLoad((1,))
    # Sixteen chips hold half an expert each: half the weight stream, plus gathers inside each expert's pair
    # (on a chip whose weights stream slowly enough, and whose hops are quick enough, for the half to matter).
    chip = ChipSpec(weight_stream_efficiency=0.1, hop_latency_ns=240.0)
    whole, halves = (perfmodel.moe_ffn_cycles(chip, mixtral, 1, w) for w in (8, 16))
    assert halves < whole
    # The pair's gathers cross one hop inside a node, two when the pair straddles two nodes.
    inside, across = (perfmodel.Placement(first, 8) for first in (0, 7))
    assert inside.hops(0, 2) == 1 and across.hops(0, 2) == 2 and inside.hops(6, 2) == 1
    assert perfmodel.moe_ffn_cycles(chip, mixtral, 1, 16, place=across) > halves
    assert perfmodel.ffn_experts_touched(mixtral, 1) == pytest.approx(2.0)
    assert perfmodel.ffn_experts_touched(mixtral, 1000) == pytest.approx(8.0)
    dense = dataclasses.replace(mixtral, n_experts=1, n_experts_per_token=1)
    assert perfmodel.ffn_experts_touched(dense, 7) == 1.0


def _batch(n_seqs: int, start: int, n_new: int, slot_base: int = 64) -> TokenBatch:
    """n_seqs sequences each adding n_new tokens at position `start`; sequence i's KV in slots i*slot_base..."""
    seqs = tuple(
        SeqSlice(
            i * n_new, n_new, start, np.arange(i * slot_base, i * slot_base + start + n_new, dtype=np.int64)
        )
        for i in range(n_seqs)
    )
    ids = np.arange(n_seqs * n_new, dtype=np.int64) * 37 % 259  # rows of every embedding shard
    positions = np.tile(np.arange(start, start + n_new, dtype=np.int64), n_seqs)
    return TokenBatch(ids, positions, seqs)


@pytest.mark.parametrize(
    ("model", "system"),
    [
        (TINY, SystemSpec(1)),
        (TINY, SystemSpec(3)),
        (TINY, SystemSpec(12, ChipSpec(sram_bytes=40 * 1024))),
        (TINY, SystemSpec(12, ChipSpec(sram_bytes=40 * 1024), chips_per_node=1)),  # every gather across nodes
        (TINY, SystemSpec(12, dataclasses.replace(CHIP_PRESETS["groq3"], sram_bytes=40 * 1024))),  # FP8
        (WIDE_HEADS, SystemSpec(1)),
        (WIDE_HEADS, SystemSpec(12, ChipSpec(sram_bytes=500 * 1024))),  # layers split over two chips
    ],
    ids=[
        "one-chip",
        "three-stages",
        "tensor-parallel",
        "tensor-parallel-across-nodes",
        "fp8-tensor-parallel",
        "head-dim-one-chip",
        "head-dim-tensor-parallel",
    ],
)
def test_the_emulator_clock_charges_exactly_what_the_planner_predicts(
    model: ModelConfig, system: SystemSpec
) -> None:
    engine = EngineConfig(max_num_seqs=2, max_num_batched_tokens=16, max_kv_tokens=128)
    plan = compile_model(model, system, engine)
    if system.chips_per_node == 1:
        assert any(plan.placement(i).hops(0, s.width) == 2 for i, s in enumerate(plan.stages))
    pipe = PipelineExecutor(plan, synthetic_checkpoint(model, seed=1))
    prefill = pipe.execute(_batch(2, 0, 8))  # two 8-token prompts in one micro-batch
    assert prefill.times[0].done - prefill.times[0].entry == step_cycles(plan, 16, 8, 2)[0]
    decode = pipe.execute(_batch(2, 8, 1), ready=[prefill.times[0].done])
    assert decode.times[0].done - decode.times[0].entry == step_cycles(plan, 2, 9, 2)[0]
    assert np.isfinite(prefill.logits).all()


@pytest.mark.parametrize("model", [TINY, MODEL_PRESETS["llama-2-70b"]], ids=lambda m: m.name)
def test_the_compiler_balances_stages_with_the_same_model(model: ModelConfig) -> None:
    chips = 3 if model is TINY else 576
    plan = compile_model(
        model, SystemSpec(chips), TINY_ENGINE if model is TINY else EngineConfig(max_num_seqs=1)
    )
    for stage in plan.stages:
        assert stage.est_cycles == stage_step_cycles(plan, stage, 1, BALANCE_CONTEXT, 1)


def test_layers_too_large_for_n_kv_heads_chips_split_by_query_heads_with_kv_copies() -> None:
    big = MODEL_PRESETS["llama-3.1-405b"]
    model = dataclasses.replace(big, max_context=8192)
    plan = compile_model(model, SystemSpec(4096), EngineConfig(max_num_seqs=1))
    widths = {s.width for s in plan.stages if s.layers}
    assert min(widths) > model.n_kv_heads and all(w % model.n_kv_heads == 0 for w in widths)
    assert all(c.used_bytes <= c.capacity_bytes for c in plan.chips)


# TINY with a vocabulary too large for one 40 KiB chip: its embedding is split over two chips.
WIDE_VOCAB = dataclasses.replace(TINY, name="test-wide-vocab", vocab_size=1024)


@pytest.mark.parametrize("token", [0, 1023], ids=["first-shard", "last-shard"])
def test_the_embedding_costs_the_planners_figure_whichever_shard_holds_the_tokens(token: int) -> None:
    """Every chip of a vocabulary split is charged the lookup of every token: a shard cannot know in advance
    which tokens are its own, so a step costs the same wherever its tokens live."""
    engine = EngineConfig(max_num_seqs=2, max_num_batched_tokens=16, max_kv_tokens=128)
    plan = compile_model(WIDE_VOCAB, SystemSpec(11, ChipSpec(sram_bytes=40 * 1024)), engine)
    embed = plan.stages[0]
    assert embed.width == 2 and not embed.layers
    pipe = PipelineExecutor(plan, synthetic_checkpoint(WIDE_VOCAB, seed=1))
    batch = TokenBatch(np.full(8, token), np.arange(8), (SeqSlice(0, 8, 0, np.arange(8, dtype=np.int64)),))
    cycles = pipe.execute(batch).stage_cycles[0][0]
    assert cycles == stage_step_cycles(plan, embed, 8, 8, 1)
