"""Subcommands of `lpu`. A new one is a module with a `COMMAND` and an entry in this tuple."""

from __future__ import annotations

from server.commands import compile as compile_command
from server.commands import export as export_command
from server.commands import plan as plan_command
from server.commands import serve as serve_command
from server.commands.base import Command

COMMANDS: tuple[Command, ...] = (
    serve_command.COMMAND,
    compile_command.COMMAND,
    export_command.COMMAND,
    plan_command.COMMAND,
)

__all__ = ["COMMANDS", "Command"]
