from __future__ import annotations

import dataclasses
import itertools

import pytest

from lpu_runtime.compiler import UnitKind, compile_model
from lpu_runtime.config import DEMO_MODEL, MODEL_PRESETS, ChipSpec, EngineConfig, SystemSpec
from lpu_runtime.errors import CompileError
from lpu_runtime.sharding import partition
from lpu_runtime.sram import RegionKind

from .tiny_model import TINY, TINY_ENGINE


def test_every_region_of_every_chip_lies_within_its_sram_and_never_overlaps() -> None:
    plan = compile_model(DEMO_MODEL, SystemSpec(4))
    assert plan.n_chips_used == 4
    for chip in plan.chips:
        assert chip.used_bytes <= chip.capacity_bytes
        regions = sorted(chip.regions, key=lambda r: r.offset)
        for a, b in itertools.pairwise(regions):
            assert a.end <= b.offset
        assert all(r.offset % plan.system.chip.sram_alignment_bytes == 0 for r in regions)
        assert chip.bytes_of(RegionKind.WEIGHT) > 0 and chip.bytes_of(RegionKind.BUFFER) > 0


def test_layers_form_contiguous_balanced_pipeline_stages() -> None:
    plan = compile_model(DEMO_MODEL, SystemSpec(4))
    assert len(plan.stages) == 4
    layers = [layer for s in plan.stages for layer in s.layers]
    assert layers == list(range(DEMO_MODEL.n_layers))
    assert plan.stages[0].units[0].kind is UnitKind.EMBED
    assert plan.stages[-1].units[-1].kind is UnitKind.HEAD
    times = [s.est_cycles for s in plan.stages]
    assert max(times) / min(times) < 1.15  # 8 equal layers over 4 chips: two each


def test_every_weight_tensor_is_placed_exactly_once_across_its_shards() -> None:
    plan = compile_model(DEMO_MODEL, SystemSpec(4))
    rows: dict[str, list[tuple[int, int]]] = {}
    for chip in plan.chips:
        for shard in chip.shards:
            if shard.kind is RegionKind.WEIGHT and not shard.tensor.endswith(".scale"):
                rows.setdefault(shard.tensor, []).append(shard.rows)
    assert len(rows) == 2 + 1 + DEMO_MODEL.n_layers * 9  # embeddings, norm, output; 9 per layer
    assert rows["output"] == [(0, DEMO_MODEL.vocab_size)]


def test_a_layer_too_large_for_one_chip_is_split_by_kv_heads() -> None:
    # Each layer of the tiny model is ~40 KiB of weights; 48 KiB chips cannot hold one with its KV and buffers.
    small = SystemSpec(12, ChipSpec(sram_bytes=48 * 1024))
    plan = compile_model(
        TINY, small, EngineConfig(max_num_seqs=1, max_num_batched_tokens=8, max_kv_tokens=128)
    )
    wide = [s for s in plan.stages if s.layers]
    assert all(s.width == TINY.n_kv_heads for s in wide)
    for stage in wide:
        kv_ranges = [
            next(sh.rows for sh in plan.chip(c).shards if sh.tensor.endswith("k_cache")) for c in stage.chips
        ]
        assert kv_ranges == partition(TINY.n_kv_heads, stage.width)
    for chip in plan.chips:
        assert chip.used_bytes <= 48 * 1024


def test_embedding_and_lm_head_split_by_vocabulary_rows_when_too_large() -> None:
    llama = MODEL_PRESETS["llama-2-70b"]
    plan = compile_model(llama, SystemSpec(576), EngineConfig(max_num_seqs=1))
    embed = plan.stages[0]
    assert embed.units[0].kind is UnitKind.EMBED and embed.width >= 2
    shards = [next(s for s in plan.chip(c).shards if s.tensor == "tok_embeddings") for c in embed.chips]
    assert [s.rows for s in shards] == partition(llama.vocab_size, embed.width)
    assert all(c.used_bytes <= c.capacity_bytes for c in plan.chips)


