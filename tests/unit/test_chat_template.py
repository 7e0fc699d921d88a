import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lpu_runtime.chat_template import DEMO_CHAT_TEMPLATE, ChatTemplate, TemplateRaisedError
from lpu_runtime.errors import ChatTemplateError
from tests.shared_models import params_for, require

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


TEMPLATE_DIR = Path(__file__).resolve().parents[3] / "shared" / "models" / "chat-templates"
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
# Templates that cannot render a system + user turn through render()'s variables, and the exact reason.
EXPECTED_FAILURES: dict[str, tuple[type[ChatTemplateError], str]] = {
    # Rejects the system role on purpose.
    "google-gemma-2-2b-it.jinja": (TemplateRaisedError, "System role not supported"),
    # Reads its own `functions` and `datetime` variables, which only a caller of transformers could pass.
    "fireworks-ai-llama-3-firefunction-v2.jinja": (ChatTemplateError, "'functions' is undefined"),
    # Wants Cohere's tool schema (name, description, parameter_definitions), not OpenAI's.
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja": (ChatTemplateError, "has no attribute 'description'"),
}


@pytest.mark.parametrize("path", params_for("chat-templates", "*.jinja"))
def test_real_template_renders_a_system_and_user_turn(path: Path | None) -> None:
    if path is None:
        path = require("chat-templates")  # absent: skips, or fails under CI
    template = ChatTemplate(path.read_text(), bos_token="<s>", eos_token="</s>")

    def render() -> str:
        try:
            return template.render(SYSTEM_USER)
        except TemplateRaisedError:
            raise
        except ChatTemplateError:
            # Tool-use templates iterate `tools` unconditionally.
            return template.render(SYSTEM_USER, tools=[WEATHER_TOOL])

    expected = EXPECTED_FAILURES.get(path.name)
    if expected is None:
        assert "Hello" in render()
        return
    error_type, fragment = expected
    with pytest.raises(ChatTemplateError) as info:
        render()
    assert type(info.value) is error_type
    assert fragment in str(info.value)
