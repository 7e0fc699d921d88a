"""Hardware presets for planning: LPU chips and their deployment, the GPU comparator, prices and power.

Every default carries its source in docs/hardware.md, and every figure no one has published is marked an
estimate there. A `HardwareSpec` is built from presets, then a YAML file, then single overrides (the CLI
flags), each later layer replacing only the fields it names. A chip generation is an entry in `CHIP_PRESETS`
and one in `LPU_DEPLOYMENT_PRESETS` for its card, node and rack: GroqChip1 (2020) and the Groq 3 LPU (LP30,
2026) in its LPX rack.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lpu_runtime.config import ChipSpec

# ChipSpec's defaults are GroqChip1, fitted parameters included (docs/perfmodel.md).
GROQCHIP1 = ChipSpec()

# The Groq 3 LPU (LP30, Samsung 4 nm), announced by NVIDIA at GTC in March 2026: published per-chip SRAM, SRAM
# bandwidth, FP8 peak (the LPX rack's 315 PFLOPS over its 256 chips) and chip-to-chip links (96 at 112 Gb/s,
# 2.5 TB/s both ways). Its clock, int8 and fp16 peaks and hop latency are not published: estimates, each
# overridable (docs/hardware.md). With no published speed measured on it, the op latency (in seconds) and
# the hop latency are GroqChip1's fitted values.
GROQ3 = ChipSpec(
    name="Groq3-LP30",
    sram_bytes=500_000_000,  # bytes: "500 MB" per chip (128 GB per 256-chip rack)
    clock_hz=GROQCHIP1.clock_hz,  # estimate: unpublished; GroqChip1's, so the fitted cycles carry over
    int8_ops_per_s=315e15 / 256,  # estimate: the FP8 peak (no int8 figure published)
    fp16_flops_per_s=315e15 / 256 / 2,  # estimate: half the FP8 peak, as on GPUs
    fp8_flops_per_s=315e15 / 256,  # flop/s: 315 PFLOPS FP8 per 256-chip rack
    sram_bandwidth_bytes_per_s=150e12,  # bytes/s
    n_links=96,
    link_bandwidth_bytes_per_s=2.5e12 / 2 / 96,  # bytes/s per link per direction: 2.5 TB/s bidirectional
    hop_latency_ns=GROQCHIP1.hop_latency_ns,  # estimate: GroqChip1's
    op_latency_cycles=GROQCHIP1.op_latency_cycles,
    weight_stream_efficiency=GROQCHIP1.weight_stream_efficiency,
    weights="fp8",
)

CHIP_PRESETS: dict[str, ChipSpec] = {"groqchip1": GROQCHIP1, "groq3": GROQ3}

MONTHS_PER_YEAR = 12


def _check_positive(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be positive, got {value}")


def _check_non_negative(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value >= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must not be negative, got {value}")


@dataclass(frozen=True)
class LpuDeployment:
    """How chips are packaged and what they cost: cards in nodes, nodes in racks, each node with a host."""

    card_price_usd: float = 20_000.0  # one card (one chip)
    card_avg_power_w: float = 185.0  # W, typical draw while serving
    card_tdp_w: float = 275.0  # W, maximum
    chips_per_node: int = 8
    nodes_per_rack: int = 9
    host_price_usd: float = 30_000.0  # per node: chassis, CPUs, memory, NICs (an estimate)
    host_avg_power_w: float = 600.0  # W per node host (an estimate)
    host_tdp_w: float = 1_100.0  # W per node host (an estimate)

    def __post_init__(self) -> None:
        _check_positive(
            self, ("card_price_usd", "card_avg_power_w", "card_tdp_w", "chips_per_node", "nodes_per_rack")
        )
        _check_non_negative(self, ("host_price_usd", "host_avg_power_w", "host_tdp_w"))


LPU_DEPLOYMENT_PRESETS: dict[str, LpuDeployment] = {
    "groqchip1": LpuDeployment(),
    # The LPX rack: 32 liquid-cooled compute trays of 8 LPUs. No price or power has been published: the card
    # price is GroqChip1's, the power an estimate for a 4 nm chip of its size, the tray's host like a node's.
    "groq3": LpuDeployment(
        card_price_usd=20_000.0,  # estimate
        card_avg_power_w=300.0,  # estimate
        card_tdp_w=450.0,  # estimate
        chips_per_node=8,  # a compute tray
        nodes_per_rack=32,
        host_price_usd=30_000.0,  # estimate, per tray
        host_avg_power_w=600.0,  # estimate
        host_tdp_w=1_100.0,  # estimate
    ),
}


@dataclass(frozen=True)
class GpuSpec:
    """One GPU for the comparator. Precision peaks are dense (no sparsity)."""

    name: str = "H100-SXM5-80GB"
    hbm_bytes: float = 80e9  # bytes
    hbm_bandwidth_bytes_per_s: float = 3.35e12  # bytes/s
    fp16_flops_per_s: float = 989e12  # flop/s, dense BF16/FP16 tensor core
    fp8_flops_per_s: float = 1979e12  # flop/s, dense FP8 tensor core
    nvlink_bandwidth_bytes_per_s: float = 450e9  # bytes/s per direction per GPU (NVLink 4, 900 GB/s total)
    allreduce_latency_s: float = 8e-6  # s, a small-message NCCL all-reduce over NVLink (assumed)
    # Fitted once against published Llama-2-70B TP8 batch-1 speeds in FP16 and FP8 (docs/perfmodel.md):
    hbm_efficiency: float = 0.603  # fraction of HBM bandwidth decode GEMMs achieve, fitted
    kernel_latency_s: float = 1.19e-6  # s per kernel on the dependent chain, fitted

    def __post_init__(self) -> None:
        _check_positive(
            self,
            ("hbm_bytes", "hbm_bandwidth_bytes_per_s", "fp16_flops_per_s", "fp8_flops_per_s",
             "nvlink_bandwidth_bytes_per_s"),
        )  # fmt: skip
        _check_non_negative(self, ("allreduce_latency_s", "kernel_latency_s"))
        if not 0 < self.hbm_efficiency <= 1:
            raise ValueError(f"GpuSpec.hbm_efficiency must be in (0, 1], got {self.hbm_efficiency}")


GPU_PRESETS: dict[str, GpuSpec] = {
    "h100": GpuSpec(),
    # H200 SXM: the H100's compute with 141 GB of HBM3e at 4.8 TB/s (NVIDIA H200 datasheet). The fitted
    # efficiency and kernel latency are the H100's: the same silicon and software.
    "h200": GpuSpec(name="H200-SXM-141GB", hbm_bytes=141e9, hbm_bandwidth_bytes_per_s=4.8e12),
}


@dataclass(frozen=True)
class GpuServer:
    """The comparator box: n GPUs in one NVLink domain, tensor-parallel over all of them."""

    gpu: GpuSpec = field(default_factory=GpuSpec)
    n_gpus: int = 8
    price_usd: float = 300_000.0
    avg_power_w: float = 10_000.0  # W, the whole server while serving
    tdp_w: float = 10_200.0  # W, the whole server's maximum
    precision: str = "fp16"  # weights and the GEMM peak used: "fp16" or "fp8"

    def __post_init__(self) -> None:
        _check_positive(self, ("n_gpus", "price_usd", "avg_power_w", "tdp_w"))
        if self.precision not in ("fp16", "fp8"):
            raise ValueError(f"GpuServer.precision must be fp16 or fp8, got {self.precision!r}")

    @property
    def name(self) -> str:
        return f"{self.n_gpus} x {self.gpu.name}"

    @property
    def bytes_per_param(self) -> int:
        return 2 if self.precision == "fp16" else 1

    @property
    def peak_flops_per_s(self) -> float:
        return self.gpu.fp16_flops_per_s if self.precision == "fp16" else self.gpu.fp8_flops_per_s


@dataclass(frozen=True)
class KvLink:
    """The network a prompt's KV cache crosses from the prefill GPUs to the decode LPUs (disaggregation)."""

    bandwidth_bytes_per_s: float = 400e9  # bytes/s: eight 400 Gb/s NICs of one 8-GPU server (an estimate)
    latency_s: float = 10e-6  # s, one transfer's set-up and network latency (an estimate)

    def __post_init__(self) -> None:
        _check_positive(self, ("bandwidth_bytes_per_s",))
        _check_non_negative(self, ("latency_s",))

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth_bytes_per_s


