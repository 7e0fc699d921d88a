"""Tools, earlier calls and their results in the prompt.

A template that takes tools gets them as transformers passes them: `tools` as the request gave them, each
assistant call's arguments as an object (templates serialise them with tojson), tool results as `tool`
messages. A template that takes none (SmolLM2's ChatML) gets the Hermes format written in: the tools and
instructions in the system message, calls as tagged text in the assistant turns, results in one turn after
them: a `tool` turn in a ChatML template, as Hermes 2 Pro writes them (SmolLM2 then answers from the result,
where after a user turn it repeats the result's tags back), else a user turn (templates such as Gemma's or
Llama 2's refuse any role but user and assistant).
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
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, chatml: bool
) -> list[dict[str, Any]]:
    rendered: list[dict[str, Any]] = []
    result_role = "tool" if chatml else "user"
    results: dict[str, Any] | None = None  # the turn the results of the latest calls go into
    for message in messages:
        if message["role"] == "tool":
            result = hermes.render_result(message["content"])
            if results is None:
                results = {"role": result_role, "content": result}
                rendered.append(results)
            else:
                results["content"] += "\n" + result  # parallel calls' results: one turn
            continue
        results = None
        if "tool_calls" in message:
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
