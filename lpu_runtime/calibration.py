"""The performance model's free parameters, fitted to published speeds (docs/published-speeds.yaml).

Four parameters are not measurements of the silicon: the LPU's per-op latency `L_op` and weight-stream
efficiency `e` (`ChipSpec`), the GPU's HBM efficiency and kernel latency (`GpuSpec`). `fit` chooses them by
least squares on log speed over the rows marked `role: fit` (at most half of them); `predictions` then
times every row with the defaults at the planner's default settings and states each error. The defaults in
config.py and hardware.py are what `fit` returns (tests/unit/test_calibration.py re-runs it).

Speeds are per user at batch 1, where a step is one chain of dependent ops: on a compiled layout every op
costs `L_op` plus a part that depends on `e` only, so a step's cycles are `N x L_op + C(e)` with N the ops
on its path. The fit compiles each layout once (at the defaults), finds N and C(e) from the planner's own
functions, and searches e, solving L_op in closed form for each; the layouts are then re-checked with the
result by `predictions`, which compiles everything afresh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from lpu_runtime.compiler import Plan
from lpu_runtime.config import ChipSpec, model_preset
from lpu_runtime.hardware import GPU_PRESETS, GpuServer, GpuSpec, HardwareSpec, chip_hardware
from lpu_runtime.plan import (
    DEFAULT_PROMPT,
    LpuAnswer,
    PlanRequest,
    gpu_speed,
    pipelined_token_cycles,
    plan_lpu,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"
PUBLISHED = DOCS / "published-speeds.yaml"
PERFMODEL_DOC = DOCS / "perfmodel.md"  # holds the predictions table between TABLE_BEGIN and TABLE_END
TOLERANCE = 0.01  # relative: how close the re-run fit must come to the defaults (its search's resolution)
# Search ranges of the fitted parameters (log-spaced grids, refined around the best).
EFFICIENCY_RANGE = (0.01, 1.0)  # fraction of SRAM or HBM bandwidth
KERNEL_LATENCY_RANGE = (0.0, 20e-6)  # s


@dataclass(frozen=True)
class PublishedSpeed:
    """One published decode speed and the deployment it was measured on (see docs/published-speeds.yaml)."""

    id: str
    side: str  # "lpu" or "gpu"
    model: str  # a preset name
    hardware: str  # a chip preset (lpu) or a GPU preset (gpu)
    units: int  # chips, or GPUs in one tensor-parallel server
    context: int  # tokens
    precision: str  # lpu: int8 | fp8 weights; gpu: fp16 | fp8
    published: float  # tokens/s per user, batch 1
    low: float
    high: float
    role: str  # "fit" or "predict"
    source: str
    url: str
    note: str = ""

    def request(self, hardware: HardwareSpec) -> PlanRequest:
        """The planner's question for this row, at its default prompt and prefill chunk."""
        return PlanRequest(
            model_preset(self.model), context=self.context, chips=self.units, hardware=hardware
        )


def load_published(path: Path = PUBLISHED) -> list[PublishedSpeed]:
    rows = yaml.safe_load(path.read_text())
    out = []
    for row in rows:
        low, high = row.pop("range")
        out.append(PublishedSpeed(low=float(low), high=float(high), **row))
    for p in out:
        if p.side not in ("lpu", "gpu") or p.role not in ("fit", "predict"):
            raise ValueError(f"{path}: {p.id}: side must be lpu|gpu and role fit|predict")
    return out


@dataclass(frozen=True)
class FittedParameters:
    op_latency_cycles: int  # L_op, cycles of the chip's clock
    weight_stream_efficiency: float  # e
    hbm_efficiency: float
    kernel_latency_s: float


def defaults() -> FittedParameters:
    """The values config.py and hardware.py carry."""
    chip, gpu = ChipSpec(), GpuSpec()
    return FittedParameters(
        chip.op_latency_cycles, chip.weight_stream_efficiency, gpu.hbm_efficiency, gpu.kernel_latency_s
    )


def reproduces(fitted: FittedParameters, defaults: FittedParameters, tolerance: float = TOLERANCE) -> bool:
    """Whether every fitted parameter is within `tolerance` (relative) of the default."""
    return all(
        math.isclose(getattr(fitted, name), getattr(defaults, name), rel_tol=tolerance)
        for name in FittedParameters.__dataclass_fields__
    )


def lpu_hardware(row: PublishedSpeed, chip: ChipSpec | None = None) -> HardwareSpec:
    hw = chip_hardware(row.hardware)
    return dataclasses.replace(hw, chip=dataclasses.replace(chip or hw.chip, weights=row.precision))


def gpu_hardware(row: PublishedSpeed, gpu: GpuSpec | None = None) -> HardwareSpec:
    server = GpuServer(gpu=gpu or GPU_PRESETS[row.hardware], n_gpus=row.units, precision=row.precision)
    return HardwareSpec(gpu_server=server)


@lru_cache(maxsize=64)
def _planned(request: PlanRequest) -> LpuAnswer:
    """`lpu plan`'s answer (the fit and the predictions ask for the same layouts)."""
    return plan_lpu(request)


def predicted(row: PublishedSpeed) -> float:
    """The row's speed as `lpu plan` gives it with the current defaults (compiled afresh)."""
    if row.side == "lpu":
        return _planned(row.request(lpu_hardware(row))).speed.per_user_tokens_per_s
    return gpu_speed(
        gpu_hardware(row), model_preset(row.model), 1, DEFAULT_PROMPT, row.context
    ).per_user_tokens_per_s


@dataclass(frozen=True)
class Prediction:
    row: PublishedSpeed
    tokens_per_s: float

    @property
    def error(self) -> float:
        """Relative error against the published figure."""
        return self.tokens_per_s / self.row.published - 1


