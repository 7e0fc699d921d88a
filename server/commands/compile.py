"""`lpu compile`: place a model on the emulated system and print where every layer and byte went."""

from __future__ import annotations

import argparse
import sys

from lpu_runtime import LpuError, compile_plan
from server.commands.base import Command
from server.settings import SYSTEM_OPTIONS, Settings, add_options


def configure(parser: argparse.ArgumentParser) -> None:
    add_options(parser, SYSTEM_OPTIONS)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        plan = compile_plan(
            settings.model, settings.system_spec(), settings.engine_config(), settings.max_model_len
        )
    except (KeyError, LpuError) as exc:  # a model that does not fit, or a checkpoint file that is unusable
        print(f"lpu compile: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 1
    print(plan.render())
    return 0


COMMAND = Command("compile", "compile a model onto N chips and print the placement plan", configure, run)
