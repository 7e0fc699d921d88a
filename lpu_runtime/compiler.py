"""The compiler: places a model on N chips so that every byte has an SRAM address within its chip's capacity.

The model is a chain of units: the embedding table, each decoder layer, and the final norm + LM head. The
compiler cuts the chain into contiguous pipeline stages, balanced by the performance model's estimate of each
stage's decode time, and gives each stage a group of chips. A stage on more than one chip is tensor-parallel:
every matrix in it is split by output channels (attention by KV-head groups, embedding and LM head by vocabulary
rows), so a unit too large for one chip is spread over as many as it needs. Every tensor shard, the KV-cache
reservation and the activation buffers then get SRAM offsets on their chip's arena.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from lpu_runtime import perfmodel
from lpu_runtime.config import ChipSpec, EngineConfig, ModelConfig, SystemSpec
from lpu_runtime.errors import CompileError, SramOverflowError
from lpu_runtime.perfmodel import FP16_BYTES, FP32_BYTES, Placement
from lpu_runtime.sharding import expert_shard, head_ranges, layer_widths, part
from lpu_runtime.sram import Region, RegionKind, SramArena

# Context length at which the compiler estimates a decode step to balance stages (tokens).
BALANCE_CONTEXT = 512
# Share of physical memory the emulated chips' SRAM may take; the rest is the process, numpy temporaries
# and one float32 tensor in flight while loading.
HOST_MEMORY_FRACTION = 0.8


class UnitKind(StrEnum):
    EMBED = "embed"
    LAYER = "layer"
    HEAD = "head"


@dataclass(frozen=True)
class Unit:
    kind: UnitKind
    layer: int = -1  # the decoder layer's index for LAYER units

    @property
    def name(self) -> str:
        return f"layers.{self.layer}" if self.kind is UnitKind.LAYER else self.kind.value


@dataclass(frozen=True)
class TensorShard:
    """Rows [start, stop) of one logical tensor, held in one region of one chip."""

    tensor: str  # e.g. "layers.3.wq", "layers.3.wq.scale", "layers.3.k_cache", "output"
    kind: RegionKind
    dtype: str  # numpy dtype name: "int8", "float32", "float16"
    shape: tuple[int, ...]  # shape of this chip's piece
    rows: tuple[int, int]  # for KV caches: the KV-head range

    @property
    def nbytes(self) -> int:
        itemsize = {"int8": 1, "float16": FP16_BYTES, "float32": FP32_BYTES}[self.dtype]
        n = itemsize
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class ChipPlan:
    chip_id: int
    stage: int
    rank: int  # position in the stage's tensor-parallel group
    capacity_bytes: int
    regions: tuple[Region, ...]
    shards: tuple[TensorShard, ...]  # one per region, same order

    @property
    def used_bytes(self) -> int:
        return max((r.end for r in self.regions), default=0)

    def bytes_of(self, kind: RegionKind) -> int:
        return sum(r.nbytes for r in self.regions if r.kind is kind)


@dataclass(frozen=True)
class StagePlan:
    index: int
    chips: tuple[int, ...]  # the tensor-parallel group, in rank order
    units: tuple[Unit, ...]
    est_cycles: int  # estimated cycles of one decode token through this stage

    @property
    def width(self) -> int:
        return len(self.chips)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(u.layer for u in self.units if u.kind is UnitKind.LAYER)


@dataclass(frozen=True)
class Plan:
    model: ModelConfig
    system: SystemSpec
    engine: EngineConfig
    stages: tuple[StagePlan, ...]
    chips: tuple[ChipPlan, ...]  # only the chips in use, by chip_id
    kv_tokens: int  # KV-cache slots reserved per layer (tokens, a multiple of the block size)

    @property
    def n_chips_used(self) -> int:
        return len(self.chips)

    @property
    def idle_chips(self) -> int:
        return self.system.n_chips - len(self.chips)

    @property
    def kv_blocks(self) -> int:
        return self.kv_tokens // self.engine.kv_block_tokens

    @property
    def kv_capacity_tokens(self) -> int:
        """KV tokens per layer the layout could hold: the reservation plus what the fullest chip's free SRAM
        adds, in whole blocks. `lpu compile` and `lpu plan` both report it, whatever each reserved."""
        block, align = self.engine.kv_block_tokens, self.system.chip.sram_alignment_bytes
        best: int | None = None
        for chip in self.chips:
            kv = [s for s in chip.shards if s.kind is RegionKind.KV]
            if not kv:
                continue
            per_token = sum(s.nbytes // s.shape[0] for s in kv)
            slack = chip.capacity_bytes - chip.used_bytes - len(kv) * align  # alignment may take a unit each
            more = max(0, slack) // per_token // block * block
            best = more if best is None else min(best, more)
        return self.kv_tokens + (best or 0)

    @cached_property
    def _chip_index(self) -> dict[int, ChipPlan]:
        return {c.chip_id: c for c in self.chips}

    def chip(self, chip_id: int) -> ChipPlan:
        """The plan of chip `chip_id` (chips left idle to keep a group inside a node have none)."""
        return self._chip_index[chip_id]

    def placement(self, stage: int) -> Placement:
        """Where stage `stage`'s group sits among the nodes: how many hops its gathers cross."""
        return Placement(self.stages[stage].chips[0], self.system.chips_per_node)

    def hop_cycles(self, src_chip: int, dst_chip: int, nbytes: int) -> int:
        """A transfer between two chips: one hop inside a node, two across nodes."""
        per_node = self.system.chips_per_node
        hops = 1 if src_chip // per_node == dst_chip // per_node else 2
        return perfmodel.link_cycles(self.system.chip, nbytes, hops)

    def transfer_cycles(self, stage: int, n_tokens: int) -> int:
        """Activations (n_tokens, dim) fp32 from stage `stage`'s first chip to every chip of the next one, over
        parallel links: the slowest receiver."""
        nbytes = n_tokens * self.model.dim * FP32_BYTES
        src = self.stages[stage].chips[0]
        return max(self.hop_cycles(src, c, nbytes) for c in self.stages[stage + 1].chips)

    @property
    def est_decode_cycles(self) -> int:
        """One token through every stage plus the hops between them, batch 1."""
        hops = sum(self.transfer_cycles(i, 1) for i in range(len(self.stages) - 1))
        return sum(s.est_cycles for s in self.stages) + hops

    def render(self) -> str:
        return render_plan(self)