def test_refuses_a_model_that_cannot_fit_naming_tensor_bytes_and_chips_needed() -> None:
    with pytest.raises(CompileError) as info:
        compile_model(DEMO_MODEL, SystemSpec(2, ChipSpec(sram_bytes=8 * 2**20)), TINY_ENGINE)
    msg = str(info.value)
    assert "does not fit on 2 x GroqChip1" in msg
    assert "needs" in msg and "bytes" in msg and "free" in msg
    assert "it needs at least" in msg and "chips" in msg
    # the named chip count is enough
    needed = int(msg.split("it needs at least ")[1].split()[0])
    compile_model(DEMO_MODEL, SystemSpec(needed, ChipSpec(sram_bytes=8 * 2**20)), TINY_ENGINE)


def test_refuses_a_layer_that_cannot_fit_even_split_to_one_query_head_per_chip() -> None:
    # 16 KiB chips hold a vocabulary shard but not a quarter layer (one query head, a copy of its KV head)
    # with its KV cache for the full context.
    engine = EngineConfig(max_num_seqs=1, max_num_batched_tokens=8)
    with pytest.raises(
        CompileError, match=r"layers\.0 cannot fit even split over 4 chips \(its narrowest heads per chip\)"
    ):
        compile_model(TINY, SystemSpec(64, ChipSpec(sram_bytes=16 * 1024)), engine)


def test_kv_cache_fills_up_to_the_request_and_never_past_capacity() -> None:
    plan = compile_model(TINY, SystemSpec(2), EngineConfig(max_num_seqs=3, max_num_batched_tokens=64))
    assert plan.kv_tokens == 3 * TINY.max_context
    engine = EngineConfig(max_num_seqs=64, max_num_batched_tokens=64)
    tight = compile_model(TINY, SystemSpec(4, ChipSpec(sram_bytes=160 * 1024)), engine)
    assert TINY.max_context <= tight.kv_tokens < 64 * TINY.max_context
    assert tight.kv_tokens % tight.engine.kv_block_tokens == 0
    assert all(c.used_bytes <= c.capacity_bytes for c in tight.chips)


def test_spare_chips_are_reported_idle_or_used_for_tensor_parallelism() -> None:
    plan = compile_model(DEMO_MODEL, SystemSpec(16))
    assert plan.n_chips_used + plan.idle_chips == 16
    assert "idle" in plan.render()


def test_render_lists_each_chip_with_its_layers_and_sram() -> None:
    text = compile_model(DEMO_MODEL, SystemSpec(4)).render()
    assert "layers 2-3" in text and "used" in text and "free" in text
    assert len([line for line in text.splitlines() if line.strip().startswith(("0 ", "1 ", "2 ", "3 "))]) == 4


def test_a_group_that_fits_in_a_node_is_placed_inside_one_while_chips_are_spare() -> None:
    """A gather inside a node is one hop, across nodes two: the compiler leaves chips idle rather than let a
    group straddle two nodes, and never buys width with the chips that alignment needs."""
    model = dataclasses.replace(MODEL_PRESETS["llama-3-8b"], max_context=8192)
    plan = compile_model(model, SystemSpec(576), EngineConfig(max_num_seqs=1))
    per_node = plan.system.chips_per_node
    assert {s.width for s in plan.stages if s.layers} == {per_node}
    for i, stage in enumerate(plan.stages):
        if stage.width <= per_node:
            assert stage.chips[0] // per_node == stage.chips[-1] // per_node, stage
        assert all(plan.chip(c).stage == i for c in stage.chips)
    # Nodes of two chips: one spare chip lets every pair sit in a node; without it they straddle rather than
    # not fit.
    engine = EngineConfig(max_num_seqs=2, max_num_batched_tokens=16, max_kv_tokens=128)
    small = ChipSpec(sram_bytes=40 * 1024)
    spare, tight = (compile_model(TINY, SystemSpec(n, small, chips_per_node=2), engine) for n in (9, 8))
    assert [s.chips for s in spare.stages] == [(0,), (2, 3), (4, 5), (6, 7), (8,)]
    assert [s.chips for s in tight.stages] == [(0,), (1, 2), (3, 4), (5, 6), (7,)]
