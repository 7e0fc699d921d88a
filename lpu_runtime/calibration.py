"""The performance model's free parameters, fitted to published speeds (docs/published-speeds.yaml).

Four parameters are not measurements of the silicon: the LPU's per-op latency `L_op` and per-hop latency
`t_hop` (`ChipSpec`), the GPU's HBM efficiency and kernel latency (`GpuSpec`). `fit` chooses them by least
squares on log speed over the rows marked `role: fit` (at most half of them); `predictions` then times every
row with the defaults at the planner's default settings and states each error. The defaults in config.py
and hardware.py are what `fit` returns (tests/unit/test_calibration.py re-runs it).

Speeds are per user at batch 1, where a step is one chain of dependent ops and transfers: on a compiled
layout every op costs `L_op` plus a part that does not depend on it, so a step's cycles are
`N x L_op + C(t_hop)` with N the ops on its path. The compiler lays models out by the same costs, so the fit
compiles the layouts afresh at each t_hop of a grid, solves L_op on each, refines t_hop around the best on its
layouts, and `predictions` re-checks every row with the result, compiling everything afresh.
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
EFFICIENCY_RANGE = (0.01, 1.0)  # fraction of HBM bandwidth
KERNEL_LATENCY_RANGE = (0.0, 20e-6)  # s
HOP_GRID = (0.0, 1_000.0, 2_000.0, 3_000.0, 4_000.0, 6_000.0)  # ns: t_hop values laid out afresh


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
    hop_latency_ns: float  # t_hop, ns
    hbm_efficiency: float
    kernel_latency_s: float


def defaults() -> FittedParameters:
    """The values config.py and hardware.py carry."""
    chip, gpu = ChipSpec(), GpuSpec()
    return FittedParameters(
        chip.op_latency_cycles, chip.hop_latency_ns, gpu.hbm_efficiency, gpu.kernel_latency_s
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

    @property
    def range_error(self) -> float:
        """Relative distance from the published range (0 inside it): what the sources disagree on is no error."""
        low, high = self.row.low, self.row.high
        return min(0.0, self.tokens_per_s / low - 1) + max(0.0, self.tokens_per_s / high - 1)


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
    """A batch-1 decode token on one compiled layout: cycles = ops x L_op + rest(t_hop)."""

    row: PublishedSpeed
    layout: Plan
    ctx: int
    ops: int

    def rest(self, hop_ns: float) -> int:
        return self.cycles(0, hop_ns)

    def cycles(self, op_latency: int, hop_ns: float) -> int:
        chip = dataclasses.replace(
            self.layout.system.chip, op_latency_cycles=op_latency, hop_latency_ns=hop_ns
        )
        plan = dataclasses.replace(self.layout, system=dataclasses.replace(self.layout.system, chip=chip))
        return pipelined_token_cycles(plan, 1, self.ctx)


def _chain(row: PublishedSpeed, hop_ns: float | None = None) -> _Chain:
    """The row's layout as `lpu plan` compiles it (with t_hop = hop_ns, default the chip's own)."""
    hw = lpu_hardware(row)
    if hop_ns is not None:
        hw = dataclasses.replace(hw, chip=dataclasses.replace(hw.chip, hop_latency_ns=hop_ns))
    request = row.request(hw)
    layout = _planned(request).plan
    probe = _Chain(row, layout, (request.prompt + request.context) // 2, 0)
    hop = layout.system.chip.hop_latency_ns
    return dataclasses.replace(probe, ops=probe.cycles(1, hop) - probe.cycles(0, hop))


def fit_lpu(rows: Sequence[PublishedSpeed]) -> tuple[int, float]:
    """(L_op cycles, t_hop ns) minimising the squared log errors of the LPU rows.

    The compiler lays a model out by the same costs (a gather across nodes costs more hops than one inside
    a node), so the layouts depend on t_hop: each value of `HOP_GRID` compiles them afresh; the best is
    then refined on its layouts."""

    def loss(chains: Sequence[_Chain], latency: float, rests: Sequence[int]) -> float:
        return sum(
            _log_error(c.layout.system.chip.clock_hz / (c.ops * latency + rest), c.row)
            for c, rest in zip(chains, rests, strict=True)
        )

    def best_latency(chains: Sequence[_Chain], hop: float) -> tuple[int, float]:
        """The whole-cycle L_op best for t_hop on these layouts, and its loss."""
        rests = [c.rest(hop) for c in chains]
        latency = round(_golden(lambda t: loss(chains, t, rests), 1.0, 20_000.0, log=True))
        return latency, loss(chains, latency, rests)

    layouts = {hop: [_chain(r, hop) for r in rows] for hop in HOP_GRID}
    at = min(HOP_GRID, key=lambda hop: best_latency(layouts[hop], hop)[1])
    i = HOP_GRID.index(at)
    lo, hi = HOP_GRID[max(i - 1, 0)], HOP_GRID[min(i + 1, len(HOP_GRID) - 1)]
    chains = layouts[at]
    hop = _golden(lambda h: best_latency(chains, h)[1], lo, hi, log=False, steps=40)
    return best_latency(chains, hop)[0], hop


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
    latency, hop = fit_lpu([r for r in rows if r.side == "lpu" and r.role == "fit"])
    hbm, kernel = fit_gpu([r for r in rows if r.side == "gpu" and r.role == "fit"])
    return FittedParameters(latency, hop, hbm, kernel)


TABLE_BEGIN = "<!-- fit_perfmodel.py: predictions begin -->"
TABLE_END = "<!-- fit_perfmodel.py: predictions end -->"


def render_predictions(preds: Sequence[Prediction]) -> str:
    """The markdown table docs/perfmodel.md carries between TABLE_BEGIN and TABLE_END."""
    lines = [
        "| row | system | published tokens/s (range) | predicted | error | outside the range | role |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for p in preds:
        r = p.row
        unit = "chips" if r.side == "lpu" else "GPUs"
        system = f"{r.model}, {r.units:,} {r.hardware} {unit} ({r.precision}), context {r.context:,}"
        spread = f"{r.low:g}-{r.high:g}" if r.low != r.high else f"{r.low:g}"
        lines.append(
            f"| {r.id} | {system} | {r.published:g} ({spread}) | {p.tokens_per_s:,.1f} | {p.error:+.1%} "
            f"| {f'{p.range_error:+.1%}' if p.range_error else 'inside'} | {r.role} |"
        )
    return "\n".join(lines)


def docs_table(text: str) -> str:
    """The predictions table as a markdown document holds it (between the markers)."""
    start, end = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
    return text[start:end].strip()