def unit_widths(model: ModelConfig, unit: Unit) -> Sequence[int]:
    """The group widths a unit can be split over, ascending: layers by heads (see `layer_widths`), the
    embedding table and LM head by vocabulary rows."""
    return layer_widths(model) if unit.kind is UnitKind.LAYER else range(1, model.vocab_size + 1)


def max_width(model: ModelConfig, unit: Unit) -> int:
    """The widest split spare chips may buy: layers stop at whole KV heads, and MoE layers at whole experts.
    Copying KV heads, or splitting experts, only ever happens to make a layer fit: the copies cost SRAM and
    the split experts' gathers cost time, and the calibrated deployments (docs/perfmodel.md) are laid out so."""
    if unit.kind is not UnitKind.LAYER:
        return model.vocab_size
    return min(model.n_kv_heads, model.n_experts) if model.is_moe else model.n_kv_heads


def unit_shards(model: ModelConfig, unit: Unit, width: int, rank: int, kv_tokens: int) -> list[TensorShard]:
    """The pieces of `unit` that chip `rank` of a `width`-chip group holds."""
    d, hd = model.dim, model.head_dim

    def matrix(name: str, rows: tuple[int, int], cols: int, bias: bool = False) -> list[TensorShard]:
        n = rows[1] - rows[0]
        shards = [
            TensorShard(name, RegionKind.WEIGHT, "int8", (n, cols), rows),
            TensorShard(f"{name}.scale", RegionKind.WEIGHT, "float32", (n,), rows),
        ]
        if bias:  # sharded with its matrix's rows, so each chip adds the bias of the channels it computes
            shards.append(TensorShard(f"{name}.bias", RegionKind.WEIGHT, "float32", (n,), rows))
        return shards

    def vector(name: str, n: int) -> TensorShard:
        return TensorShard(name, RegionKind.WEIGHT, "float32", (n,), (0, n))

    if unit.kind is UnitKind.EMBED:
        return matrix("tok_embeddings", part(model.vocab_size, width, rank), d)
    if unit.kind is UnitKind.HEAD:
        return [vector("norm", d), *matrix("output", part(model.vocab_size, width, rank), d)]
    p = f"layers.{unit.layer}"
    (q0, q1), (kv0, kv1) = head_ranges(model, width, rank)
    dim_rows = part(d, width, rank)
    if model.is_moe:  # experts stacked (expert e's rows at e * ffn_dim ...): whole ones, or a slice of one
        ex, f = expert_shard(model, width, rank), model.ffn_dim
        ffn = [
            *matrix(f"{p}.router", (0, model.n_experts), d),
            *matrix(f"{p}.w1", ex.stacked(ex.ffn_rows, f), d),
            *matrix(f"{p}.w3", ex.stacked(ex.ffn_rows, f), d),
            *matrix(f"{p}.w2", ex.stacked(ex.dim_rows, d), f),
        ]
    else:
        ffn_rows = part(model.ffn_dim, width, rank)
        ffn = [
            *matrix(f"{p}.w1", ffn_rows, d),
            *matrix(f"{p}.w3", ffn_rows, d),
            *matrix(f"{p}.w2", dim_rows, model.ffn_dim),
        ]
    return [
        vector(f"{p}.attn_norm", d),
        *matrix(f"{p}.wq", (q0 * hd, q1 * hd), d, model.attention_bias),
        *matrix(f"{p}.wk", (kv0 * hd, kv1 * hd), d, model.attention_bias),
        *matrix(f"{p}.wv", (kv0 * hd, kv1 * hd), d, model.attention_bias),
        *matrix(f"{p}.wo", dim_rows, model.q_dim),
        vector(f"{p}.ffn_norm", d),
        *ffn,
        TensorShard(f"{p}.k_cache", RegionKind.KV, "float16", (kv_tokens, kv1 - kv0, hd), (kv0, kv1)),
        TensorShard(f"{p}.v_cache", RegionKind.KV, "float16", (kv_tokens, kv1 - kv0, hd), (kv0, kv1)),
    ]


