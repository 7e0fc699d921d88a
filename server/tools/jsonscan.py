"""Just enough of a JSON scanner to read tool calls while they are still being written.

A streamed call is its JSON text so far: these functions say where a value ends once it has (or that it has
not yet), and which members of an object are already complete, without ever needing the rest of the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

WHITESPACE = " \t\n\r"
_SCALAR_END = ",}]" + WHITESPACE


class Malformed(ValueError):
    """The text cannot be the start of the JSON expected there."""


def skip_ws(text: str, at: int) -> int:
    while at < len(text) and text[at] in WHITESPACE:
        at += 1
    return at


def value_end(text: str, start: int, *, final: bool = False) -> int | None:
    """The index just past the JSON value that starts at text[start], or None while it is unfinished.
    `final`: the text is complete, so a number running to its end is finished."""
    if start >= len(text):
        return None
    first = text[start]
    if first == '"':
        return _string_end(text, start)
    if first in "{[":
        depth, at = 0, start
        while at < len(text):
            ch = text[at]
            if ch == '"':
                end = _string_end(text, at)
                if end is None:
                    return None
                at = end
                continue
            if ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
                if depth == 0:
                    return at + 1
            at += 1
        return None
    at = start
    while at < len(text) and text[at] not in _SCALAR_END:
        at += 1
    if at == len(text) and not final:
        return None
    try:
        json.loads(text[start:at])
    except ValueError:
        raise Malformed(f"not a JSON value: {text[start:at]!r}") from None
    return at


def _string_end(text: str, start: int) -> int | None:
    at = start + 1
    while at < len(text):
        ch = text[at]
        if ch == "\\":
            at += 2
            continue
        if ch == '"':
            return at + 1
        at += 1
    return None


@dataclass(frozen=True)
class Member:
    key: str
    start: int  # where its value starts
    end: int | None  # just past its value; None while unfinished


def object_members(text: str, start: int, *, final: bool = False) -> tuple[list[Member], int | None]:
    """The members of the object opening at text[start] ('{') written so far, and the index just past its
    closing brace (None while open). Raises Malformed when the text cannot be such an object."""
    if text[start] != "{":
        raise Malformed("not an object")
    members: list[Member] = []
    at = skip_ws(text, start + 1)
    if at < len(text) and text[at] == "}":
        return members, at + 1
    while at < len(text):
        if text[at] != '"':
            raise Malformed("an object key must be a string")
        key_end = _string_end(text, at)
        if key_end is None:
            return members, None
        key = json.loads(text[at:key_end])
        at = skip_ws(text, key_end)
        if at >= len(text):
            return members, None
        if text[at] != ":":
            raise Malformed("expected ':' after an object key")
        value_start = skip_ws(text, at + 1)
        if value_start >= len(text):
            return members, None
        end = value_end(text, value_start, final=final)
        members.append(Member(key, value_start, end))
        if end is None:
            return members, None
        at = skip_ws(text, end)
        if at >= len(text):
            return members, None
        if text[at] == "}":
            return members, at + 1
        if text[at] != ",":
            raise Malformed("expected ',' or '}' after an object member")
        at = skip_ws(text, at + 1)
    return members, None
