"""A picture of a planned LPU system: racks of nodes of chips, each chip coloured by its pipeline stage and
filled to its SRAM use, with the headline figures beside the GPU comparator's."""

from __future__ import annotations

import colorsys
from html import escape

from lpu_runtime.compiler import ChipPlan
from lpu_runtime.plan import PlanReport, ratios, sram_fill
from lpu_runtime.sram import RegionKind

CHIP = 16  # px, one chip's square
GAP = 3  # px between chips
NODE_PAD = 4  # px around a node's row of chips
RACK_PAD = 10  # px inside a rack's frame
RACKS_PER_ROW = 8
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def stage_colour(stage: int, n_stages: int) -> str:
    """Stages run from blue to red, alternately darker and lighter so that neighbouring stages stand apart."""
    return _colour(stage / max(1, n_stages - 1), 0.42 if stage % 2 else 0.55)


def _colour(position: float, lightness: float) -> str:
    """position 0 (blue) .. 1 (red)."""
    r, g, b = colorsys.hls_to_rgb(0.62 * (1 - position), lightness, 0.75)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def render_svg(report: PlanReport) -> str:
    lpu, request = report.lpu, report.request
    plan, hw = lpu.plan, request.hardware
    per_node, per_rack = hw.lpu.chips_per_node, hw.lpu.nodes_per_rack
    by_id = {c.chip_id: c for c in plan.chips}
    stage_of = {c.chip_id: c.stage for c in plan.chips}
    n_stages = len(plan.stages)

    node_w = per_node * (CHIP + GAP) - GAP + 2 * NODE_PAD
    node_h = CHIP + 2 * NODE_PAD
    rack_w = node_w + 2 * RACK_PAD
    rack_h = per_rack * (node_h + GAP) - GAP + 2 * RACK_PAD + 16
    cols = min(RACKS_PER_ROW, lpu.racks)
    rows = -(-lpu.racks // cols)
    left, top = 20, 150
    width = max(left * 2 + cols * (rack_w + 14), 920)
    height = top + rows * (rack_h + 14) + 190

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' {FONT}>",
        f"<rect width='{width}' height='{height}' fill='#fbfbfd'/>",
        f"<text x='{left}' y='32' font-size='22' font-weight='bold'>{escape(request.model.name)} on "
        f"{plan.system.n_chips:,} x {escape(hw.chip.name)}</text>",
        f"<text x='{left}' y='56' font-size='14' fill='#333'>{len(plan.stages)} pipeline stages, "
        f"{plan.n_chips_used:,} chips used, {plan.idle_chips:,} idle; {lpu.nodes} nodes of {per_node} in "
        f"{lpu.racks} rack(s); context {request.context:,}, batch {request.batch}</text>",
        f"<text x='{left}' y='78' font-size='14' fill='#333'>"
        f"{lpu.speed.per_user_tokens_per_s:,.0f} tokens/s per user (batch {request.batch}), "
        f"TTFT {lpu.speed.ttft_s * 1e3:,.0f} ms, "
        f"{lpu.cost.avg_power_kw:,.1f} kW average ({lpu.cost.tdp_kw:,.1f} kW TDP), "
        f"${lpu.cost.purchase_usd / 1e6:,.2f}M to buy, ${lpu.cost.total_usd(3) / 1e6:,.2f}M over 3 years</text>",
    ]
    out += _legend(
        left,
        96,
        n_stages,
        (plan.stages[0].units[0].kind.value, plan.stages[-1].units[-1].kind.value),
        sram_fill(plan),
    )

    for rack in range(lpu.racks):
        rx = left + (rack % cols) * (rack_w + 14)
        ry = top + (rack // cols) * (rack_h + 14)
        out.append(
            f"<rect x='{rx}' y='{ry}' width='{rack_w}' height='{rack_h}' rx='6' fill='#e9ebf0' stroke='#9aa0ab'/>"
        )
        out.append(
            f"<text x='{rx + RACK_PAD}' y='{ry + 14}' font-size='11' fill='#444'>rack {rack + 1}</text>"
        )
        for slot in range(per_rack):
            node = rack * per_rack + slot
            if node >= lpu.nodes:
                break
            nx, ny = rx + RACK_PAD, ry + RACK_PAD + 16 + slot * (node_h + GAP)
            out.append(
                f"<rect x='{nx}' y='{ny}' width='{node_w}' height='{node_h}' rx='3' fill='#ffffff' stroke='#c3c7cf'/>"
            )
            for k in range(per_node):
                chip_id = node * per_node + k
                if chip_id >= plan.system.n_chips:
                    break
                out += _chip(
                    nx + NODE_PAD + k * (CHIP + GAP), ny + NODE_PAD, chip_id, by_id, stage_of, n_stages
                )

    out += _comparison(left, top + rows * (rack_h + 14) + 20, report)
    out.append("</svg>")
    return "\n".join(out)


def _chip(
    x: int, y: int, chip_id: int, by_id: dict[int, ChipPlan], stage_of: dict[int, int], n_stages: int
) -> list[str]:
    if chip_id not in by_id:
        return [
            f"<rect x='{x}' y='{y}' width='{CHIP}' height='{CHIP}' fill='#d5d7dc'><title>chip {chip_id}: idle</title></rect>"
        ]
    plan = by_id[chip_id]
    colour = stage_colour(stage_of[chip_id], n_stages)
    fill = plan.used_bytes / plan.capacity_bytes
    h = max(1.0, CHIP * fill)
    tip = (
        f"chip {chip_id}: stage {plan.stage}, rank {plan.rank}; SRAM {fill:.0%} full "
        f"(weights {plan.bytes_of(RegionKind.WEIGHT) / 2**20:,.0f} MiB, KV {plan.bytes_of(RegionKind.KV) / 2**20:,.0f} MiB)"
    )
    return [
        f"<g><title>{escape(tip)}</title>",
        f"<rect x='{x}' y='{y}' width='{CHIP}' height='{CHIP}' fill='{colour}' fill-opacity='0.28' stroke='{colour}'/>",
        f"<rect x='{x}' y='{y + CHIP - h:.1f}' width='{CHIP}' height='{h:.1f}' fill='{colour}'/>",
        "</g>",
    ]


def _legend(x: int, y: int, n_stages: int, ends: tuple[str, str], fill: dict[str, float]) -> list[str]:
    """The stage colour scale, and a sample chip filled to this system's mean SRAM use."""
    first, last = ends
    steps = 60
    mean = fill["mean"]
    out = [f"<text x='{x}' y='{y + 12}' font-size='12' fill='#333'>pipeline stage</text>"]
    for i in range(steps):
        colour = _colour(i / (steps - 1), 0.5)
        out.append(f"<rect x='{x + 100 + i * 4}' y='{y + 2}' width='4' height='12' fill='{colour}'/>")
    out += [
        f"<text x='{x + 100}' y='{y + 28}' font-size='11' fill='#555'>0 ({first})</text>",
        f"<text x='{x + 340}' y='{y + 28}' font-size='11' fill='#555' text-anchor='end'>{n_stages - 1} ({last})</text>",
        f"<rect x='{x + 380}' y='{y}' width='{CHIP}' height='{CHIP}' fill='#4a7bd0' fill-opacity='0.28' stroke='#4a7bd0'/>",
        f"<rect x='{x + 380}' y='{y + CHIP * (1 - mean):.1f}' width='{CHIP}' height='{CHIP * mean:.1f}' fill='#4a7bd0'/>",
        f"<text x='{x + 402}' y='{y + 12}' font-size='12' fill='#333'>a chip, filled to its SRAM use (here "
        f"{fill['min']:.0%} to {fill['max']:.0%}, mean {mean:.0%})</text>",
        f"<rect x='{x + 800}' y='{y}' width='{CHIP}' height='{CHIP}' fill='#d5d7dc'/>",
        f"<text x='{x + 822}' y='{y + 12}' font-size='12' fill='#333'>idle chip</text>",
    ]
    return out


def _comparison(x: int, y: int, report: PlanReport) -> list[str]:
    """Bars of LPU against the GPU server, each pair scaled to its larger value."""
    lpu, gpu = report.lpu, report.gpu
    server = report.request.hardware.gpu_server
    gpu_name = f"{gpu.servers} x {server.n_gpus} x {server.gpu.name} ({server.precision.upper()})"
    rows = [
        ("tokens/s per user", lpu.speed.per_user_tokens_per_s, gpu.speed.per_user_tokens_per_s, "{:,.0f}"),
        ("average power, kW", lpu.cost.avg_power_kw, gpu.cost.avg_power_kw, "{:,.1f}"),
        ("3-year cost, $M", lpu.cost.total_usd(3) / 1e6, gpu.cost.total_usd(3) / 1e6, "{:,.2f}"),
    ]
    out = [
        f"<text x='{x}' y='{y + 14}' font-size='14' font-weight='bold'>LPU system vs {escape(gpu_name)}</text>",
        f"<rect x='{x + 460}' y='{y + 4}' width='12' height='12' fill='#3b6fd6'/>",
        f"<text x='{x + 478}' y='{y + 14}' font-size='12'>LPU</text>",
        f"<rect x='{x + 520}' y='{y + 4}' width='12' height='12' fill='#76b900'/>",
        f"<text x='{x + 538}' y='{y + 14}' font-size='12'>GPU</text>",
    ]
    bar_w = 420
    for i, (label, a, b, fmt) in enumerate(rows):
        top = y + 30 + i * 46
        scale = bar_w / max(a, b, 1e-12)
        out += [
            f"<text x='{x}' y='{top + 14}' font-size='12' fill='#333'>{label}</text>",
            f"<rect x='{x + 140}' y='{top + 2}' width='{max(1.0, a * scale):.1f}' height='16' fill='#3b6fd6'/>",
            f"<text x='{x + 146 + a * scale:.1f}' y='{top + 15}' font-size='12'>{fmt.format(a)}</text>",
            f"<rect x='{x + 140}' y='{top + 20}' width='{max(1.0, b * scale):.1f}' height='16' fill='#76b900'/>",
            f"<text x='{x + 146 + b * scale:.1f}' y='{top + 33}' font-size='12'>{fmt.format(b)}</text>",
        ]
    r = ratios(report)
    out.append(
        f"<text x='{x}' y='{y + 30 + 3 * 46 + 12}' font-size='12' fill='#555'>LPU / GPU: "
        f"{r['per_user_tokens_per_s']:.2f}x the speed per user at {r['avg_power_kw']:.1f}x the power and "
        f"{r['tco_3y_usd']:.1f}x the 3-year cost</text>"
    )
    return out
