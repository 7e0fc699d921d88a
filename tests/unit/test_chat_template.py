import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lpu_runtime.chat_template import (
    DEMO_CHAT_TEMPLATE,
    ChatTemplate,
    TemplateRaisedError,
    load_chat_template,
)
from lpu_runtime.errors import ChatTemplateError, ModelFileError
from lpu_runtime.gguf_file import GGUFFile
from lpu_runtime.tokenizer import ByteTokenizer
from lpu_runtime.tokenizers import load_tokenizer
from tests.shared_models import params_for, require
from tests.unit.tokenizer_data import golden

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]


def test_demo_template_exact_output() -> None:
    template = ChatTemplate(DEMO_CHAT_TEMPLATE, bos_token="<s>", eos_token="</s>")
    expected = "<s><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!\n<|user|>\nBye\n"
    assert template.render(CONVERSATION) == expected + "<|assistant|>\n"
    assert template.render(CONVERSATION, add_generation_prompt=False) == expected


def test_raise_exception_surfaces_the_template_message() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}"
        "{% endif %}"
    )
    with pytest.raises(TemplateRaisedError) as info:
        template.render(CONVERSATION)
    assert isinstance(info.value, ChatTemplateError)
    assert str(info.value) == "System role not supported"


def test_loop_controls_trimmed_blocks_and_variables() -> None:
    source = """{{ bos_token }}
{% for m in messages %}
    {% if m['role'] == 'system' %}{% continue %}{% endif %}
    {% if loop.index > 3 %}{% break %}{% endif %}
[{{ m['role'] }}] {{ m['content'] }}
{% endfor %}
{% if tools is none %}no tools{% endif %}{{ eos_token }}"""
    rendered = ChatTemplate(source, bos_token="<B>", eos_token="<E>").render(CONVERSATION)
    assert rendered == "<B>\n[user] Hi\n[assistant] Hello!\nno tools<E>"


def test_tojson_matches_transformers() -> None:
    tools: list[dict[str, Any]] = [{"name": "größe", "description": "<b> & 'x'", "z": 1, "a": [1, 2]}]
    source = (
        "{{ tools | tojson }}|{{ tools | tojson(indent=2) }}|"
        "{{ tools | tojson(separators=(',', ':'), sort_keys=true) }}|{{ tools | tojson(ensure_ascii=true) }}"
    )
    rendered = ChatTemplate(source).render([], tools=tools)
    assert rendered.split("|") == [
        json.dumps(tools, ensure_ascii=False),
        json.dumps(tools, ensure_ascii=False, indent=2),
        json.dumps(tools, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        json.dumps(tools, ensure_ascii=True),
    ]


def test_strftime_now_uses_the_local_clock() -> None:
    before = datetime.now().strftime("%Y-%m-%d")
    rendered = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}").render([])
    assert rendered in {before, datetime.now().strftime("%Y-%m-%d")}


def test_sandbox_blocks_dunder_attributes_and_mutation() -> None:
    assert ChatTemplate("{{ messages.__class__ }}").render(CONVERSATION) == ""
    for source in (
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ raise_exception.__globals__['__builtins__'] }}",
        "{{ messages.append('x') }}",
    ):
        with pytest.raises(ChatTemplateError, match="unsafe"):
            ChatTemplate(source).render(CONVERSATION)


def test_syntax_errors_fail_at_construction_with_one_line() -> None:
    with pytest.raises(ChatTemplateError, match=r"syntax error on line 2: ") as info:
        ChatTemplate("ok\n{% for %}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("source", "cause"),
    [("{{ missing.attr }}", "UndefinedError"), ("{{ messages[0]['content'] + 1 }}", "TypeError")],
)
def test_runtime_failures_become_chat_template_errors(source: str, cause: str) -> None:
    with pytest.raises(ChatTemplateError, match=f"^chat template failed: {cause}: ") as info:
        ChatTemplate(source).render(CONVERSATION)
    assert not isinstance(info.value, TemplateRaisedError)
    assert "\n" not in str(info.value)


SYSTEM_USER = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello"},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# Command R+ reads Cohere's own tool schema (name, description, parameter_definitions), not OpenAI's.
COHERE_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameter_definitions": {"city": {"description": "The city", "type": "str", "required": True}},
}
TOOLS_FOR = {"CohereForAI-c4ai-command-r-plus-tool_use.jinja": [COHERE_TOOL]}
# How each of the 17 real templates treats a system + user conversation, with and without tools:
#   "tools": renders both ways and writes the tool into the prompt when given one;
#   "no tools": renders both ways, ignoring tools (the model has no tool format);
#   "needs tools": a tool_use template (its model ships it beside a default one), which iterates `tools`
#                  unconditionally: without tools it fails, with them it renders them;
#   "needs functions": reads its own `functions` (a JSON string) and `datetime` variables, which a caller
#                      passes through as extra variables;
#   "refuses system": rejects the system role through raise_exception, a deliberate outcome.
BEHAVIOUR = {
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja": "needs tools",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja": "tools",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": "needs tools",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": "needs tools",
    "Qwen-Qwen2.5-7B-Instruct.jinja": "tools",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja": "no tools",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": "no tools",
    "fireworks-ai-llama-3-firefunction-v2.jinja": "needs functions",
    "google-gemma-2-2b-it.jinja": "refuses system",
    "llama-cpp-deepseek-r1.jinja": "tools",
    "meetkai-functionary-medium-v3.1.jinja": "tools",
    "meetkai-functionary-medium-v3.2.jinja": "tools",
    "meta-llama-Llama-3.1-8B-Instruct.jinja": "tools",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "tools",
    "meta-llama-Llama-3.3-70B-Instruct.jinja": "tools",
    "microsoft-Phi-3.5-mini-instruct.jinja": "no tools",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": "tools",
}


