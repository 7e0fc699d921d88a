"""A stage worker: one pipeline stage's chips, the weights it loads into them, and the program it runs.

A `StageWorker` owns the chips of one stage of a compiled plan. It opens the checkpoint source itself and reads
only the rows its chips hold, quantizes them (per output channel, so the bytes equal quantizing the whole
tensor) and copies them into the chips' SRAM; then it binds the model's decoder (`model.decoder_layer`, the
same code as the float32 reference) to ops that run on those chips. `execute(StageInput) -> StageOutput`
takes plain data in and out (a token batch and activations; activations or logits and the cycles charged),
so the executor around it can run the stage in this process or elsewhere.

Inside a stage of width w the group is tensor-parallel: every matrix is split by output channels (q/k/v by
KV-head groups, so each chip attends over the heads whose KV it holds), each chip computes its columns from
the same int8 input, written straight into the gathered output, and the all-gathers are charged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, ParamSpec, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from lpu_runtime import perfmodel
from lpu_runtime.backend import KernelBackend, QuantizedActs, backend_for, default_backend
from lpu_runtime.chip import Chip, gather_costs, linear_costs, vector_costs
from lpu_runtime.compiler import Plan, UnitKind
from lpu_runtime.fp8 import quantize_weight_fp8
from lpu_runtime.kernels import RopeTables
from lpu_runtime.link import deliver
from lpu_runtime.model import Checkpoint, DenseFFN, LayerOps, MoEFFN, TokenBatch, decoder_layer, residual_add
from lpu_runtime.perfmodel import FP32_BYTES, Placement
from lpu_runtime.quant import quantize_weight
from lpu_runtime.sharded_moe import ShardedExperts, ShardedRouter
from lpu_runtime.sram import RegionKind

F32 = NDArray[np.float32]
P = ParamSpec("P")
R = TypeVar("R")


class WeightSource(Protocol):
    """A `CheckpointSource` (plain data, picklable) or an already open `Checkpoint` (in-process only)."""

    def open(self) -> Checkpoint: ...


@dataclass(frozen=True)
class TensorLoaded:
    """One tensor's rows placed in a worker's chips."""

    tensor: str
    nbytes: int  # bytes of float32 read for it
    chips_filled: int  # chips of this worker whose last tensor it was


@dataclass(frozen=True)
class StageInput:
    batch: TokenBatch
    x: F32 | None  # (n_tokens, dim) float32 from the previous stage; None for the first stage


@dataclass(frozen=True)
class StageOutput:
    x: F32  # (n_tokens, dim) activations for the next stage, or (n_seqs, vocab) logits from the last
    cycles: tuple[int, ...]  # per micro-batch: cycles of the stage's busiest chip


class ShardedLinear:
    """Matrices that read the same input, each split by output channels over a tensor-parallel group; every
    chip runs its shards of all of them as one kernel call (q/k/v, gate/up)."""

    def __init__(
        self,
        chips: list[Chip],
        names: tuple[str, ...],
        place: Placement,
        gather: bool = True,
        per_sequence: bool = False,
    ) -> None:
        self.chips, self.names, self.per_sequence = chips, names, per_sequence
        self.hops = place.hops(0, len(chips))
        self.columns = [[chip.shards[n].rows for n in names] for chip in chips]  # [chip][matrix]
        self.widths = [self.columns[-1][m][1] for m in range(len(names))]
        # q/k/v shards feed the same chip's attention heads directly, so only the others are all-gathered.
        self.gather = gather and len(chips) > 1
        self._costs: dict[tuple[int, ...], list[list[int]]] = {}
        for chip in chips:
            chip.prepare_linear(names)

    def costs(self, tokens: tuple[int, ...]) -> list[list[int]]:
        """Each chip's cycles for each micro-batch of `tokens` rows: every matrix's GEMM and all-gather."""
        costs = self._costs.get(tokens)
        if costs is None:
            lead = self.chips[0]
            costs = []
            for chip, columns in zip(self.chips, self.columns, strict=True):
                per_micro = [0] * len(tokens)
                for name, (a, b), (a0, b0) in zip(self.names, columns, self.columns[0], strict=True):
                    parts = [linear_costs(chip.spec, tokens, b - a, chip.cols(name))]
                    if self.gather:
                        parts.append(
                            gather_costs(
                                lead.spec, tokens, (b0 - a0) * FP32_BYTES, len(self.chips), self.hops
                            )
                        )
                    for part in parts:
                        per_micro = [c + p for c, p in zip(per_micro, part, strict=True)]
                costs.append(per_micro)
            self._costs[tokens] = costs
        return costs

    def __call__(self, x: QuantizedActs) -> list[F32]:
        """One (n_tokens, width) float32 result per matrix, gathered over the group."""
        lead = self.chips[0]
        costs = self.costs(lead.micro_seqs if self.per_sequence else lead.micro_tokens)
        outs = [np.empty((x.n_tokens, w), dtype=np.float32) for w in self.widths]
        for chip, columns, cycles in zip(self.chips, self.columns, costs, strict=True):
            chip.linear(
                x, self.names, [out[:, a:b] for out, (a, b) in zip(outs, columns, strict=True)], cycles
            )
        return outs


class _One:
    """A single matrix as LayerOps reads it: its one result."""

    def __init__(self, linear: ShardedLinear) -> None:
        self.linear = linear

    def __call__(self, x: QuantizedActs) -> F32:
        return self.linear(x)[0]


class ShardedAttention:
    """Attention split by heads: each chip attends its query heads over the KV heads it holds, whole KV-head
    groups up to n_kv_heads chips, beyond that a share of one group's query heads over a copy of its KV head."""

    def __init__(self, chips: list[Chip], layer: int, head_dim: int, place: Placement) -> None:
        self.chips, self.layer, self.hops = chips, layer, place.hops(0, len(chips))
        self.kv_ranges = [chip.shards[f"layers.{layer}.k_cache"].rows for chip in chips]
        self.q_ranges = [
            tuple(r // head_dim for r in chip.shards[f"layers.{layer}.wq"].rows) for chip in chips
        ]

    def __call__(self, q: F32, k: F32, v: F32, batch: TokenBatch) -> F32:
        out = np.empty_like(q)  # (n_tokens, n_heads, head_dim)
        for chip, (a, b), (q0, q1) in zip(self.chips, self.kv_ranges, self.q_ranges, strict=True):
            heads = slice(q0, q1)
            chip.attention(self.layer, q[:, heads], k[:, a:b], v[:, a:b], batch, out[:, heads], q1 - q0)
        if len(self.chips) > 1:
            lead = self.chips[0]
            q0, q1 = self.q_ranges[0]
            row_bytes = (q1 - q0) * q.shape[2] * FP32_BYTES
            costs = gather_costs(lead.spec, lead.micro_tokens, row_bytes, len(self.chips), self.hops)
            for chip in self.chips:
                chip.charge(costs)
        return out


class ChargedVector(Generic[P, R]):
    """A vector op (a norm, RoPE, a quantize, a residual add) the host computes once for the stage, each chip
    charged the op over its own elements per token."""

    def __init__(self, fn: Callable[P, R], chips: list[Chip], elements: Sequence[int]) -> None:
        self.fn, self.chips, self.elements = fn, chips, elements  # elements per token, one per chip

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        tokens = self.chips[0].micro_tokens
        for chip, n in zip(self.chips, self.elements, strict=True):
            chip.charge(vector_costs(chip.spec, tokens, n))
        return self.fn(*args, **kwargs)


class StageWorker:
    def __init__(
        self,
        plan: Plan,
        stage: int,
        weights: WeightSource,
        backend: KernelBackend | None = None,
        on_tensor: Callable[[TensorLoaded], None] | None = None,
    ) -> None:
        self.plan = plan
        self.stage = plan.stages[stage]
        self.config = plan.model
        spec = plan.system.chip
        self.backend = backend_for(spec, backend or default_backend())
        self.chips = [Chip(plan.chip(c), spec, self.backend) for c in self.stage.chips]
        self.place = plan.placement(stage)
        self.load(weights.open(), on_tensor)
        self.rope = RopeTables.for_model(self.config)
        self.layers = {layer: self._layer_ops(layer) for layer in self.stage.layers}
        has_head = any(u.kind is UnitKind.HEAD for u in self.stage.units)
        self.lm_head = (
            _One(ShardedLinear(self.chips, ("output",), self.place, per_sequence=True)) if has_head else None
        )

    @property
    def tensor_names(self) -> list[str]:
        """The tensors this worker's chips hold, in load order (chip by chip)."""
        names: dict[str, None] = {}
        for chip in self.chips:
            for shard in chip.plan.shards:
                if shard.kind is RegionKind.WEIGHT and not shard.tensor.endswith(".scale"):
                    names[shard.tensor] = None
        return list(names)

    def load(self, checkpoint: Checkpoint, on_tensor: Callable[[TensorLoaded], None] | None = None) -> None:
        """Reads, quantizes and places every tensor this stage's chips hold, one tensor at a time and only
        the rows the stage holds, so at most one stage-sized float32 tensor is in host memory at once."""
        holders: dict[str, list[Chip]] = defaultdict(list)
        for chip in self.chips:
            for shard in chip.plan.shards:
                if shard.kind is RegionKind.WEIGHT and not shard.tensor.endswith(".scale"):
                    holders[shard.tensor].append(chip)
        last_tensor = {chip.chip_id: name for name, chips in holders.items() for chip in chips}
        for name, chips in holders.items():
            ranges = [chip.shards[name].rows for chip in chips]
            lo, hi = min(a for a, _ in ranges), max(b for _, b in ranges)
            part = checkpoint.rows(name, lo, hi)
            if part.ndim == 1:  # norms whole on every holder; biases by their matrix's rows
                for chip, (a, b) in zip(chips, ranges, strict=True):
                    chip.write(name, part[a:b])
            else:
                # One scale per output row: quantizing these rows alone gives the bytes the whole tensor would.
                # The embedding table is looked up, not multiplied: it stays int8 on an FP8 chip too.
                fp8 = self.plan.system.chip.weights == "fp8" and name != "tok_embeddings"
                qt = quantize_weight_fp8(part) if fp8 else quantize_weight(part)
                for chip, (a, b) in zip(chips, ranges, strict=True):
                    chip.write(name, qt.q[a - lo : b - lo])
                    chip.write(f"{name}.scale", qt.scale[a - lo : b - lo])
            if on_tensor is not None:
                filled = sum(1 for chip in chips if last_tensor[chip.chip_id] == name)
                on_tensor(TensorLoaded(name, part.nbytes, filled))

    def _layer_ops(self, layer: int) -> LayerOps[QuantizedActs]:
        p, chips, be, cfg = f"layers.{layer}", self.chips, self.backend, self.config
        lead, eps = chips[0], cfg.norm_eps
        # Elements per token of each vector op on each chip, in the order the layer runs them.
        norm1, rope_q, rope_k, act, add, norm2, *swiglu, _ = zip(
            *(perfmodel.layer_vector_ops(cfg, len(chips), rank) for rank in range(len(chips))), strict=True
        )

        def charged(fn: Callable[P, R], elements: Sequence[int]) -> ChargedVector[P, R]:
            return ChargedVector(fn, chips, elements)

        ffn: Callable[[QuantizedActs], F32]
        if cfg.is_moe:
            experts = ShardedExperts(chips, layer, cfg, be, self.place)
            ffn = MoEFFN[QuantizedActs](ShardedRouter(chips, f"{p}.router"), experts, cfg.n_experts_per_token)
        else:
            gate_up = ShardedLinear(chips, (f"{p}.w1", f"{p}.w3"), self.place)
            ffn = DenseFFN[QuantizedActs](
                gate_up,
                charged(be.silu_mul_quantize, swiglu[0]),
                _One(ShardedLinear(chips, (f"{p}.w2",), self.place)),
            )
        rope = partial(be.rope, tables=self.rope)
        return LayerOps[QuantizedActs](
            attn_norm=charged(
                partial(be.rmsnorm_quantize, weight=lead.tensor(f"{p}.attn_norm"), eps=eps), norm1
            ),
            ffn_norm=charged(
                partial(be.rmsnorm_quantize, weight=lead.tensor(f"{p}.ffn_norm"), eps=eps), norm2
            ),
            qkv=ShardedLinear(chips, (f"{p}.wq", f"{p}.wk", f"{p}.wv"), self.place, gather=False),
            wo=_One(ShardedLinear(chips, (f"{p}.wo",), self.place)),
            ffn=ffn,
            attention=ShardedAttention(chips, layer, cfg.head_dim, self.place),
            act=charged(be.quantize, act),
            rope_q=charged(rope, rope_q),
            rope_k=charged(rope, rope_k),
            add=charged(residual_add, add),  # both residual adds: dim elements each
        )

    def charge_all(self, cycles: Sequence[int]) -> None:
        for chip in self.chips:
            chip.charge(cycles)

    def execute(self, inp: StageInput) -> StageOutput:
        """Runs this stage's units on the step's tokens; returns what goes to the next stage (or the logits)
        and the cycles each micro-batch spent here."""
        batch, cfg = inp.batch, self.config
        spec = self.plan.system.chip
        for chip in self.chips:
            chip.begin_step(batch)
        x = None if inp.x is None else deliver(inp.x, self.chips)
        for unit in self.stage.units:
            if unit.kind is UnitKind.EMBED:
                x = self._embed(batch)
            elif unit.kind is UnitKind.LAYER:
                assert x is not None, "a decoder layer needs the previous stage's activations"
                x = decoder_layer(x, self.layers[unit.layer], cfg, batch)
            else:
                assert x is not None and self.lm_head is not None, "the LM head needs activations"
                self.charge_all(
                    [
                        perfmodel.vector_cycles(spec, n * cfg.dim, perfmodel.VECTOR_FLOPS_PER_ELEMENT)
                        for n in batch.micro_seq_counts
                    ]
                )
                rows = x[batch.last_rows]  # (n_seqs, dim)
                x = self.lm_head(
                    self.backend.rmsnorm_quantize(rows, self.chips[0].tensor("norm"), cfg.norm_eps)
                )
        assert x is not None
        cycles = tuple(max(c) for c in zip(*(chip.step_cycles for chip in self.chips), strict=True))
        return StageOutput(x, cycles)

    def _embed(self, batch: TokenBatch) -> F32:
        x = np.empty((batch.n_tokens, self.config.dim), dtype=np.float32)  # (n_tokens, dim)
        for chip in self.chips:
            chip.embed(batch.token_ids, x)
        if len(self.chips) > 1:
            spec, width, row_bytes = self.chips[0].spec, len(self.chips), self.config.dim * FP32_BYTES
            hops = self.place.hops(0, width)
            self.charge_all(
                [
                    perfmodel.allgather_cycles(spec, n * row_bytes // width, width, hops)
                    for n in batch.micro_tokens
                ]
            )
        return x
