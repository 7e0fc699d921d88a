"""What every tool-call format parses into, and the JSON call object they all write.

A parser reads the whole text generated so far and says which part of it is ordinary content and which calls
it holds, complete or still being written. Everything it reports only ever grows as text is appended (the
arguments are the raw JSON text the model wrote), so the streamer can send the difference as deltas and the
pieces always join to what a non-streamed response returns.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from server.tools.jsonscan import Malformed, object_members, skip_ws

ARGUMENT_KEYS = ("arguments", "parameters")  # Hermes, Mistral and OpenAI say arguments; Llama 3 parameters


@dataclass(frozen=True)
class PartialCall:
    name: str | None  # None until the name is completely written
    arguments: str  # the raw JSON text of the arguments so far
    complete: bool


@dataclass(frozen=True)
class Parsed:
    content_end: int  # text[:content_end] is content, never to be taken back
    calls: list[PartialCall] = field(default_factory=list)


class ToolCallParser(Protocol):
    def parse(self, text: str, final: bool) -> Parsed:
        """`final`: generation ended, so nothing is held back as a possible start of a call."""
        ...


def read_call(text: str, start: int, final: bool) -> tuple[PartialCall, int | None]:
    """The call object opening at text[start]: {"name": ..., "arguments" | "parameters": {...}}, and the
    index just past it (None while unfinished). Raises Malformed when it is no such object."""
    members, end = object_members(text, start, final=final)
    name: str | None = None
    arguments = ""
    for member in members:
        if member.key == "name" and member.end is not None:
            value = json.loads(text[member.start : member.end])
            if not isinstance(value, str):
                raise Malformed("a call's name must be a string")
            name = value
        elif member.key in ARGUMENT_KEYS:
            arguments = text[member.start : member.end if member.end is not None else len(text)]
    if end is not None and (name is None or not arguments):
        raise Malformed("a call needs a name and arguments")
    return PartialCall(name, arguments, end is not None), end


class JsonCallsParser:
    """Calls written as bare JSON: one object, objects one after another (`sep`), or an array of them, after
    an optional prefix. The text is a call only if its first object names a declared tool; until that name
    is written everything is held back, and text that turns out not to be a call is all content."""

    def __init__(self, tool_names: Collection[str], prefixes: tuple[str, ...] = (), sep: str = "") -> None:
        self.tool_names = frozenset(tool_names)
        self.prefixes = prefixes
        self.sep = sep  # between top-level objects, besides whitespace

    def parse(self, text: str, final: bool) -> Parsed:
        at = skip_ws(text, 0)
        for prefix in self.prefixes:
            if text.startswith(prefix, at):
                at = skip_ws(text, at + len(prefix))
                break
            if prefix.startswith(text[at:]) and not final:
                return Parsed(0)  # maybe the prefix, still arriving
        in_array = at < len(text) and text[at] == "["
        if in_array:
            at = skip_ws(text, at + 1)
        if at >= len(text):
            return Parsed(len(text) if final else 0)
        if text[at] != "{":
            return Parsed(len(text))
        calls: list[PartialCall] = []
        try:
            while at < len(text):
                call, end = read_call(text, at, final)
                if not calls and call.name is None:
                    return Parsed(len(text) if final else 0)  # undecided until the name is written
                if not calls and call.name not in self.tool_names:
                    return Parsed(len(text))
                calls.append(call)
                if end is None:
                    break
                at = skip_ws(text, end)
                if at < len(text) and text[at] in "," + self.sep:
                    at = skip_ws(text, at + 1)
                if at < len(text) and text[at] != "{":
                    break  # the closing bracket, or trailing text: not part of any call
        except Malformed:
            if not calls:
                return Parsed(len(text))
        return Parsed(0, calls)


def complete_calls(parsed: Parsed) -> list[PartialCall]:
    return [c for c in parsed.calls if c.complete and c.name is not None]