@dataclass(frozen=True)
class HardwareSpec:
    """Everything the planner prices and times."""

    chip: ChipSpec = GROQCHIP1
    lpu: LpuDeployment = field(default_factory=LpuDeployment)
    gpu_server: GpuServer = field(default_factory=GpuServer)
    power_price_usd_per_kw_month: float = 200.0  # $ per kW per month, colocation with cooling
    kv_link: KvLink = field(default_factory=KvLink)
    # Disaggregated serving: prompts prefilled on these GPU servers, decode on the LPUs; None: all on LPUs.
    prefill_server: GpuServer | None = None

    def __post_init__(self) -> None:
        _check_positive(self, ("power_price_usd_per_kw_month",))


def chip_hardware(name: str, base: HardwareSpec | None = None) -> HardwareSpec:
    """`base` (default presets) with the chip preset `name` and its deployment (card, node, rack, power)."""
    key = name.lower()
    if key not in CHIP_PRESETS:
        raise SpecError(f"unknown chip preset {name!r}; known: {', '.join(sorted(CHIP_PRESETS))}")
    return dataclasses.replace(
        base or HardwareSpec(), chip=CHIP_PRESETS[key], lpu=LPU_DEPLOYMENT_PRESETS[key]
    )


def gpu_server(name: str, base: GpuServer | None = None) -> GpuServer:
    """`base` (default: an 8-GPU server) with the GPU preset `name` (h100, h200)."""
    key = name.lower()
    if key not in GPU_PRESETS:
        raise SpecError(f"unknown GPU preset {name!r}; known: {', '.join(sorted(GPU_PRESETS))}")
    return dataclasses.replace(base or GpuServer(), gpu=GPU_PRESETS[key])


