"""The `lpu` command line: one subcommand per module in `server.commands`, dispatched from one parser."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from server.commands import COMMANDS
from server.settings import SettingsError, settings_from


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpu", description="OpenAI-compatible LLM server on an emulated multi-chip LPU."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(command_parser)
        command_parser.set_defaults(run=command.run, command_parser=command_parser)
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args, os.environ if env is None else env)
    except SettingsError as exc:
        args.command_parser.error(str(exc))  # exits 2 with the subcommand's usage, like any argparse error
    status: int = args.run(args, settings)
    return status


if __name__ == "__main__":
    sys.exit(main())
