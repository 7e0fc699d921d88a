"""Chat templates rendered exactly as HuggingFace transformers renders them.

Model vendors write their templates against transformers' environment, so the same sandbox, whitespace
options, extensions, globals and `tojson` filter are what make their prompts come out byte-identical.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lpu_runtime.errors import ChatTemplateError

# The embedded byte-level demo model's format: the role markers are plain text, so any byte tokenizer
# can encode them.
DEMO_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class TemplateRaisedError(ChatTemplateError):
    """The template itself rejected the conversation through raise_exception() (for example a system role
    the model does not support), as opposed to failing on a bug or unexpected input."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRaisedError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes <, >, & and ' and forces ASCII, which would change tool schemas
    # inside prompts; transformers replaces it with plain json.dumps, and so must we.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class ChatTemplate:
    """A compiled chat template; compiling it reports syntax errors up front."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"chat template syntax error on line {exc.lineno}: {_one_line(exc)}"
            ) from exc
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                tools=tools,
            )
        except TemplateRaisedError:
            raise
        except Exception as exc:
            # The template is code from the model vendor run on the client's messages: whatever it trips
            # over (a jinja error, a sandbox refusal, None + str), the request cannot be rendered.
            raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {_one_line(exc)}") from exc