def buffer_shards(
    model: ModelConfig, engine: EngineConfig, units: Sequence[Unit], width: int
) -> list[TensorShard]:
    """Activation buffers: the landing zone for incoming activations and room for the widest intermediate.

    The emulator computes intermediates as numpy temporaries; the scratch reservation is what the real chip
    would need to hold them, so it is charged against SRAM all the same.
    """
    tokens = engine.max_num_batched_tokens
    attn = max(model.q_dim + 2 * model.kv_dim, model.dim)  # q, k, v of every token, or wo's output rows
    widest = 0
    for u in units:
        if u.kind is UnitKind.LAYER and model.is_moe:  # a chip may compute its expert rows for every token
            rows = expert_shard(model, width, 0).ffn_rows
            widest = max(widest, tokens * max(rows[1] - rows[0], -(-attn // width)))
        elif u.kind is UnitKind.LAYER:
            widest = max(widest, tokens * -(-max(model.ffn_dim, attn) // width))
        elif u.kind is UnitKind.HEAD:
            widest = max(widest, engine.max_num_seqs * -(-model.vocab_size // width))
    return [
        TensorShard("act_in", RegionKind.BUFFER, "float32", (tokens, model.dim), (0, tokens)),
        TensorShard("scratch", RegionKind.BUFFER, "float32", (max(widest, 1),), (0, max(widest, 1))),
    ]


def model_units(model: ModelConfig) -> list[Unit]:
    return [
        Unit(UnitKind.EMBED),
        *(Unit(UnitKind.LAYER, i) for i in range(model.n_layers)),
        Unit(UnitKind.HEAD),
    ]


def unit_cycles(chip: ChipSpec, model: ModelConfig, unit: Unit, width: int, place: Placement) -> int:
    """Estimated cycles of one decode token through a unit split `width` ways."""
    return step_unit_cycles(chip, model, unit, width, 1, BALANCE_CONTEXT, 1, place)


def step_unit_cycles(
    chip: ChipSpec,
    model: ModelConfig,
    unit: Unit,
    width: int,
    n_tokens: int,
    n_ctx: int,
    n_seqs: int,
    place: Placement,
) -> int:
    """Cycles of one step (n_tokens new tokens in n_seqs sequences over n_ctx positions) through a unit."""
    if unit.kind is UnitKind.LAYER:
        return perfmodel.layer_cycles(chip, model, n_tokens, n_ctx, width, n_seqs, place)
    if unit.kind is UnitKind.EMBED:
        return perfmodel.embed_cycles(chip, model, n_tokens, width, place)
    return perfmodel.head_cycles(chip, model, n_seqs, width, place)


class _Compiler:
    def __init__(
        self, model: ModelConfig, system: SystemSpec, engine: EngineConfig, min_kv_tokens: int | None = None
    ) -> None:
        self.model, self.system, self.engine = model, system, engine
        self.chip = system.chip
        self.units = model_units(model)
        block = engine.kv_block_tokens
        # Every request must be able to run alone at full context: that much KV is the minimum reservation
        # (more when the caller must hold several full contexts at once, as the planner's batch).
        self.kv_min = -(-max(model.max_context, min_kv_tokens or 0) // block) * block
        self._bytes_cache: dict[tuple[UnitKind, int, int], int] = {}
        self._cycles_cache: dict[tuple[UnitKind, int], int] = {}

    def place(
        self, first_chip: int, units: Sequence[Unit], width: int, kv_tokens: int, ranks: int | None = None
    ) -> list[SramArena]:
        """Allocates a stage's regions on fresh arenas (the first `ranks` of the group, default all);
        raises SramOverflowError naming the first tensor that does not fit."""
        arenas = []
        for rank in range(width if ranks is None else ranks):
            arena = SramArena(first_chip + rank, self.chip.sram_bytes, self.chip.sram_alignment_bytes)
            shards = [s for u in units for s in unit_shards(self.model, u, width, rank, kv_tokens)]
            for s in [*shards, *buffer_shards(self.model, self.engine, units, width)]:
                arena.allocate(s.tensor, s.nbytes, s.kind)
            arenas.append(arena)
        return arenas

    def unit_bytes(self, kind: UnitKind, width: int, kv_tokens: int) -> int:
        """SRAM bytes the unit takes on rank 0 of its group (rank 0 holds the largest shard), alignment
        included. Every layer is the same size, so the result is cached by kind."""
        key = (kind, width, kv_tokens)
        if key not in self._bytes_cache:
            unit = Unit(kind, 0)
            shards = unit_shards(self.model, unit, width, 0, kv_tokens)
            self._bytes_cache[key] = sum(self.aligned(s.nbytes) for s in shards)
        return self._bytes_cache[key]

    def aligned(self, nbytes: int) -> int:
        a = self.chip.sram_alignment_bytes
        return -(-nbytes // a) * a

    def fits(self, units: Sequence[Unit], width: int, kv_tokens: int) -> bool:
        buffers = sum(self.aligned(s.nbytes) for s in buffer_shards(self.model, self.engine, units, width))
        total = buffers + sum(self.unit_bytes(u.kind, width, kv_tokens) for u in units)
        return total <= self.chip.sram_bytes

    def stage_cycles(self, units: Sequence[Unit], width: int) -> int:
        """A stage's cycles as balancing sees them: its group placed from a node's first chip (`compile`
        keeps a group that fits in a node inside one when spare chips allow)."""
        total = 0
        for u in units:
            key = (u.kind, width)
            if key not in self._cycles_cache:
                self._cycles_cache[key] = unit_cycles(self.chip, self.model, u, width, self.placement(0))
            total += self._cycles_cache[key]
        return total

    def placement(self, first_chip: int) -> Placement:
        return Placement(first_chip, self.system.chips_per_node)

    def node_skip(self, first_chip: int, width: int) -> int:
        """Chips to leave idle so that a group no wider than a node does not straddle two."""
        per_node = self.system.chips_per_node
        offset = first_chip % per_node
        return per_node - offset if width <= per_node and offset + width > per_node else 0

    def min_width(self, unit: Unit) -> int:
        """Fewest chips that hold the unit alone (with minimum KV); CompileError if no split is enough."""
        widths = unit_widths(self.model, unit)
        limit = widths[-1]
        if not self.fits([unit], limit, self.kv_min):
            try:
                self.place(0, [unit], limit, self.kv_min, ranks=1)
            except SramOverflowError as exc:
                how = "its narrowest heads per chip" if unit.kind is UnitKind.LAYER else "one row per chip"
                raise CompileError(
                    f"{self.model.name}: {unit.name} cannot fit even split over {limit} chips ({how}): {exc}"
                ) from None
        # Exponential then binary search over the allowed widths: fitting is monotone in the width.
        hi = 0
        while not self.fits([unit], widths[hi], self.kv_min):
            hi = min(2 * hi + 1, len(widths) - 1)
        lo = (hi - 1) // 2 + 1 if hi else 0
        while lo < hi:
            mid = (lo + hi) // 2
            if self.fits([unit], widths[mid], self.kv_min):
                hi = mid
            else:
                lo = mid + 1
        return widths[hi]

    def pack(self, widths: dict[Unit, int], max_stage_cycles: int | None) -> list[tuple[list[Unit], int]]:
        """Greedy contiguous packing: units needing a wide group stand alone; others share a chip while the
        stage stays within its time budget and SRAM."""
        stages: list[tuple[list[Unit], int]] = []
        cur: list[Unit] = []
        for u in self.units:
            if widths[u] > 1:
                if cur:
                    stages.append((cur, 1))
                    cur = []
                stages.append(([u], widths[u]))
                continue
            cand = [*cur, u]
            over_time = max_stage_cycles is not None and self.stage_cycles(cand, 1) > max_stage_cycles
            if cur and (over_time or not self.fits(cand, 1, self.kv_min)):
                stages.append((cur, 1))
                cand = [u]
            cur = cand
        if cur:
            stages.append((cur, 1))
        return stages

    def not_enough_chips(self, widths: dict[Unit, int]) -> CompileError:
        """Replays the packing on the chips there are, to name the tensor that finds no room."""
        stages = self.pack(widths, None)
        n = self.system.n_chips
        used, detail = 0, ""
        for i, (units, width) in enumerate(stages):
            if used + width <= n:
                used += width
                continue
            prev_units, prev_width = stages[i - 1] if i else ([], 0)
            if width == 1 and prev_width == 1:
                try:
                    self.place(used - 1, [*prev_units, units[0]], 1, self.kv_min)
                except SramOverflowError as exc:
                    detail = str(exc)
            if not detail:
                total = self.unit_bytes(units[0].kind, 1, self.kv_min)
                detail = (
                    f"{units[0].name} needs {total:,} bytes, split over {width} chips, but only {n - used} "
                    f"chip(s) with {(n - used) * self.chip.sram_bytes:,} bytes free remain"
                )
            break
        return CompileError(
            f"{self.model.name} does not fit on {n} x {self.chip.name} ({self.chip.sram_bytes:,} bytes of SRAM "
            f"each): {detail}; it needs at least {sum(w for _, w in stages)} chips "
            f"(with a KV cache of {self.kv_min:,} tokens)"
        )

    def layout(self) -> list[tuple[list[Unit], int]]:
        widths = {u: self.min_width(u) for u in self.units}
        n = self.system.n_chips
        if sum(w for _, w in self.pack(widths, None)) > n:
            raise self.not_enough_chips(widths)
        # Smallest per-stage time budget whose packing still fits in n chips: balances the pipeline.
        lo = max(self.stage_cycles([u], widths[u]) for u in self.units)
        hi = self.stage_cycles(self.units, 1)
        while lo < hi:
            mid = (lo + hi) // 2
            if sum(w for _, w in self.pack(widths, mid)) <= n:
                hi = mid
            else:
                lo = mid + 1
        stages = self.pack(widths, lo)
        return self.widen(stages, n - sum(w for _, w in stages))

    def widen(self, stages: list[tuple[list[Unit], int]], spare: int) -> list[tuple[list[Unit], int]]:
        """Spends spare chips on tensor parallelism where the performance model says it saves the most time,
        never at the price of a group that fits in a node no longer being placed inside one."""
        done: set[int] = set()
        straddling = len(self.straddling(stages))
        while spare > 0:
            best, gain = -1, 0
            for i, (units, width) in enumerate(stages):
                w = width + 1
                if i in done or any(w > max_width(self.model, u) for u in units):
                    continue
                g = self.stage_cycles(units, width) - self.stage_cycles(units, w)
                if g > gain:
                    best, gain = i, g
            if best < 0:
                break
            units, width = stages[best]
            wider = [*stages[:best], (units, width + 1), *stages[best + 1 :]]
            n_straddling = len(self.straddling(wider))
            if n_straddling > straddling:
                done.add(best)
                continue
            stages, spare, straddling = wider, spare - 1, n_straddling
        return stages

    def first_chips(self, stages: Sequence[tuple[list[Unit], int]]) -> list[int]:
        """Each stage's first chip: in order, a group that fits in a node skips to the next node rather than
        straddle two, while the system has chips to spare for it."""
        spare = self.system.n_chips - sum(width for _, width in stages)
        first, firsts = 0, []
        for _, width in stages:
            skip = self.node_skip(first, width)
            if skip <= spare:
                first, spare = first + skip, spare - skip
            firsts.append(first)
            first += width
        return firsts

    def straddling(self, stages: Sequence[tuple[list[Unit], int]]) -> list[int]:
        """The stages whose group fits in a node but is placed across two."""
        return [
            i
            for i, ((_, width), first) in enumerate(zip(stages, self.first_chips(stages), strict=True))
            if self.node_skip(first, width)
        ]

    def kv_capacity(self, stages: list[tuple[list[Unit], int]]) -> int:
        """KV slots per layer: as many as asked for, up to what the fullest chip can still hold."""
        block = self.engine.kv_block_tokens
        wanted = self.engine.max_kv_tokens or self.engine.max_num_seqs * self.model.max_context
        wanted = max(self.kv_min, wanted // block * block)
        best = wanted
        first = 0
        for units, width in stages:
            arenas = self.place(first, units, width, self.kv_min)
            for rank, arena in enumerate(arenas):
                per_token = sum(
                    s.nbytes // s.shape[0]
                    for u in units
                    for s in unit_shards(self.model, u, width, rank, 1)
                    if s.kind is RegionKind.KV
                )
                if per_token:
                    # Alignment may cost up to one alignment unit per KV region.
                    slack = arena.free_bytes - 2 * len(units) * self.chip.sram_alignment_bytes
                    best = min(best, self.kv_min + max(0, slack) // per_token // block * block)
            first += width
        return best

    def compile(self) -> Plan:
        stages_units = self.layout()
        kv_tokens = self.kv_capacity(stages_units)
        stages, chips = [], []
        firsts = self.first_chips(stages_units)  # a gather inside a node is one hop, across nodes two
        for index, ((units, width), first) in enumerate(zip(stages_units, firsts, strict=True)):
            arenas = self.place(first, units, width, kv_tokens)
            for rank, arena in enumerate(arenas):
                shards = [s for u in units for s in unit_shards(self.model, u, width, rank, kv_tokens)]
                shards += buffer_shards(self.model, self.engine, units, width)
                chips.append(
                    ChipPlan(
                        arena.chip_id, index, rank, arena.capacity_bytes, tuple(arena.regions), tuple(shards)
                    )
                )
            stage_chips = tuple(range(first, first + width))
            est = sum(unit_cycles(self.chip, self.model, u, width, self.placement(first)) for u in units)
            stages.append(StagePlan(index, stage_chips, tuple(units), est))
        return Plan(self.model, self.system, self.engine, tuple(stages), tuple(chips), kv_tokens)


def check_host_memory(plan: Plan) -> None:
    """The emulator backs every chip's planned SRAM with host memory: refuse a plan this machine cannot
    hold before filling it (planning and compiling such a model needs no memory: `lpu compile`)."""
    needed = sum(c.used_bytes for c in plan.chips)  # bytes
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # bytes
    if needed > HOST_MEMORY_FRACTION * physical:
        raise CompileError(
            f"{plan.model.name}: emulating {plan.n_chips_used} chips needs {needed / 2**30:,.1f} GiB of host "
            f"memory for their SRAM but this machine has {physical / 2**30:,.1f} GiB; "
            f"`lpu compile --model {plan.model.name}` plans it without weights"
        )


def compile_model(
    model: ModelConfig,
    system: SystemSpec,
    engine: EngineConfig | None = None,
    min_kv_tokens: int | None = None,
) -> Plan:
    """Places `model` on `system`; raises CompileError with the numbers when it cannot fit. Every layer's
    chips hold at least `min_kv_tokens` KV slots (default: one full context)."""
    return _Compiler(model, system, engine or EngineConfig(), min_kv_tokens).compile()


def min_chips(
    model: ModelConfig,
    system: SystemSpec,
    engine: EngineConfig | None = None,
    min_kv_tokens: int | None = None,
) -> int:
    """The fewest chips `compile_model` can place the model on (SRAM the only limit); CompileError if a unit
    cannot fit on any split. `system.n_chips` is ignored."""
    compiler = _Compiler(model, system, engine or EngineConfig(), min_kv_tokens)
    widths = {u: compiler.min_width(u) for u in compiler.units}
    return sum(w for _, w in compiler.pack(widths, None))


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def _unit_span(units: Sequence[Unit]) -> str:
    names = []
    layers = [u.layer for u in units if u.kind is UnitKind.LAYER]
    if any(u.kind is UnitKind.EMBED for u in units):
        names.append("embed")
    if layers:
        names.append(f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}")
    if any(u.kind is UnitKind.HEAD for u in units):
        names.append("norm+lm_head")
    return ", ".join(names)


def render_plan(plan: Plan) -> str:
    m, chip = plan.model, plan.system.chip
    lines = [
        f"model {m.name}: {m.n_layers} layers, dim {m.dim}, {m.n_heads} heads / {m.n_kv_heads} KV heads "
        f"of {m.head_dim}, vocab {m.vocab_size}, {m.n_params / 1e6:,.1f}M params",
        f"system: {plan.system.n_chips} x {chip.name} ({_mib(chip.sram_bytes)} MiB SRAM each, "
        f"{plan.system.chips_per_node} per node); {plan.n_chips_used} used, {plan.idle_chips} idle",
        f"pipeline: {len(plan.stages)} stages; KV cache {plan.kv_tokens:,} tokens per layer reserved "
        f"({plan.kv_blocks:,} blocks of {plan.engine.kv_block_tokens}), {plan.kv_capacity_tokens:,} fit",
        f"estimated decode: {plan.est_decode_cycles:,} cycles/token = "
        f"{chip.clock_hz / max(plan.est_decode_cycles, 1):,.0f} tokens/s per user "
        f"(batch 1, at {BALANCE_CONTEXT} tokens of context; `lpu plan` gives the pipelined figure for a batch)",
        "",
        f"{'chip':>5} {'stage':>5} {'rank':>4}  {'holds':<34} {'weights':>10} {'kv':>10} {'buffers':>9}"
        f" {'used':>10} {'free':>10}  (MiB)",
    ]
    stage_of = {s.index: s for s in plan.stages}
    for c in plan.chips:
        st = stage_of[c.stage]
        holds = _unit_span(st.units) + (f" [shard {c.rank + 1}/{st.width}]" if st.width > 1 else "")
        lines.append(
            f"{c.chip_id:>5} {c.stage:>5} {c.rank:>4}  {holds:<34} {_mib(c.bytes_of(RegionKind.WEIGHT)):>10} "
            f"{_mib(c.bytes_of(RegionKind.KV)):>10} {_mib(c.bytes_of(RegionKind.BUFFER)):>9} "
            f"{_mib(c.used_bytes):>10} {_mib(c.capacity_bytes - c.used_bytes):>10}"
        )
    return "\n".join(lines)