def test_every_real_template_is_classified() -> None:
    folder = require("chat-templates")
    assert {p.name for p in folder.glob("*.jinja")} == set(BEHAVIOUR)


@pytest.mark.parametrize("path", params_for("chat-templates", "*.jinja"))
def test_real_template_renders_a_system_turn_and_tools(path: Path | None) -> None:
    if path is None:
        path = require("chat-templates")  # absent: skips, or fails under CI
    template = ChatTemplate(path.read_text(), bos_token="<s>", eos_token="</s>")
    behaviour = BEHAVIOUR[path.name]
    if behaviour == "refuses system":
        with pytest.raises(TemplateRaisedError, match="System role not supported"):
            template.render(SYSTEM_USER)
        assert "Hello" in template.render(SYSTEM_USER[1:])
        return
    if behaviour == "needs functions":
        with pytest.raises(ChatTemplateError, match="'functions' is undefined"):
            template.render(SYSTEM_USER)
        rendered = template.render(
            SYSTEM_USER, functions=json.dumps([WEATHER_TOOL["function"]]), datetime="2024-06-01"
        )
        assert "You are a helpful assistant." in rendered and "get_weather" in rendered
        return
    if behaviour == "needs tools":
        with pytest.raises(ChatTemplateError, match="'NoneType' object is not iterable"):
            template.render(SYSTEM_USER)
    else:
        plain = template.render(SYSTEM_USER)
        assert "Hello" in plain and "You are a helpful assistant." in plain
    with_tools = template.render(SYSTEM_USER, tools=TOOLS_FOR.get(path.name, [WEATHER_TOOL]))
    assert "Hello" in with_tools
    assert ("get_weather" in with_tools) == (behaviour != "no tools")


def test_stories260k_template_renders_the_golden_prompt() -> None:
    chat = golden()["chat_template_example"]
    hf = require("stories260K-hf")
    tokenizer = load_tokenizer(hf)
    for source in (hf, GGUFFile(require("stories260K-gguf/stories260K-f16.gguf"))):
        template = load_chat_template(source, tokenizer)
        assert template is not None
        rendered = template.render(chat["messages"], add_generation_prompt=chat["add_generation_prompt"])
        assert rendered == chat["rendered"]
        assert tokenizer.encode(rendered, add_bos=False) == chat["prompt_ids_add_special_tokens_false"]


def test_a_model_without_a_template_has_none(tmp_path: Path) -> None:
    tokenizer = ByteTokenizer()
    assert load_chat_template(GGUFFile(require("stories260K-gguf/stories260K.gguf")), tokenizer) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    assert load_chat_template(tmp_path, tokenizer) is None


def test_template_file_overrides_and_bos_eos_come_from_the_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "my.jinja"
    path.write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}")
    template = load_chat_template(path, ByteTokenizer())
    assert template is not None
    assert template.render(SYSTEM_USER) == "<s>You are a helpful assistant.</s>Hello</s>"
    # chat_template.jinja beside tokenizer_config.json wins, as in transformers.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "config"}))
    (tmp_path / "chat_template.jinja").write_text("jinja file")
    found = load_chat_template(tmp_path, ByteTokenizer())
    assert found is not None and found.render([]) == "jinja file"


def test_named_templates_pick_default_or_tool_use(tmp_path: Path) -> None:
    config = {
        "chat_template": [
            {"name": "tool_use", "template": "tools: {{ tools | map(attribute='function') | tojson }}"},
            {"name": "default", "template": "plain"},
        ]
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    template = load_chat_template(tmp_path / "tokenizer_config.json", ByteTokenizer())
    assert template is not None and template.names == ("tool_use", "default")
    assert template.render(SYSTEM_USER) == "plain"
    # map() yields a generator; tojson serialises what it yields.
    assert template.render(SYSTEM_USER, tools=[WEATHER_TOOL]) == "tools: " + json.dumps(
        [WEATHER_TOOL["function"]], ensure_ascii=False
    )
    with pytest.raises(ChatTemplateError, match="named rag but none named 'default'"):
        ChatTemplate({"rag": "x"})


def test_extra_variables_pass_through_but_cannot_override() -> None:
    template = ChatTemplate(
        "{{ documents | length }} {{ messages | length }} {{ bos_token }}", bos_token="<s>"
    )
    assert template.render(SYSTEM_USER, documents=[{"text": "a"}, {"text": "b"}]) == "2 2 <s>"
    # The fixed variables win over an extra one of the same name.
    assert template.render(SYSTEM_USER, documents=[], bos_token="<evil>") == "0 2 <s>"


def test_bad_template_files_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for %}")
    with pytest.raises(ModelFileError, match=r"broken\.jinja: chat template syntax error on line 1"):
        load_chat_template(broken, ByteTokenizer())
    with pytest.raises(ModelFileError, match=r"absent\.jinja: cannot be read as a chat template"):
        load_chat_template(tmp_path / "absent.jinja", ByteTokenizer())
    bad_json = tmp_path / "tokenizer_config.json"
    bad_json.write_text(json.dumps({"chat_template": 7}))
    with pytest.raises(ModelFileError, match="neither a string nor a list of named templates"):
        load_chat_template(tmp_path, ByteTokenizer())
