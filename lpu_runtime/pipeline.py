"""The compiled model running on emulated chips: weights loaded into SRAM, batches moved stage to stage.

`Pipeline.forward` runs one step's token batch through every stage in order. Inside a stage the decoder
layers are the same code as the float32 reference (`model.decoder_layer`), bound to ops that run on the
stage's chips: each chip multiplies its int8 shard of every matrix and attends over its KV heads, and the
shards are gathered across the tensor-parallel group. Each op charges its chip; a stage takes as long as its
slowest chip, and the step as long as all stages plus the hops between them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lpu_runtime import perfmodel
from lpu_runtime.chip import Chip
from lpu_runtime.compiler import Plan, StagePlan, UnitKind
from lpu_runtime.gemm import Int8Gemm, NumpyExactGemm
from lpu_runtime.kernels import RopeTables, rmsnorm
from lpu_runtime.link import send_activations
from lpu_runtime.model import Checkpoint, LayerOps, TokenBatch, decoder_layer
from lpu_runtime.quant import quantize_weight
from lpu_runtime.sram import RegionKind

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class LoadStep:
    """Progress of filling the chips, reported after each tensor."""

    tensor: str
    nbytes: int  # bytes of float32 read for this tensor
    tensors_done: int
    tensors_total: int
    chips_filled: int  # chips whose every weight is in place
    chips_total: int


TensorLoaded = Callable[[LoadStep], None]


@dataclass(frozen=True)
class StepCost:
    cycles: int  # the whole step: every stage plus every hop
    stage_cycles: tuple[int, ...]  # per stage: its slowest chip
    link_cycles: int  # hops between stages


class ShardedLinear:
    """One matrix split by output channels over a tensor-parallel group."""

    def __init__(self, chips: list[Chip], name: str, gather: bool = True) -> None:
        self.chips, self.name = chips, name
        # q/k/v shards feed the same chip's attention heads directly, so only the others are all-gathered.
        self.gather = gather and len(chips) > 1

    def __call__(self, x: F32) -> F32:
        parts = [chip.linear(x, self.name) for chip in self.chips]
        if len(parts) == 1:
            return parts[0]
        if self.gather:
            cycles = perfmodel.allgather_cycles(self.chips[0].spec, parts[0].nbytes, len(parts))
            for chip in self.chips:
                chip.charge(cycles)
        return np.concatenate(parts, axis=1)


class ShardedAttention:
    """Attention split by KV-head groups: each chip attends over the heads whose KV it holds."""

    def __init__(self, chips: list[Chip], layer: int, group: int) -> None:
        self.chips, self.layer, self.group = chips, layer, group
        self.kv_ranges = [chip.shards[f"layers.{layer}.k_cache"].rows for chip in chips]

    def __call__(self, q: F32, k: F32, v: F32, batch: TokenBatch) -> F32:
        parts = []
        for chip, (a, b) in zip(self.chips, self.kv_ranges, strict=True):
            parts.append(
                chip.attention(self.layer, q[:, a * self.group : b * self.group], k[:, a:b], v[:, a:b], batch)
            )
        if len(parts) == 1:
            return parts[0]
        cycles = perfmodel.allgather_cycles(self.chips[0].spec, parts[0].nbytes, len(parts))
        for chip in self.chips:
            chip.charge(cycles)
        return np.concatenate(parts, axis=1)


class _Stage:
    def __init__(self, plan: StagePlan, chips: list[Chip], checkpoint_group: int) -> None:
        self.plan = plan
        self.chips = chips
        self.layers: dict[int, LayerOps] = {}
        for layer in plan.layers:
            p = f"layers.{layer}"
            lead = chips[0]
            self.layers[layer] = LayerOps(
                attn_norm=lead.tensor(f"{p}.attn_norm"),
                ffn_norm=lead.tensor(f"{p}.ffn_norm"),
                wq=ShardedLinear(chips, f"{p}.wq", gather=False),
                wk=ShardedLinear(chips, f"{p}.wk", gather=False),
                wv=ShardedLinear(chips, f"{p}.wv", gather=False),
                wo=ShardedLinear(chips, f"{p}.wo"),
                w1=ShardedLinear(chips, f"{p}.w1"),
                w3=ShardedLinear(chips, f"{p}.w3"),
                w2=ShardedLinear(chips, f"{p}.w2"),
                attention=ShardedAttention(chips, layer, checkpoint_group),
            )
        self.lm_head = ShardedLinear(chips, "output")

    def reset(self) -> None:
        for chip in self.chips:
            chip.step_cycles = 0

    def charge_all(self, cycles: int) -> None:
        for chip in self.chips:
            chip.charge(cycles)

    @property
    def cycles(self) -> int:
        return max(chip.step_cycles for chip in self.chips)


class Pipeline:
    def __init__(
        self,
        plan: Plan,
        checkpoint: Checkpoint,
        gemm: Int8Gemm | None = None,
        on_tensor: TensorLoaded | None = None,
    ) -> None:
        if checkpoint.config != plan.model:
            raise ValueError(
                f"checkpoint is {checkpoint.config.name!r} but the plan is for {plan.model.name!r}"
            )
        # The planner places these (`lpu plan`); the emulator's decoder runs dense layers on whole KV heads.
        if plan.model.is_moe or any(s.width > plan.model.n_kv_heads for s in plan.stages if s.layers):
            raise ValueError(
                f"{plan.model.name}: the emulator runs dense layers split over at most n_kv_heads "
                f"({plan.model.n_kv_heads}) chips; this plan is for `lpu plan` only"
            )
        self.plan = plan
        self.config = plan.model
        spec = plan.system.chip
        kernel = gemm or NumpyExactGemm()
        self.chips = [Chip(cp, spec, kernel) for cp in plan.chips]
        self._load(checkpoint, on_tensor)
        group = self.config.n_heads // self.config.n_kv_heads
        self.stages = [_Stage(s, [self.chips[c] for c in s.chips], group) for s in plan.stages]
        self.rope = RopeTables.for_model(self.config)

    def _load(self, checkpoint: Checkpoint, on_tensor: TensorLoaded | None) -> None:
        """Quantizes each tensor once and copies every chip's rows of it into that chip's SRAM.

        Tensors are fetched one at a time, in chip order, so at most one float32 tensor is in host memory
        beyond the chips' SRAM, and the chips fill one after another.
        """
        by_tensor: dict[str, list[Chip]] = defaultdict(list)
        for chip in self.chips:
            for shard in chip.plan.shards:
                if shard.kind is RegionKind.WEIGHT and not shard.tensor.endswith(".scale"):
                    by_tensor[shard.tensor].append(chip)
        last_tensor = {chip.chip_id: name for name, holders in by_tensor.items() for chip in holders}
        filled = 0
        for done, (name, holders) in enumerate(by_tensor.items(), start=1):
            full = checkpoint.tensor(name)
            if full.ndim == 1:  # norms whole on every holder; biases by their matrix's rows
                for chip in holders:
                    a, b = chip.shards[name].rows
                    chip.write(name, full[a:b])
            else:
                qt = quantize_weight(full)
                for chip in holders:
                    a, b = chip.shards[name].rows
                    chip.write(name, qt.q[a:b])
                    chip.write(f"{name}.scale", qt.scale[a:b])
            filled += sum(1 for chip in holders if last_tensor[chip.chip_id] == name)
            if on_tensor is not None:
                on_tensor(LoadStep(name, full.nbytes, done, len(by_tensor), filled, len(self.chips)))

    def forward(self, batch: TokenBatch) -> tuple[F32, StepCost]:
        """Runs one step; returns logits (n_seqs, vocab) float32 at each sequence's last token, and its cost."""
        cfg, engine = self.config, self.plan.engine
        if batch.n_tokens > engine.max_num_batched_tokens or len(batch.seqs) > engine.max_num_seqs:
            raise ValueError(
                f"a step of {batch.n_tokens} tokens in {len(batch.seqs)} sequences exceeds the compiled buffers "
                f"({engine.max_num_batched_tokens} tokens, {engine.max_num_seqs} sequences)"
            )
        x: F32 = np.empty((0, cfg.dim), dtype=np.float32)
        stage_cycles, link_cycles = [], 0
        logits: F32 | None = None
        for i, stage in enumerate(self.stages):
            stage.reset()
            width = len(stage.chips)
            for unit in stage.plan.units:
                if unit.kind is UnitKind.EMBED:
                    x = self._embed(stage, batch.token_ids)
                elif unit.kind is UnitKind.LAYER:
                    stage.charge_all(
                        perfmodel.layer_vector_cycles(stage.chips[0].spec, cfg, batch.n_tokens, width)
                    )
                    x = decoder_layer(x, stage.layers[unit.layer], cfg, self.rope, batch)
                else:
                    rows = x[batch.last_rows]  # (n_seqs, dim)
                    stage.charge_all(perfmodel.vector_cycles(stage.chips[0].spec, rows.size, 4.0))
                    logits = stage.lm_head(rmsnorm(rows, stage.chips[0].tensor("norm"), cfg.norm_eps))
            stage_cycles.append(stage.cycles)
            if i + 1 < len(self.stages):
                x, cycles = send_activations(self.plan, stage.chips[0], self.stages[i + 1].chips, x)
                link_cycles += cycles
        assert logits is not None, "the plan has no LM head stage"
        return logits, StepCost(sum(stage_cycles) + link_cycles, tuple(stage_cycles), link_cycles)

    def _embed(self, stage: _Stage, token_ids: NDArray[np.int64]) -> F32:
        x = np.empty((token_ids.shape[0], self.config.dim), dtype=np.float32)  # (n_tokens, dim)
        for chip in stage.chips:
            owned, rows = chip.embed(token_ids)
            x[owned] = rows
        if len(stage.chips) > 1:
            stage.charge_all(
                perfmodel.allgather_cycles(
                    stage.chips[0].spec, x.nbytes // len(stage.chips), len(stage.chips)
                )
            )
        return x