def predictions(rows: Sequence[PublishedSpeed]) -> list[Prediction]:
    return [Prediction(row, predicted(row)) for row in rows]


def _log_error(pred: float, row: PublishedSpeed) -> float:
    return math.log(pred / row.published) ** 2


def _golden(f: Callable[[float], float], lo: float, hi: float, log: bool, steps: int = 60) -> float:
    """Minimum of f on [lo, hi] after a coarse scan (f need not be unimodal over the whole range)."""
    to = (lambda v: math.exp(v)) if log else (lambda v: v)
    a, b = (math.log(lo), math.log(hi)) if log else (lo, hi)
    grid = [a + (b - a) * i / 40 for i in range(41)]
    best = min(range(len(grid)), key=lambda i: f(to(grid[i])))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(steps):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if f(to(c)) < f(to(d)):
            b = d
        else:
            a = c
    return to((a + b) / 2)


@dataclass(frozen=True)
class _Chain:
    """A batch-1 decode token on one compiled layout: cycles = ops x L_op + rest(e)."""

    row: PublishedSpeed
    layout: Plan
    ctx: int
    ops: int

    def rest(self, efficiency: float) -> int:
        return self.cycles(0, efficiency)

    def cycles(self, op_latency: int, efficiency: float) -> int:
        chip = dataclasses.replace(
            self.layout.system.chip, op_latency_cycles=op_latency, weight_stream_efficiency=efficiency
        )
        plan = dataclasses.replace(self.layout, system=dataclasses.replace(self.layout.system, chip=chip))
        return pipelined_token_cycles(plan, 1, self.ctx)


def _chain(row: PublishedSpeed) -> _Chain:
    request = row.request(lpu_hardware(row))
    layout = _planned(request).plan
    probe = _Chain(row, layout, (request.prompt + request.context) // 2, 0)
    e = layout.system.chip.weight_stream_efficiency
    return dataclasses.replace(probe, ops=probe.cycles(1, e) - probe.cycles(0, e))


def fit_lpu(rows: Sequence[PublishedSpeed]) -> tuple[int, float]:
    """(L_op, e) minimising the squared log errors of the LPU rows."""
    chains = [_chain(r) for r in rows]

    def loss(latency: float, rests: Sequence[int]) -> float:
        return sum(
            _log_error(c.layout.system.chip.clock_hz / (c.ops * latency + rest), c.row)
            for c, rest in zip(chains, rests, strict=True)
        )

    def best_latency(e: float) -> tuple[int, float]:
        """The whole-cycle L_op best for e, and its loss."""
        rests = [c.rest(e) for c in chains]
        latency = round(_golden(lambda t: loss(t, rests), 1.0, 20_000.0, log=True))
        return latency, loss(latency, rests)

    e = _golden(lambda e: best_latency(e)[1], *EFFICIENCY_RANGE, log=True, steps=30)
    return best_latency(e)[0], e


def fit_gpu(rows: Sequence[PublishedSpeed]) -> tuple[float, float]:
    """(HBM efficiency, kernel latency s) minimising the squared log errors of the GPU rows."""

    def loss(efficiency: float, latency: float) -> float:
        total = 0.0
        for row in rows:
            gpu = dataclasses.replace(
                GPU_PRESETS[row.hardware], hbm_efficiency=efficiency, kernel_latency_s=latency
            )
            speed = gpu_speed(gpu_hardware(row, gpu), model_preset(row.model), 1, DEFAULT_PROMPT, row.context)
            total += _log_error(speed.per_user_tokens_per_s, row)
        return total

    def best_latency(e: float) -> float:
        return _golden(lambda t: loss(e, t), *KERNEL_LATENCY_RANGE, log=False)

    e = _golden(lambda e: loss(e, best_latency(e)), *EFFICIENCY_RANGE, log=True, steps=30)
    return e, best_latency(e)


def fit(rows: Sequence[PublishedSpeed]) -> FittedParameters:
    """Fits on the rows marked `fit`; refuses a split that fits on more than half the rows of a side."""
    for side in ("lpu", "gpu"):
        mine = [r for r in rows if r.side == side]
        if 2 * sum(r.role == "fit" for r in mine) > len(mine):
            raise ValueError(f"{side}: fit on at most half of the {len(mine)} published rows")
    latency, efficiency = fit_lpu([r for r in rows if r.side == "lpu" and r.role == "fit"])
    hbm, kernel = fit_gpu([r for r in rows if r.side == "gpu" and r.role == "fit"])
    return FittedParameters(latency, efficiency, hbm, kernel)


TABLE_BEGIN = "<!-- fit_perfmodel.py: predictions begin -->"
TABLE_END = "<!-- fit_perfmodel.py: predictions end -->"


def render_predictions(preds: Sequence[Prediction]) -> str:
    """The markdown table docs/perfmodel.md carries between TABLE_BEGIN and TABLE_END."""
    lines = [
        "| row | system | published tokens/s (range) | predicted | error | role |",
        "|---|---|---|---:|---:|---|",
    ]
    for p in preds:
        r = p.row
        unit = "chips" if r.side == "lpu" else "GPUs"
        system = f"{r.model}, {r.units:,} {r.hardware} {unit} ({r.precision}), context {r.context:,}"
        spread = f"{r.low:g}-{r.high:g}" if r.low != r.high else f"{r.low:g}"
        lines.append(
            f"| {r.id} | {system} | {r.published:g} ({spread}) | {p.tokens_per_s:,.1f} | {p.error:+.1%} | {r.role} |"
        )
    return "\n".join(lines)


def docs_table(text: str) -> str:
    """The predictions table as a markdown document holds it (between the markers)."""
    start, end = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
    return text[start:end].strip()
