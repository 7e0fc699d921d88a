"""Tool calls: the partial-JSON scanner, each format's parser (whole and streamed), the grammars that force calls
(parsed back by the same parsers), template detection and how tools and calls are written into prompts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from lpu_runtime import GrammarSpec
from lpu_runtime.grammar import GrammarCompiler, GrammarVocab
from server.tools import FORMATS, Function, detect_format
from server.tools.calls import PartialCall, complete_calls
from server.tools.jsonscan import Malformed, object_members, value_end
from server.tools.render import native_messages, written_in_messages
from server.tools.stream import CallDelta, ToolStreamer

NAMES = ("weather", "time")
HERMES = FORMATS["hermes"]
LLAMA3 = FORMATS["llama3_json"]
MISTRAL = FORMATS["mistral"]
GENERIC = FORMATS["json"]


# ---- jsonscan ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "final", "end"),
    [
        ('"a\\"b" tail', False, 6),
        ('{"a": [1, {"b": "}"}]} tail', False, 22),
        ('{"a": [1, {"b": "}"', False, None),
        ("123", False, None),  # more digits may follow
        ("123", True, 3),
        ("12, 3", False, 2),
        ("true}", False, 4),
        ('"unterminated', True, None),
    ],
)
def test_value_end_finds_where_a_value_ends_once_it_has(text: str, final: bool, end: int | None) -> None:
    assert value_end(text, 0, final=final) == end


def test_a_scalar_that_is_no_json_is_malformed() -> None:
    with pytest.raises(Malformed):
        value_end("tru,", 0)


def test_object_members_are_read_as_far_as_written() -> None:
    text = '{"name": "f", "arguments": {"x": 1'
    members, end = object_members(text, 0)
    assert [(m.key, m.end is not None) for m in members] == [("name", True), ("arguments", False)]
    assert end is None and text[members[1].start :] == '{"x": 1'
    assert object_members("{ }", 0) == ([], 3)


@pytest.mark.parametrize("text", ["[1]", '{"a" 1}', "{1: 2}", '{"a": 1 "b": 2}'])
def test_text_that_cannot_be_an_object_is_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        object_members(text, 0)


# ---- parsers, whole text -------------------------------------------------------------------------------------


def calls_of(fmt_name: str, text: str, final: bool = True) -> tuple[str, list[PartialCall]]:
    parsed = FORMATS[fmt_name].parser(NAMES).parse(text, final)
    return text[: parsed.content_end], parsed.calls


def test_hermes_calls_after_content() -> None:
    text = 'Sure.<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n{"name": "time", "arguments": {}}\n</tool_call>'
    content, calls = calls_of("hermes", text)
    assert content == "Sure."
    assert calls == [PartialCall("weather", '{"city": "Oslo"}', True), PartialCall("time", "{}", True)]


def test_hermes_holds_back_what_may_become_its_tag_until_the_end() -> None:
    assert calls_of("hermes", "Hello <tool_c", final=False) == ("Hello ", [])
    assert calls_of("hermes", "Hello <tool_c", final=True) == ("Hello <tool_c", [])


def test_hermes_text_that_is_not_json_after_the_tag_is_no_call_streamed_or_not() -> None:
    text = "a<tool_call>\nnot json"
    assert calls_of("hermes", text) == ("a", [])
    streamer = ToolStreamer(HERMES.parser(NAMES))
    assert stream(streamer, text) == (text, []) and streamer.result() == (text, [])


def test_llama3_calls_after_the_python_tag_separated_by_semicolons() -> None:
    text = '<|python_tag|>{"name": "weather", "parameters": {"d": 1}}; {"name": "time", "parameters": {}}'
    content, calls = calls_of("llama3_json", text)
    assert content == "" and [(c.name, c.arguments) for c in calls] == [
        ("weather", '{"d": 1}'),
        ("time", "{}"),
    ]


def test_mistral_calls_are_an_array_after_their_token() -> None:
    text = '[TOOL_CALLS][{"name": "weather", "arguments": {"d": 1}}, {"name": "time", "arguments": {}}]'
    assert [c.name for c in calls_of("mistral", text)[1]] == ["weather", "time"]


def test_generic_calls_in_a_fence() -> None:
    text = '```json\n[{"name": "weather", "arguments": {"d": 2}}]\n```'
    assert calls_of("json", text)[1] == [PartialCall("weather", '{"d": 2}', True)]


@pytest.mark.parametrize(
    "text",
    [
        '{"answer": 42}',
        '{"name": "undeclared", "arguments": {}}',
        "plain words",
        '{"name": 7, "arguments": {}}',
    ],
)
def test_json_that_calls_no_declared_tool_is_content(text: str) -> None:
    assert calls_of("json", text) == (text, [])


def test_json_is_held_back_until_its_first_name_decides_it() -> None:
    assert calls_of("json", '{"na', final=False) == ("", [])
    assert calls_of("json", '{"name": "weather", "argu', final=False)[1] == [
        PartialCall("weather", "", False)
    ]


# ---- streaming ---------------------------------------------------------------------------------------------


def stream(streamer: ToolStreamer, text: str) -> tuple[str, list[CallDelta]]:
    """Feeds `text` a character at a time, then ends it: the content and the deltas it released."""
    content, deltas = "", list[CallDelta]()
    for ch in text:
        more, new = streamer.push(ch)
        content, deltas = content + more, deltas + new
    more, new = streamer.push("", final=True)
    return content + more, deltas + new


def test_a_streamed_call_sends_its_id_and_name_first_then_its_arguments_as_written() -> None:
    text = 'Sure.<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo", "days": 2}}\n</tool_call>'
    streamer = ToolStreamer(HERMES.parser(NAMES))
    content, deltas = stream(streamer, text)
    assert content == "Sure."
    first, rest = deltas[0], deltas[1:]
    assert (
        first.id is not None
        and first.id.startswith("call_")
        and (first.name, first.arguments) == ("weather", "")
    )
    assert all(d.id is None and d.index == 0 for d in rest) and len(rest) > 1  # arguments as they are written
    assert "".join(d.arguments for d in rest) == '{"city": "Oslo", "days": 2}'
    # the non-streamed view of the same text agrees, id included
    assert streamer.result() == ("Sure.", [streamer.result()[1][0]])
    assert streamer.result()[1][0].id == first.id and streamer.called


def test_parallel_calls_stream_in_order_and_can_be_limited_to_one() -> None:
    text = '[TOOL_CALLS][{"name": "weather", "arguments": {"d": 1}}, {"name": "time", "arguments": {}}]'
    _, deltas = stream(ToolStreamer(MISTRAL.parser(NAMES)), text)
    assert [(d.index, d.name) for d in deltas if d.id] == [(0, "weather"), (1, "time")]
    one = ToolStreamer(MISTRAL.parser(NAMES), max_calls=1)
    _, deltas = stream(one, text)
    assert {d.index for d in deltas} == {0} and [c.name for c in one.result()[1]] == ["weather"]


def test_text_without_calls_streams_whole_as_content() -> None:
    text = "The <b>weather</b> {is} fine < 3"
    streamer = ToolStreamer(HERMES.parser(NAMES))
    assert stream(streamer, text) == (text, []) and streamer.result() == (text, [])


# ---- forced calls: each format's grammar, parsed back by its own parser ----------------------------------------

EOS = 256
VOCAB = GrammarVocab((*(bytes([i]) for i in range(256)), b""), (EOS,))
FUNCTIONS = [
    Function("weather", None, {"type": "object", "properties": {"d": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["d"], "additionalProperties": False}, True),
    Function("time", "now", {"type": "object", "properties": {}, "additionalProperties": False}, True),
]  # fmt: skip


def forced(spec: GrammarSpec, seed: int) -> str:
    """What a model writes under the grammar, whatever its logits (random here)."""
    matcher = GrammarCompiler(VOCAB).matcher(spec)
    rng, text = np.random.default_rng(seed), b""
    for _ in range(400):
        scores = rng.standard_normal(len(VOCAB.pieces))
        matcher.mask_into(scores)
        token = int(np.argmax(scores))
        if token == EOS:
            return text.decode()
        matcher.consume(token)
        text += VOCAB.pieces[token]
    raise AssertionError(text)


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("parallel", [False, True])
def test_a_forced_call_is_always_one_the_format_parses(name: str, parallel: bool) -> None:
    fmt = FORMATS[name]
    spec = fmt.grammar(FUNCTIONS, parallel)
    for seed in range(3):
        text = forced(spec, seed)
        calls = complete_calls(fmt.parser(["weather", "time"]).parse(text, final=True))
        assert calls and (parallel or len(calls) == 1), text
        for call in calls:
            arguments = json.loads(call.arguments)
            assert (call.name, arguments) == ("time", {}) or (
                call.name == "weather" and 1 <= arguments["d"] <= 7
            ), text


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_with_an_answer_schema_the_output_is_calls_or_an_answer_that_follows_it(name: str) -> None:
    fmt = FORMATS[name]
    answer = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}  # fmt: skip
    spec = fmt.grammar(FUNCTIONS, parallel=True, answer=answer)
    kinds = set()
    for seed in range(12):
        text = forced(spec, seed)
        calls = complete_calls(fmt.parser(["weather", "time"]).parse(text, final=True))
        if calls:
            kinds.add("calls")
        else:
            assert json.loads(text).keys() == {"ok"}, text
            kinds.add("answer")
    assert kinds == {"calls", "answer"}  # random logits take both branches


def test_a_named_function_is_the_only_one_forced() -> None:
    spec = LLAMA3.grammar(FUNCTIONS[:1], parallel=False)
    text = forced(spec, 0)
    assert [c.name for c in complete_calls(LLAMA3.parser(["weather"]).parse(text, True))] == ["weather"]


# ---- templates and prompts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "name"),
    [
        (None, "hermes"),  # no template: the server writes Hermes' format into the prompt
        ("{{ messages }}", "hermes"),
        ("{% if tools %}<tool_call>{% endif %}", "hermes"),
        ("{% if tools %}[TOOL_CALLS]{% endif %}", "mistral"),
        ("{% if tools %}ipython {{ t.parameters }}{% endif %}", "llama3_json"),
        ("{% for tool in tools %}{{ tool }}{% endfor %}", "json"),
    ],
)
def test_the_format_is_the_one_the_template_teaches(template: str | None, name: str) -> None:
    assert detect_format(template).name == name


CALL: dict[str, Any] = {
    "id": "c1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"d": 1}'},
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
]


def test_a_template_that_takes_tools_gets_arguments_as_objects() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "not json"}}],
        },
    ]
    rendered = native_messages(messages)
    assert rendered[0]["tool_calls"][0]["function"]["arguments"] == {"d": 1}
    assert rendered[1]["tool_calls"][0]["function"]["arguments"] == "not json"
    assert (
        messages[0]["tool_calls"][0]["function"]["arguments"] == '{"d": 1}'
    )  # the request is left as it was


def test_a_template_without_tools_gets_the_hermes_format_written_in() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    ]
    system, user, assistant, result = written_in_messages(messages, TOOLS, chatml=False)
    assert system["content"].startswith("Be brief.\n\n") and json.dumps(TOOLS[0]) in system["content"]
    assert user == messages[1]
    assert assistant == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "weather", "arguments": {"d": 1}}\n</tool_call>',
    }
    assert result == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    assert written_in_messages(messages[1:2], TOOLS, chatml=False)[0]["role"] == "system"  # one of its own


def test_in_chatml_the_results_of_parallel_calls_are_one_tool_turn() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL, {**CALL, "id": "c2"}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "tool", "content": "rain", "tool_call_id": "c2"},
        {"role": "user", "content": "And?"},
    ]
    rendered = written_in_messages(messages, TOOLS, chatml=True)
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "tool", "user"]
    assert (
        rendered[3]["content"]
        == "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
    )
