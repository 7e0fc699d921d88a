"""What a subcommand is: a name, how it declares its flags and what it runs with the resolved settings."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from server.settings import Settings


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], int]  # returns the process exit status
