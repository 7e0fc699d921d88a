"""Hermes / Qwen 2.5: each call is `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

It is also the format written into the prompt of a model whose chat template takes no tools (SmolLM2's): the
tools and the instructions Hermes-2-Pro's template gives, earlier calls as tagged text, results as
`<tool_response>` text (in which turn: server/tools/render.py).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from lpu_runtime import GrammarSpec
from server.tools.calls import Parsed, PartialCall, read_call
from server.tools.formats import Function, call_schema, lark_json, start_rule
from server.tools.jsonscan import Malformed, skip_ws

OPEN, CLOSE = "<tool_call>", "</tool_call>"

SYSTEM_PROMPT = (
    "You are a function calling AI model. You are provided with function signatures within <tools></tools> "
    "XML tags. You may call one or more functions to assist with the user query. Don't make assumptions "
    "about what values to plug into functions. Here are the available tools: <tools>\n{tools}\n</tools>\n"
    "For each function call return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags as follows:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-dict>}}\n</tool_call>'
)


class HermesParser:
    def parse(self, text: str, final: bool) -> Parsed:
        first = text.find(OPEN)
        if first < 0:
            if final:
                return Parsed(len(text))
            return Parsed(len(text) - _open_prefix_len(text))  # hold back what may become the tag
        calls: list[PartialCall] = []
        at = first
        while at >= 0:
            body = skip_ws(text, at + len(OPEN))
            if body >= len(text):
                break
            try:
                call, end = read_call(text, body, final)
            except Malformed:
                break
            calls.append(call)
            if end is None:
                break
            at = text.find(OPEN, end)
        return Parsed(first, calls)


def _open_prefix_len(text: str) -> int:
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:n]):
            return n
    return 0


class Hermes:
    name = "hermes"

    def parser(self, tool_names: Collection[str]) -> HermesParser:
        return HermesParser()

    def grammar(
        self, functions: Sequence[Function], parallel: bool, answer: dict[str, Any] | None = None
    ) -> GrammarSpec:
        repeat = ' ("\\n" call)*' if parallel else ""
        lark = (
            start_rule(f"call{repeat}", answer)
            + f'call: "{OPEN}\\n" obj "\\n{CLOSE}"\n'
            + f"obj: {lark_json(call_schema(functions, 'arguments'))}\n"
        )
        return GrammarSpec("lark", lark)


def system_prompt(tools: list[dict[str, object]]) -> str:
    return SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def render_calls(calls: Sequence[tuple[str, str]]) -> str:
    """(name, arguments JSON) pairs as the model writes them."""
    return "\n".join(
        f'{OPEN}\n{{"name": {json.dumps(name)}, "arguments": {args}}}\n{CLOSE}' for name, args in calls
    )


def render_result(content: str) -> str:
    return f"<tool_response>\n{content}\n</tool_response>"
