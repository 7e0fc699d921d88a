"""`lpu compile`: place a model on the emulated system and print where every layer and byte went."""

from __future__ import annotations

import argparse
import sys

from lpu_runtime import CompileError, compile_plan
from server.commands.base import Command
from server.settings import SYSTEM_OPTIONS, Settings, add_options


def configure(parser: argparse.ArgumentParser) -> None:
    add_options(parser, SYSTEM_OPTIONS)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        plan = compile_plan(settings.model, settings.system_spec(), settings.engine_config())
    except CompileError as exc:
        print(f"lpu compile: {exc}", file=sys.stderr)
        return 1
    print(plan.render())
    return 0


COMMAND = Command("compile", "compile a model onto N chips and print the placement plan", configure, run)