@dataclass(frozen=True)
class OwnershipCost:
    """Purchase plus electricity: the seed analysis's arithmetic, kept exact."""

    units: int
    purchase_usd: float
    avg_power_kw: float
    tdp_kw: float
    power_usd_per_year: float  # at the average draw

    def total_usd(self, years: float) -> float:
        return self.purchase_usd + self.power_usd_per_year * years

    def power_usd(self, years: float) -> float:
        return self.power_usd_per_year * years

    def plus(self, other: OwnershipCost) -> OwnershipCost:
        """Two systems bought and run together (the LPUs and the prefill GPUs of a disaggregated system)."""
        return OwnershipCost(
            self.units + other.units,
            self.purchase_usd + other.purchase_usd,
            self.avg_power_kw + other.avg_power_kw,
            self.tdp_kw + other.tdp_kw,
            self.power_usd_per_year + other.power_usd_per_year,
        )


def ownership_cost(
    units: int,
    unit_price_usd: float,
    unit_avg_power_w: float,
    unit_tdp_w: float,
    power_price_usd_per_kw_month: float,
    extra_price_usd: float = 0.0,
    extra_avg_power_w: float = 0.0,
    extra_tdp_w: float = 0.0,
) -> OwnershipCost:
    """`units` identical boxes plus fixed extras (hosts): price, power and yearly electricity."""
    avg_kw = (units * unit_avg_power_w + extra_avg_power_w) / 1000
    return OwnershipCost(
        units=units,
        purchase_usd=units * unit_price_usd + extra_price_usd,
        avg_power_kw=avg_kw,
        tdp_kw=(units * unit_tdp_w + extra_tdp_w) / 1000,
        power_usd_per_year=avg_kw * power_price_usd_per_kw_month * MONTHS_PER_YEAR,
    )


def min_cards_for_bytes(nbytes: float, sram_bytes: float) -> int:
    """The weights-only lower bound: how many chips' SRAM the bytes fill."""
    return math.ceil(nbytes / sram_bytes)


class SpecError(ValueError):
    """A hardware spec file or override is invalid; the message names the file and field."""


SPEC_KEYS = frozenset({"chip", "lpu", "gpu", "gpu_server", "kv_link", "power_price_usd_per_kw_month"})


def load_spec(path: Path, base: HardwareSpec | None = None) -> HardwareSpec:
    """Applies a YAML file to `base` (default presets). Sections: chip, lpu, gpu, gpu_server, kv_link (field:
    value, and `preset: NAME` to start a chip, an lpu deployment or a gpu from a preset) and a top-level
    power_price_usd_per_kw_month."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    spec = base or HardwareSpec()
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown section(s) {', '.join(sorted(map(str, unknown)))}")
    where = str(path)
    if "chip" in data:
        spec = dataclasses.replace(spec, chip=_apply(spec.chip, data["chip"], f"{where}: chip", CHIP_PRESETS))
    if "lpu" in data:
        spec = dataclasses.replace(
            spec, lpu=_apply(spec.lpu, data["lpu"], f"{where}: lpu", LPU_DEPLOYMENT_PRESETS)
        )
    if "gpu" in data:
        gpu = _apply(spec.gpu_server.gpu, data["gpu"], f"{where}: gpu", GPU_PRESETS)
        spec = dataclasses.replace(spec, gpu_server=dataclasses.replace(spec.gpu_server, gpu=gpu))
    if "gpu_server" in data:
        spec = dataclasses.replace(
            spec, gpu_server=_apply(spec.gpu_server, data["gpu_server"], f"{where}: gpu_server", {})
        )
    if "kv_link" in data:
        spec = dataclasses.replace(
            spec, kv_link=_apply(spec.kv_link, data["kv_link"], f"{where}: kv_link", {})
        )
    if "power_price_usd_per_kw_month" in data:
        spec = override(spec, where, power_price_usd_per_kw_month=data["power_price_usd_per_kw_month"])
    return spec


def override(spec: HardwareSpec, source: str, **values: Any) -> HardwareSpec:
    """Replaces top-level fields, validating them; SpecError names `source` and the field."""
    try:
        return dataclasses.replace(spec, **{k: _coerce(spec, k, v) for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{source}: {exc}") from None


def _apply(obj: Any, values: Any, where: str, presets: Mapping[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise SpecError(f"{where}: expected a mapping of field: value, got {type(values).__name__}")
    values = dict(values)
    if "preset" in values:
        name = str(values.pop("preset")).lower()
        if name not in presets:
            raise SpecError(
                f"{where}: unknown preset {name!r}; known: {', '.join(sorted(presets)) or 'none'}"
            )
        obj = presets[name]
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = set(values) - names
    if unknown:
        raise SpecError(
            f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; known: {', '.join(sorted(names))}"
        )
    try:
        return dataclasses.replace(obj, **{k: _coerce(obj, k, v) for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: {exc}") from None


def _coerce(obj: Any, name: str, value: Any) -> Any:
    """YAML gives ints for floats and strings for numbers written in quotes: convert to the field's type."""
    current = getattr(obj, name)
    if isinstance(current, bool) or not isinstance(current, int | float):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if isinstance(current, int):
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(number)
    return number
