"""A tool-call format: how a model family writes calls, how to parse them back, and the grammar that forces
them (tool_choice "required" or a named function), so a forced call is parsed by the same parser as a free one.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lpu_runtime import GrammarSpec, json_options
from server.tools.calls import ToolCallParser


@dataclass(frozen=True)
class Function:
    """A declared tool, as the request gave it."""

    name: str
    description: str | None
    parameters: dict[str, Any]  # a JSON Schema; {"type": "object", "properties": {}} when none was given
    strict: bool


def call_schema(functions: Sequence[Function], arguments_key: str) -> dict[str, Any]:
    """JSON Schema of one call object: {"name": one of the functions, arguments_key: its parameters}."""
    # A parameters schema refers to its definitions from its own root ("#/$defs/X"); nested here, they move
    # to this schema's root so the references still resolve (pydantic and instructor write such schemas).
    definitions: dict[str, dict[str, Any]] = {}
    variants = []
    for f in functions:
        parameters = dict(f.parameters)
        for key in ("$defs", "definitions"):
            if key in parameters:
                definitions.setdefault(key, {}).update(parameters.pop(key))
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": f.name}, arguments_key: parameters},
                "required": ["name", arguments_key],
                "additionalProperties": False,
            }
        )
    # Non-strict tools' schemas may use keywords the grammar compiler does not implement: ignore those.
    lenient = not all(f.strict for f in functions)
    return {"x-guidance": json_options(lenient), **definitions, "anyOf": variants}


def lark_json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(schema)


def start_rule(calls: str, answer: dict[str, Any] | None) -> str:
    """The grammar's start: the calls, or (when `answer` is a JSON Schema) either the calls or an answer
    that follows it."""
    if answer is None:
        return f"start: {calls}\n"
    return f"start: {calls} | answer\nanswer: {lark_json(answer)}\n"


class ToolFormat(Protocol):
    @property
    def name(self) -> str: ...

    def parser(self, tool_names: Collection[str]) -> ToolCallParser: ...

    def grammar(
        self, functions: Sequence[Function], parallel: bool, answer: dict[str, Any] | None = None
    ) -> GrammarSpec:
        """Forces at least one call (exactly one unless `parallel`) of one of `functions`, or, when `answer`
        is a JSON Schema, either that or an answer following it."""
        ...
