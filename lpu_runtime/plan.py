"""The planner behind `lpu plan`: chips, layout, speed, power and cost of a model on an LPU system, next to a
GPU server, from the compiler's real placement and the one performance model the emulator's clock uses.

Speeds follow the engine's schedule: the batch's sequences decode in micro-batches, up to one per pipeline
stage in flight at once (as a real LPU's static schedule keeps its pipeline full, and as the emulator's
timeline runs them); the prompt is prefilled in chunks of `max_num_batched_tokens`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpu_runtime import perfmodel
from lpu_runtime.catalog import model_config
from lpu_runtime.compiler import (
    Plan,
    StagePlan,
    compile_model,
    min_chips,
    model_units,
    step_unit_cycles,
    unit_shards,
)
from lpu_runtime.config import EngineConfig, ModelConfig, SystemSpec
from lpu_runtime.errors import CompileError, ModelFileError
from lpu_runtime.hardware import GpuServer, HardwareSpec, OwnershipCost, min_cards_for_bytes, ownership_cost
from lpu_runtime.loaders.hf import read_hf_config_file
from lpu_runtime.microbatch import MicroBatcher
from lpu_runtime.perfmodel import FP16_BYTES
from lpu_runtime.sram import RegionKind

# Fraction of HBM for weights and KV; the rest is activations, workspace and the CUDA context.
GPU_MEMORY_USABLE = 0.9
DEFAULT_CHUNK = 512  # tokens per step when none is asked for: the engine's default
DEFAULT_PROMPT = 550  # tokens: published time-to-first-token figures use prompts of about this length
MIN_CHUNK = 64  # tokens: the automatic chunk is halved down to this to make the layers' activations fit


class PlanInputError(ValueError):
    """A planner input (model file, size, count) is unusable; the message names it."""


@dataclass(frozen=True)
class PlanRequest:
    model: ModelConfig
    context: int  # tokens every sequence may reach
    batch: int = 1  # sequences served at once, each with a full context of KV
    prompt: int = DEFAULT_PROMPT  # tokens of prompt for the time to first token
    chips: int | None = None  # None: the fewest the compiler needs
    max_num_batched_tokens: int | None = None  # tokens per step (the prefill chunk); None: 512, halved to fit
    hardware: HardwareSpec = dataclasses.field(default_factory=HardwareSpec)

    def __post_init__(self) -> None:
        for name in ("context", "batch", "prompt"):
            if getattr(self, name) < 1:
                raise PlanInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("chips", "max_num_batched_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PlanInputError(f"{name} must be at least 1, got {value}")
        if self.context > self.model.max_context:
            raise PlanInputError(
                f"context {self.context:,} exceeds {self.model.name}'s {self.model.max_context:,} tokens"
            )
        if self.prompt >= self.context:
            raise PlanInputError(
                f"prompt ({self.prompt} tokens) must be shorter than the context ({self.context})"
            )


@dataclass(frozen=True)
class Speed:
    decode_context: int  # tokens: the position decode is timed at (halfway from prompt to context)
    per_user_tokens_per_s: float
    aggregate_tokens_per_s: float
    ttft_s: float  # the prompt's prefill and the first token, without network or queueing
    micro_batches: int = 1  # decode micro-batches in flight at once (LPU pipeline stages; 1 on a GPU server)


@dataclass(frozen=True)
class LpuAnswer:
    weight_bytes: int  # int8 weights, fp32 scales and norms
    min_chips_weights: int  # weights alone, SRAM packed full
    chips_needed: int  # the compiler's fewest, with KV for batch x context, activations and buffers
    prefill_chunk: int  # tokens per step the layout's activation buffers hold
    plan: Plan  # the compiled layout on the system's chips
    nodes: int
    racks: int
    speed: Speed
    cost: OwnershipCost


@dataclass(frozen=True)
class GpuAnswer:
    servers: int  # comparator servers the weights and KV need
    weight_bytes: float
    kv_bytes: float
    speed: Speed
    cost: OwnershipCost


@dataclass(frozen=True)
class PrefillAnswer:
    """Prefill-decode disaggregation: prompts prefilled on GPU servers, their KV moved to the LPUs, which
    decode. The first token comes from the GPUs; the second waits for the KV to reach the LPUs."""

    server: GpuServer
    servers: int  # prefill servers (each holds the weights)
    ttft_s: float  # the prompt on the GPUs in the engine's chunks, without network or queueing
    kv_bytes: int  # the prompt's fp16 KV cache
    kv_transfer_s: float  # the prompt's KV over the GPU-to-LPU link, before the second token
    cost: OwnershipCost


@dataclass(frozen=True)
class PlanReport:
    request: PlanRequest
    lpu: LpuAnswer
    gpu: GpuAnswer
    prefill: PrefillAnswer | None = None  # when prompts are prefilled on GPUs

    @property
    def system_cost(self) -> OwnershipCost:
        """What the LPU system costs with its prefill GPUs, if any."""
        return self.lpu.cost if self.prefill is None else self.lpu.cost.plus(self.prefill.cost)


# -- the model ---------------------------------------------------------------------------------------------


def resolve_model(name: str) -> ModelConfig:
    """A preset or served name, a HuggingFace config.json (or a directory holding one), or any checkpoint the
    catalog reads (GGUF, llama2.c): only the architecture is read, never the weights."""
    path = Path(name).expanduser()
    config_json = path if path.is_file() and path.name.endswith(".json") else path / "config.json"
    if config_json.is_file():
        return model_from_hf_config(config_json)
    try:
        return model_config(name)
    except KeyError as exc:
        raise PlanInputError(str(exc.args[0]) if exc.args else f"unknown model {name!r}") from None


def model_from_hf_config(path: Path) -> ModelConfig:
    """Llama, Mistral, Qwen2 and Mixtral config.json fields -> ModelConfig (MoE fields included)."""
    name = path.parent.name if path.name == "config.json" else path.stem
    try:
        return read_hf_config_file(path, name or "config.json")
    except ModelFileError as exc:
        raise PlanInputError(str(exc)) from None


def stored_weight_bytes(model: ModelConfig) -> int:
    """Bytes of the whole model as the compiler stores it: one byte per weight (int8 or fp8), fp32 scales and norms."""
    return sum(
        s.nbytes
        for u in model_units(model)
        for s in unit_shards(model, u, 1, 0, 0)
        if s.kind is RegionKind.WEIGHT
    )


# -- timing ------------------------------------------------------------------------------------------------


def stage_step_cycles(plan: Plan, stage: StagePlan, n_tokens: int, n_ctx: int, n_seqs: int) -> int:
    chip, model, place = plan.system.chip, plan.model, plan.placement(stage.index)
    return sum(
        step_unit_cycles(chip, model, u, stage.width, n_tokens, n_ctx, n_seqs, place) for u in stage.units
    )


def step_cycles(plan: Plan, n_tokens: int, n_ctx: int, n_seqs: int) -> tuple[int, int]:
    """(whole step, slowest stage plus its outgoing hop): n_tokens in n_seqs sequences over n_ctx positions.

    The same sum the pipeline charges its clock with: every stage's busiest chip, then the hop to the next.
    """
    total = bottleneck = 0
    for i, stage in enumerate(plan.stages):
        cycles = stage_step_cycles(plan, stage, n_tokens, n_ctx, n_seqs)
        if i + 1 < len(plan.stages):
            cycles += plan.transfer_cycles(i, n_tokens)
        total += cycles
        bottleneck = max(bottleneck, cycles)
    return total, bottleneck


def pipelined_micro_batches(plan: Plan, batch: int, n_ctx: int) -> tuple[int, ...]:
    """The micro-batch sizes the engine cuts `batch` decoding sequences into at n_ctx (microbatch.py)."""
    bounds = MicroBatcher(plan).choose([1] * batch, n_ctx)
    return tuple(b - a for a, b in itertools.pairwise(bounds))


def pipelined_token_cycles(plan: Plan, batch: int, n_ctx: int) -> int:
    """Cycles between a sequence's decode tokens when `batch` sequences decode together, each at n_ctx: a
    round of the micro-batches the engine cuts the batch into (microbatch.py, where the equation is)."""
    sizes = pipelined_micro_batches(plan, batch, n_ctx)
    return MicroBatcher(plan).round_cycles([(n, n) for n in sizes], n_ctx)


def lpu_speed(plan: Plan, batch: int, prompt: int, context: int, chunk: int) -> Speed:
    """Pipelined decode (the engine's micro-batches, up to one per stage in flight) and the prefill's TTFT."""
    clock = plan.system.chip.clock_hz
    ctx = (prompt + context) // 2
    token_s = pipelined_token_cycles(plan, batch, ctx) / clock
    ttft = 0
    for start in range(0, prompt, chunk):
        n = min(chunk, prompt - start)
        ttft += step_cycles(plan, n, start + n, 1)[0]
    micro = len(pipelined_micro_batches(plan, batch, ctx))
    return Speed(ctx, 1 / token_s, batch / token_s, ttft / clock, micro)


def gpu_prefill_cycles(plan: Plan, server: GpuServer, prompt: int, chunk: int) -> int:
    """The prompt prefilled on `server` in the engine's chunks, one after another, in the LPU's cycles: the
    time to first token of disaggregated serving, as the emulator's prefill pool charges it."""
    chip, model = plan.system.chip, plan.model
    return sum(
        perfmodel.gpu_prefill_cycles(
            chip, server, model, min(chunk, prompt - start), min(start + chunk, prompt)
        )
        for start in range(0, prompt, chunk)
    )


def gpu_speed(hardware: HardwareSpec, model: ModelConfig, batch: int, prompt: int, context: int) -> Speed:
    server = hardware.gpu_server
    ctx = (prompt + context) // 2
    token_s = perfmodel.gpu_step_seconds(server, model, batch, ctx, batch)
    ttft = perfmodel.gpu_step_seconds(server, model, prompt, prompt, 1)
    return Speed(ctx, 1 / token_s, batch / token_s, ttft)


# -- the answer --------------------------------------------------------------------------------------------


def _needed(request: PlanRequest) -> tuple[int, EngineConfig]:
    """The fewest chips and the engine (prefill chunk halved from the default until the layers' activations
    fit, unless one was asked for); CompileError if no chunk makes a unit fit."""
    hw, model = request.hardware, dataclasses.replace(request.model, max_context=request.context)
    kv_tokens = request.batch * request.context
    probe = SystemSpec(1, hw.chip, hw.lpu.chips_per_node)
    chunk = request.max_num_batched_tokens or DEFAULT_CHUNK
    while True:
        engine = EngineConfig(
            max_num_seqs=request.batch, max_num_batched_tokens=chunk, max_kv_tokens=kv_tokens
        )
        try:
            return min_chips(model, probe, engine, kv_tokens), engine
        except CompileError:
            # A unit too large for any split at this chunk may fit with smaller activation buffers.
            if request.max_num_batched_tokens is not None or chunk // 2 < MIN_CHUNK:
                raise
            chunk //= 2


def fits(request: PlanRequest) -> bool:
    try:
        needed, _ = _needed(request)
    except CompileError:
        return False
    return request.chips is None or needed <= request.chips


def shorter_context_that_fits(request: PlanRequest) -> int | None:
    """The longest power-of-two context shorter than the request's that fits where it does not (on its
    chips, or on any number of them); None if none does: then a shorter context is no way out."""
    context = 1 << (request.context - 1).bit_length() - 1  # the largest power of two below the context
    while context > request.prompt:
        if fits(dataclasses.replace(request, context=context)):
            return context
        context //= 2
    return None


def plan_lpu(request: PlanRequest) -> LpuAnswer:
    hw, model = request.hardware, dataclasses.replace(request.model, max_context=request.context)
    kv_tokens = request.batch * request.context
    needed, engine = _needed(request)
    chunk = engine.max_num_batched_tokens
    chips = request.chips or needed
    if chips < needed:
        raise CompileError(
            f"{model.name} with {request.batch} x {request.context:,} tokens of KV needs {needed} x "
            f"{hw.chip.name}; --chips {chips} is too few"
        )
    plan = compile_model(model, SystemSpec(chips, hw.chip, hw.lpu.chips_per_node), engine, kv_tokens)
    weights = stored_weight_bytes(model)
    speed = lpu_speed(plan, request.batch, request.prompt, request.context, chunk)
    nodes = -(-chips // hw.lpu.chips_per_node)
    lpu = hw.lpu
    cost = ownership_cost(
        chips,
        lpu.card_price_usd,
        lpu.card_avg_power_w,
        lpu.card_tdp_w,
        hw.power_price_usd_per_kw_month,
        extra_price_usd=nodes * lpu.host_price_usd,
        extra_avg_power_w=nodes * lpu.host_avg_power_w,
        extra_tdp_w=nodes * lpu.host_tdp_w,
    )
    return LpuAnswer(
        weight_bytes=weights,
        min_chips_weights=min_cards_for_bytes(weights, hw.chip.sram_bytes),
        chips_needed=needed,
        prefill_chunk=chunk,
        plan=plan,
        nodes=nodes,
        racks=-(-nodes // lpu.nodes_per_rack),
        speed=speed,
        cost=cost,
    )


def plan_gpu(request: PlanRequest) -> GpuAnswer:
    hw, model = request.hardware, request.model
    server = hw.gpu_server
    weights = model.n_params * server.bytes_per_param
    kv = request.batch * request.context * 2 * model.kv_dim * FP16_BYTES * model.n_layers
    capacity = server.n_gpus * server.gpu.hbm_bytes * GPU_MEMORY_USABLE
    servers = max(1, math.ceil((weights + kv) / capacity))
    cost = ownership_cost(
        servers, server.price_usd, server.avg_power_w, server.tdp_w, hw.power_price_usd_per_kw_month
    )
    speed = gpu_speed(hw, model, request.batch, request.prompt, request.context)
    return GpuAnswer(servers, weights, kv, speed, cost)


def plan_prefill(request: PlanRequest, lpu: LpuAnswer, server: GpuServer) -> PrefillAnswer:
    hw, plan = request.hardware, lpu.plan
    capacity = server.n_gpus * server.gpu.hbm_bytes * GPU_MEMORY_USABLE
    servers = max(1, math.ceil(request.model.n_params * server.bytes_per_param / capacity))
    clock = plan.system.chip.clock_hz
    kv_bytes = request.prompt * perfmodel.kv_bytes_per_token(request.model)
    kv_cycles = perfmodel.kv_transfer_cycles(plan.system.chip, hw.kv_link, request.model, request.prompt)
    cost = ownership_cost(
        servers, server.price_usd, server.avg_power_w, server.tdp_w, hw.power_price_usd_per_kw_month
    )
    ttft = gpu_prefill_cycles(plan, server, request.prompt, lpu.prefill_chunk) / clock
    return PrefillAnswer(server, servers, ttft, kv_bytes, kv_cycles / clock, cost)


def plan_system(request: PlanRequest) -> PlanReport:
    """The planner's whole answer; CompileError when the model cannot be placed as asked."""
    lpu, server = plan_lpu(request), request.hardware.prefill_server
    if server is None:
        return PlanReport(request, lpu, plan_gpu(request))
    prefill = plan_prefill(request, lpu, server)
    # The first token comes from the prefill GPUs, so the system's time to first token is theirs.
    lpu = dataclasses.replace(lpu, speed=dataclasses.replace(lpu.speed, ttft_s=prefill.ttft_s))
    return PlanReport(request, lpu, plan_gpu(request), prefill)


# -- output ------------------------------------------------------------------------------------------------


def layout_summary(plan: Plan) -> list[tuple[str, int, int, int]]:
    """Runs of identical stages: (what they hold, stages, width, layers per stage)."""
    runs: list[tuple[str, int, int, int]] = []
    for stage in plan.stages:
        kinds = {u.kind.value for u in stage.units}
        what = "+".join(sorted(kinds))
        key = (what, stage.width, len(stage.layers))
        if runs and (runs[-1][0], runs[-1][2], runs[-1][3]) == key:
            runs[-1] = (what, runs[-1][1] + 1, stage.width, len(stage.layers))
        else:
            runs.append((what, 1, stage.width, len(stage.layers)))
    return runs


def to_dict(report: PlanReport) -> dict[str, Any]:
    r, lpu, gpu = report.request, report.lpu, report.gpu
    plan = lpu.plan
    hw = r.hardware

    def speed(s: Speed) -> dict[str, float]:
        return {
            "decode_context_tokens": s.decode_context,
            "per_user_tokens_per_s": round(s.per_user_tokens_per_s, 2),
            "aggregate_tokens_per_s": round(s.aggregate_tokens_per_s, 2),
            "ttft_s": round(s.ttft_s, 6),
            "micro_batches": s.micro_batches,
        }

    def cost(c: OwnershipCost) -> dict[str, float]:
        return {
            "purchase_usd": round(c.purchase_usd, 2),
            "avg_power_kw": round(c.avg_power_kw, 3),
            "tdp_kw": round(c.tdp_kw, 3),
            "power_usd_per_year": round(c.power_usd_per_year, 2),
            "tco_1y_usd": round(c.total_usd(1), 2),
            "tco_3y_usd": round(c.total_usd(3), 2),
        }

    used = sram_fill(plan)
    prefill = report.prefill
    return {
        "model": {
            "name": r.model.name,
            "params": r.model.n_params,
            "layers": r.model.n_layers,
            "experts": r.model.n_experts,
            "experts_per_token": r.model.n_experts_per_token,
        },
        "request": {
            "context": r.context,
            "batch": r.batch,
            "prompt": r.prompt,
            "chips": r.chips,
            "max_num_batched_tokens": r.max_num_batched_tokens,
        },
        "lpu": {
            "chip": hw.chip.name,
            "weights": hw.chip.weights,
            "weight_bytes": lpu.weight_bytes,
            "min_chips_weights_only": lpu.min_chips_weights,
            "chips_needed": lpu.chips_needed,
            "prefill_chunk_tokens": lpu.prefill_chunk,
            "chips": plan.system.n_chips,
            "chips_used": plan.n_chips_used,
            "chips_idle": plan.idle_chips,
            "nodes": lpu.nodes,
            "racks": lpu.racks,
            "chips_per_node": hw.lpu.chips_per_node,
            "nodes_per_rack": hw.lpu.nodes_per_rack,
            "kv_tokens_per_layer": plan.kv_tokens,
            "kv_capacity_tokens_per_layer": plan.kv_capacity_tokens,
            "stages": len(plan.stages),
            "layout": [
                {"holds": what, "stages": n, "width": width, "layers_per_stage": layers}
                for what, n, width, layers in layout_summary(plan)
            ],
            "sram_fill": {k: round(v, 4) for k, v in used.items()},
            "speed": speed(lpu.speed),
            "cost": cost(lpu.cost),
        },
        "gpu": {
            "server": f"{hw.gpu_server.n_gpus} x {hw.gpu_server.gpu.name}",
            "precision": hw.gpu_server.precision,
            "servers": gpu.servers,
            "weight_bytes": gpu.weight_bytes,
            "kv_bytes": gpu.kv_bytes,
            "speed": speed(gpu.speed),
            "cost": cost(gpu.cost),
        },
        "prefill": None
        if prefill is None
        else {
            "server": prefill.server.name,
            "precision": prefill.server.precision,
            "servers": prefill.servers,
            "ttft_s": round(prefill.ttft_s, 6),
            "kv_bytes": prefill.kv_bytes,
            "kv_transfer_s": round(prefill.kv_transfer_s, 6),
            "cost": cost(prefill.cost),
        },
        "system_cost": cost(report.system_cost),
        "lpu_over_gpu": ratios(report),
        "power_price_usd_per_kw_month": hw.power_price_usd_per_kw_month,
    }


def sram_fill(plan: Plan) -> dict[str, float]:
    """The chips' SRAM use as a fraction of their capacity: min, mean and max over the chips in use."""
    used = [c.used_bytes / c.capacity_bytes for c in plan.chips]
    return {"min": min(used), "mean": sum(used) / len(used), "max": max(used)}


def ratios(report: PlanReport) -> dict[str, float]:
    """The LPU system (with its prefill GPUs, if any) over the GPU comparator."""
    lpu, gpu, cost = report.lpu, report.gpu, report.system_cost
    return {
        "per_user_tokens_per_s": round(lpu.speed.per_user_tokens_per_s / gpu.speed.per_user_tokens_per_s, 3),
        "aggregate_tokens_per_s": round(
            lpu.speed.aggregate_tokens_per_s / gpu.speed.aggregate_tokens_per_s, 3
        ),
        "purchase_usd": round(cost.purchase_usd / gpu.cost.purchase_usd, 3),
        "avg_power_kw": round(cost.avg_power_kw / gpu.cost.avg_power_kw, 3),
        "tco_3y_usd": round(cost.total_usd(3) / gpu.cost.total_usd(3), 3),
    }


RATIO_LABELS = {
    "per_user_tokens_per_s": "speed per user",
    "aggregate_tokens_per_s": "aggregate speed",
    "purchase_usd": "purchase",
    "avg_power_kw": "average power",
    "tco_3y_usd": "3-year cost",
}


def _usd(x: float) -> str:
    if x >= 1e6:
        return f"${x / 1e6:,.2f}M"
    if x >= 1e3:
        return f"${x / 1e3:,.1f}k"
    return f"${x:,.0f}"


def _gb(x: float) -> str:
    return f"{x / 1e9:,.2f} GB" if x >= 1e8 else f"{x / 1e6:,.2f} MB"


def _params(n: int) -> str:
    return f"{n / 1e9:,.2f}B" if n >= 1e8 else f"{n / 1e6:,.2f}M"


def render_table(report: PlanReport) -> str:
    r, lpu, gpu = report.request, report.lpu, report.gpu
    plan, hw = lpu.plan, r.hardware
    server = hw.gpu_server
    m = r.model
    moe = f", {m.n_experts} experts / {m.n_experts_per_token} per token" if m.is_moe else ""
    lines = [
        f"lpu plan: {m.name} ({_params(m.n_params)} params, {m.n_layers} layers{moe}); context {r.context:,}, "
        f"batch {r.batch}, prompt {r.prompt}",
        "",
        f"{hw.chip.name} system",
        f"  {hw.chip.weights + ' weights':<30}{_gb(lpu.weight_bytes)}",
        f"  min chips, weights only       {lpu.min_chips_weights:,}  ({hw.chip.sram_bytes / 1e6:,.1f} MB SRAM each)",
        f"  chips needed (KV + buffers)   {lpu.chips_needed:,}  (KV for {r.batch} x {r.context:,} tokens)",
        f"  system                        {plan.system.n_chips:,} chips = {lpu.nodes} nodes of "
        f"{hw.lpu.chips_per_node} in {lpu.racks} rack(s) of {hw.lpu.nodes_per_rack}; "
        f"{plan.n_chips_used:,} used, {plan.idle_chips:,} idle",
        f"  pipeline                      {len(plan.stages)} stages; KV {plan.kv_tokens:,} tokens per layer "
        f"reserved, {plan.kv_capacity_tokens:,} fit",
    ]
    for what, n, width, layers in layout_summary(plan):
        per = f", {layers} layer(s) per stage" if layers else ""
        lines.append(f"    {n:>4} x stage of {width:>2} chip(s) holding {what}{per}")
    s, prefill = lpu.speed, report.prefill
    if prefill is None:
        first = (
            f"  time to first token           {s.ttft_s * 1e3:,.1f} ms for {r.prompt} prompt tokens in chunks of "
            f"{lpu.prefill_chunk} (compute and links, no network)"
        )
    else:
        first = (
            f"  time to first token           {s.ttft_s * 1e3:,.1f} ms for {r.prompt} prompt tokens in chunks of "
            f"{lpu.prefill_chunk}, prefilled on the GPUs below (no network)"
        )
    lines += [
        f"  decode per user               {s.per_user_tokens_per_s:,.1f} tokens/s (batch {r.batch}, at "
        f"{s.decode_context:,} tokens of context)",
        first,
        f"  aggregate                     {s.aggregate_tokens_per_s:,.1f} tokens/s "
        f"({r.batch} user(s) in {s.micro_batches} micro-batch(es) in flight)",
        f"  power                         {lpu.cost.avg_power_kw:,.1f} kW average, {lpu.cost.tdp_kw:,.1f} kW TDP "
        f"(cards and hosts)",
        f"  purchase                      {_usd(lpu.cost.purchase_usd)} ({plan.system.n_chips:,} x "
        f"{_usd(hw.lpu.card_price_usd)} cards + {lpu.nodes} x {_usd(hw.lpu.host_price_usd)} hosts)",
        f"  cost of ownership             1 year {_usd(lpu.cost.total_usd(1))}, 3 years {_usd(lpu.cost.total_usd(3))} "
        f"(power {_usd(lpu.cost.power_usd_per_year)}/year at ${hw.power_price_usd_per_kw_month:,.0f}/kW-month)",
        "",
        *([] if prefill is None else _prefill_lines(report, prefill)),
        f"{server.n_gpus} x {server.gpu.name} server ({server.precision.upper()}, TP{server.n_gpus})",
        f"  weights + KV                  {_gb(gpu.weight_bytes)} + {_gb(gpu.kv_bytes)} -> {gpu.servers} server(s)",
        f"  decode per user               {gpu.speed.per_user_tokens_per_s:,.1f} tokens/s (batch {r.batch})",
        f"  time to first token           {gpu.speed.ttft_s * 1e3:,.1f} ms",
        f"  aggregate                     {gpu.speed.aggregate_tokens_per_s:,.1f} tokens/s",
        f"  power                         {gpu.cost.avg_power_kw:,.1f} kW average, {gpu.cost.tdp_kw:,.1f} kW TDP",
        f"  purchase                      {_usd(gpu.cost.purchase_usd)}",
        f"  cost of ownership             1 year {_usd(gpu.cost.total_usd(1))}, 3 years {_usd(gpu.cost.total_usd(3))} "
        f"(power {_usd(gpu.cost.power_usd_per_year)}/year)",
        "",
        ("LPU + prefill GPUs / GPU: " if prefill else "LPU / GPU: ")
        + ", ".join(f"{RATIO_LABELS[k]} {v:,.2f}x" for k, v in ratios(report).items()),
    ]
    return "\n".join(lines)


def _prefill_lines(report: PlanReport, prefill: PrefillAnswer) -> list[str]:
    server, total = prefill.server, report.system_cost
    return [
        f"Prefill on {server.name} ({server.precision.upper()}, TP{server.n_gpus}), decode on the LPUs",
        f"  prefill servers               {prefill.servers} (each holds the weights)",
        f"  time to first token           {prefill.ttft_s * 1e3:,.1f} ms on the GPUs",
        f"  KV to the LPUs                {_gb(prefill.kv_bytes)} in {prefill.kv_transfer_s * 1e3:,.2f} ms, before the "
        f"second token (link {report.request.hardware.kv_link.bandwidth_bytes_per_s / 1e9:,.0f} GB/s)",
        f"  power                         {prefill.cost.avg_power_kw:,.1f} kW average, {prefill.cost.tdp_kw:,.1f} kW TDP",
        f"  purchase                      {_usd(prefill.cost.purchase_usd)}",
        f"  LPUs + prefill GPUs           {_usd(total.purchase_usd)} to buy, {total.avg_power_kw:,.1f} kW average, "
        f"3 years {_usd(total.total_usd(3))}",
        "",
    ]
