"""What a chat request asks the output to be: free text, JSON (response_format), or tool calls, and the grammar
that makes it so. Schemas are checked here, where the request arrives, so a bad one is a 400 naming its field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lpu_runtime import GrammarSpec, InvalidRequestError, check_grammar, json_options
from server.protocol import ChatCompletionRequest, NamedToolChoice, ResponseFormat
from server.tools import Function, ToolFormat, detect_format, template_is_chatml, template_takes_tools
from server.tools.render import native_messages, written_in_messages

ANY_OBJECT = {"type": "object"}  # json_object: OpenAI's JSON mode promises an object


def response_grammar(fmt: ResponseFormat | None, param: str = "response_format") -> GrammarSpec | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return GrammarSpec("json_schema", json.dumps(ANY_OBJECT))
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise InvalidRequestError(
            f"{param}.json_schema", "response_format json_schema needs json_schema.schema"
        )
    # strict: every keyword must be honoured, so one the compiler does not implement is refused; otherwise
    # such keywords are ignored, as OpenAI's non-strict mode does
    spec = GrammarSpec("json_schema", json.dumps(fmt.json_schema.schema_), lenient=not fmt.json_schema.strict)
    check_grammar(spec, f"{param}.json_schema.schema")
    return spec


def answer_schema(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    """The response format as a schema to inline in a tool-call grammar (its compile options in its
    `x-guidance` key), or None for free text. The format has been checked by response_grammar."""
    spec = response_grammar(fmt)
    if spec is None:
        return None
    schema: dict[str, Any] = json.loads(spec.source)
    return {"x-guidance": json_options(spec.lenient), **schema}


def functions_of(body: ChatCompletionRequest) -> list[Function]:
    functions = []
    for i, tool in enumerate(body.tools or ()):
        f = tool.function
        parameters = f.parameters if f.parameters is not None else {"type": "object", "properties": {}}
        spec = GrammarSpec("json_schema", json.dumps(parameters), lenient=not f.strict)
        check_grammar(spec, f"tools.{i}.function.parameters")
        functions.append(Function(f.name, f.description, parameters, bool(f.strict)))
    return functions


@dataclass(frozen=True)
class ChatPlan:
    """How to render and constrain one chat request."""

    messages: list[dict[str, Any]]
    template_tools: list[dict[str, Any]] | None  # what the template's `tools` variable gets
    tool_format: ToolFormat | None  # None: the output is not parsed for tool calls
    max_calls: int | None  # 1 when parallel_tool_calls is false
    grammar: GrammarSpec | None


def plan_chat(body: ChatCompletionRequest, template: str | None) -> ChatPlan:
    body.check_supported()
    messages = body.template_messages()
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    native = template_takes_tools(template)
    functions = functions_of(body)
    if native:
        messages, template_tools = native_messages(messages), tools
    else:
        messages, template_tools = written_in_messages(messages, tools, template_is_chatml(template)), None
    if not body.tool_calling:
        return ChatPlan(messages, template_tools, None, None, response_grammar(body.response_format))
    tool_format = detect_format(template)
    parallel = body.parallel_tool_calls is not False
    choice = body.tool_choice
    grammar = None
    answer = answer_schema(body.response_format)
    if choice in (None, "auto") and answer is not None:
        # the model may call tools or answer, and its answer keeps to the format (an agent with an output
        # type and tools asks for both on every turn)
        grammar = tool_format.grammar(functions, parallel, answer)
    elif choice == "required":
        grammar = tool_format.grammar(functions, parallel)
    elif isinstance(choice, NamedToolChoice):
        named = [f for f in functions if f.name == choice.function.name]
        grammar = tool_format.grammar(named, parallel=False)
    if grammar is not None:
        check_grammar(grammar, "tools")
    return ChatPlan(messages, template_tools, tool_format, None if parallel else 1, grammar)
