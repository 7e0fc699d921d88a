"""`lpu plan`: chips, layout, speed, power and cost of a model on an LPU system next to a GPU server."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from lpu_runtime import (
    CompileError,
    HardwareSpec,
    PlanInputError,
    PlanRequest,
    SpecError,
    chip_hardware,
    gpu_server,
    load_spec,
    override_hardware,
    plan_report_dict,
    plan_system,
    render_plan_svg,
    render_plan_table,
    resolve_model,
    shorter_context_that_fits,
)
from server.commands.base import Command
from server.settings import MIB, SYSTEM_OPTIONS, Settings, add_options

# Shared flags that mean the same here; --chips is the planner's own (absent: the fewest that fit).
_SHARED = ("model", "chip", "chip_sram_mib", "max_num_batched_tokens", "prefill_on")


DEFAULT_PROMPT = 550  # tokens


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    add_options(parser, tuple(o for o in SYSTEM_OPTIONS if o.name in _SHARED))
    parser.add_argument(
        "--chips",
        dest="plan_chips",
        type=_positive_int,
        metavar="N",
        help="chips in the system (default: the fewest the compiled model needs)",
    )
    parser.add_argument(
        "--context",
        type=_positive_int,
        metavar="TOKENS",
        help="context every sequence may reach (default: the model's)",
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=1,
        metavar="B",
        help="sequences served at once, each with a full context of KV (default 1)",
    )
    parser.add_argument(
        "--prompt",
        type=_positive_int,
        default=None,
        metavar="TOKENS",
        help=f"prompt length for the time to first token (default {DEFAULT_PROMPT}, or half the context if shorter)",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output (default table)")
    parser.add_argument("--svg", type=Path, metavar="FILE", help="also draw the system as an SVG picture")
    parser.add_argument(
        "--spec",
        type=Path,
        metavar="FILE",
        help="YAML hardware spec: sections chip, lpu, gpu, gpu_server (see docs/hardware.md)",
    )
    parser.add_argument(
        "--weights",
        choices=("int8", "fp8"),
        help="LPU weight format (default: the chip's: int8 on groqchip1, fp8 on groq3, which has FP8 units)",
    )
    parser.add_argument("--chip-price", type=_positive_float, metavar="USD", help="price of one card")
    parser.add_argument("--chip-power-w", type=_positive_float, metavar="W", help="average power of one card")
    parser.add_argument("--chip-tdp-w", type=_positive_float, metavar="W", help="maximum power of one card")
    parser.add_argument(
        "--power-price-kw-month",
        type=_positive_float,
        metavar="USD",
        help="electricity and cooling, $ per kW per month (default 200)",
    )
    parser.add_argument(
        "--gpu-precision", choices=("fp16", "fp8"), help="GPU comparator precision (default fp16)"
    )
    parser.add_argument("--gpu-server-price", type=_positive_float, metavar="USD",
                        help="price of one 8-GPU server (default 300000)")  # fmt: skip


def hardware_from(args: argparse.Namespace, settings: Settings) -> HardwareSpec:
    """Presets, then the YAML file, then single flags: each layer replaces only what it names."""
    spec = chip_hardware(settings.chip)  # the chip with its card, node and rack
    if args.spec is not None:
        spec = load_spec(args.spec, spec)
    if args.weights is not None:
        spec = override_hardware(spec, "--weights", chip=dataclasses.replace(spec.chip, weights=args.weights))
    if settings.chip_sram_mib is not None:
        chip = dataclasses.replace(spec.chip, sram_bytes=int(settings.chip_sram_mib * MIB))
        spec = override_hardware(spec, "--chip-sram-mb", chip=chip)
    lpu_fields = {
        "card_price_usd": args.chip_price,
        "card_avg_power_w": args.chip_power_w,
        "card_tdp_w": args.chip_tdp_w,
    }
    lpu_values = {k: v for k, v in lpu_fields.items() if v is not None}
    if lpu_values:
        spec = override_hardware(
            spec, "--chip-price/--chip-power-w/--chip-tdp-w", lpu=dataclasses.replace(spec.lpu, **lpu_values)
        )
    if args.power_price_kw_month is not None:
        spec = override_hardware(
            spec, "--power-price-kw-month", power_price_usd_per_kw_month=args.power_price_kw_month
        )
    if args.gpu_precision is not None or args.gpu_server_price is not None:
        server = spec.gpu_server
        server = dataclasses.replace(
            server,
            precision=args.gpu_precision or server.precision,
            price_usd=args.gpu_server_price or server.price_usd,
        )
        spec = override_hardware(spec, "--gpu-precision/--gpu-server-price", gpu_server=server)
    if settings.prefill_on is not None:
        # the comparator server's settings (precision, price) with the named GPU
        server = gpu_server(settings.prefill_on, spec.gpu_server)
        spec = override_hardware(spec, "--prefill-on", prefill_server=server)
    return spec


def _chunk(args: argparse.Namespace, settings: Settings) -> int | None:
    """The prefill chunk asked for by flag or environment; None (the default) lets the planner halve its
    default chunk when a layer's activations would not fit."""
    explicit = args.max_num_batched_tokens is not None
    if explicit or settings.max_num_batched_tokens != Settings().max_num_batched_tokens:
        return settings.max_num_batched_tokens
    return None


def run(args: argparse.Namespace, settings: Settings) -> int:
    request: PlanRequest | None = None
    try:
        hardware = hardware_from(args, settings)
        model = resolve_model(settings.model)
        context = args.context or model.max_context
        request = PlanRequest(
            model=model,
            context=context,
            batch=args.batch,
            # Published TTFT figures use ~550-token prompts; a small model's context may not hold one.
            prompt=args.prompt or min(DEFAULT_PROMPT, context // 2),
            chips=args.plan_chips,
            max_num_batched_tokens=_chunk(args, settings),
            hardware=hardware,
        )
        report = plan_system(request)
    except CompileError as exc:
        # A model's own context (up to 10^6 tokens for some) can need more KV than the chips hold: suggest a
        # shorter one only when one fits.
        shorter = shorter_context_that_fits(request) if request is not None else None
        hint = f"; a context of {shorter:,} tokens fits: --context {shorter}" if shorter else ""
        print(f"lpu plan: {exc}{hint}", file=sys.stderr)
        return 1
    except (PlanInputError, SpecError, ValueError) as exc:
        print(f"lpu plan: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(plan_report_dict(report), indent=2))
    else:
        print(render_plan_table(report))
    if args.svg is not None:
        try:
            args.svg.write_text(render_plan_svg(report))
        except OSError as exc:
            print(f"lpu plan: cannot write {args.svg}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {args.svg}", file=sys.stderr)
    return 0


COMMAND = Command(
    "plan", "chips, speed, power and cost of a model on an LPU system vs a GPU server", configure, run
)
