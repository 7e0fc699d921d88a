"""The formats that write calls as bare JSON: Llama 3.1 / 3.2, Mistral, and the generic fallback for any other
template that takes tools (Command-R, functionary, firefunction...).

- Llama 3.1 / 3.2: `{"name": ..., "parameters": {...}}` (after the special `<|python_tag|>` token, which
  leaves no text); several calls separated by `;`.
- Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (`[TOOL_CALLS]` is a special token in
  Mistral's vocabulary and leaves no text, but a template may spell it).
- Generic: a call object or an array of them, bare or in a ```json fence.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from lpu_runtime import GrammarSpec
from server.tools.calls import JsonCallsParser
from server.tools.formats import Function, call_schema, lark_json, start_rule


@dataclass(frozen=True)
class JsonCallsFormat:
    name: str
    arguments_key: str  # what the format calls the arguments when a grammar writes them
    prefixes: tuple[str, ...] = ()
    sep: str = ""
    array: bool = False  # forced calls are written as an array

    def parser(self, tool_names: Collection[str]) -> JsonCallsParser:
        return JsonCallsParser(tool_names, self.prefixes, self.sep)

    def grammar(
        self, functions: Sequence[Function], parallel: bool, answer: dict[str, Any] | None = None
    ) -> GrammarSpec:
        call = lark_json(call_schema(functions, self.arguments_key))
        if self.array:
            more = ' (", " call)*' if parallel else ""
            calls = f'"[" call{more} "]"'
        else:
            more = ' ("; " call)*' if parallel and self.sep else ""
            calls = f"call{more}"
        return GrammarSpec("lark", f"{start_rule(calls, answer)}call: {call}\n")


LLAMA3_JSON = JsonCallsFormat("llama3_json", "parameters", prefixes=("<|python_tag|>",), sep=";")
MISTRAL = JsonCallsFormat("mistral", "arguments", prefixes=("[TOOL_CALLS]",), array=True)
GENERIC_JSON = JsonCallsFormat("json", "arguments", prefixes=("```json", "```"), array=True)
