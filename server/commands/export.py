"""`lpu export`: write a model (a synthetic preset, or any checkpoint we load) as a HuggingFace directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lpu_runtime import LpuError, export_model
from server.commands.base import Command
from server.settings import MODEL_FILE_OPTIONS, Settings, add_options


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="synthetic:<preset>, a path or a hub id", metavar="MODEL"
    )
    parser.add_argument("--out", required=True, type=Path, help="new directory to write", metavar="DIR")
    parser.add_argument("--seed", type=int, default=0, help="seed of synthetic weights (default 0)")
    add_options(parser, MODEL_FILE_OPTIONS)


def run(args: argparse.Namespace, settings: Settings) -> int:
    total = 0

    def progress(name: str, nbytes: int) -> None:
        nonlocal total
        total += nbytes
        if sys.stderr.isatty():
            sys.stderr.write(f"\r\033[Kwriting {name} ({total / 1e6:,.1f} MB written)")

    try:
        written = export_model(
            args.model,
            args.out,
            tokenizer=settings.tokenizer,
            chat_template=settings.chat_template,
            seed=args.seed,
            on_tensor=progress,
        )
    except (KeyError, LpuError) as exc:
        print(f"lpu export: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 1
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(f"wrote {args.out}: {', '.join(p.name for p in written)} ({total / 1e6:,.1f} MB of weights)")
    return 0


COMMAND = Command(
    "export", "write a model as a HuggingFace directory (config.json + model.safetensors)", configure, run
)
