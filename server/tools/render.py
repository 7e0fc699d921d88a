"""Tools, earlier calls and their results in the prompt.

A template that takes tools gets them as transformers passes them: `tools` as the request gave them, each
assistant call's arguments as an object (templates serialise them with tojson), tool results as `tool`
messages. A template that takes none (SmolLM2's ChatML) gets the Hermes format written in: the tools and
instructions in the system message, calls as tagged text in the assistant turns, results as user turns.
"""

from __future__ import annotations

import json
from typing import Any

from server.tools import hermes


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a template that wants an object gets what the client sent


def native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rendered = []
    for message in messages:
        if "tool_calls" in message:
            calls = [
                {
                    **call,
                    "function": {**call["function"], "arguments": _arguments(call["function"]["arguments"])},
                }
                for call in message["tool_calls"]
            ]
            message = {**message, "tool_calls": calls}
        rendered.append(message)
    return rendered


def written_in_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    rendered: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            rendered.append({"role": "user", "content": hermes.render_result(message["content"])})
        elif "tool_calls" in message:
            calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
            text = "\n".join(t for t in (message["content"], hermes.render_calls(calls)) if t)
            rendered.append({"role": "assistant", "content": text})
        else:
            rendered.append(message)
    if tools:
        prompt = hermes.system_prompt(tools)
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {**rendered[0], "content": f"{rendered[0]['content']}\n\n{prompt}"}
        else:
            rendered.insert(0, {"role": "system", "content": prompt})
    return rendered
