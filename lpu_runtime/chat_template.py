"""Chat templates rendered exactly as HuggingFace transformers renders them.

Model vendors write their templates against transformers' environment, so the same sandbox, whitespace
options, extensions, globals and `tojson` filter are what make their prompts come out byte-identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lpu_runtime.errors import ChatTemplateError, ModelFileError
from lpu_runtime.gguf_file import GGUFFile
from lpu_runtime.tokenizer import Tokenizer

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
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=separators,
        sort_keys=sort_keys,
        default=_json_sequence,
    )


def _json_sequence(value: Any) -> list[Any]:
    # Filters such as map() hand tojson a generator (`tools | map(attribute='function') | tojson`):
    # serialise what it yields, as a list.
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


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
    """A compiled chat template; compiling it reports syntax errors up front.

    `source` is one template or, as tokenizer_config.json may hold, several by name: "tool_use" renders
    requests that carry tools when the model has one, "default" everything else (transformers' choice).
    """

    def __init__(self, source: str | Mapping[str, str], *, bos_token: str = "", eos_token: str = "") -> None:
        named = {"default": source} if isinstance(source, str) else dict(source)
        if "default" not in named:
            raise ChatTemplateError(
                f"the model has chat templates named {', '.join(sorted(named))} but none named 'default'"
            )
        env = _environment()
        self._templates: dict[str, jinja2.Template] = {}
        for name, text in named.items():
            try:
                self._templates[name] = env.from_string(text)
            except jinja2.TemplateSyntaxError as exc:
                where = "" if name == "default" else f" {name!r}"
                raise ChatTemplateError(
                    f"chat template{where} syntax error on line {exc.lineno}: {_one_line(exc)}"
                ) from exc
        self._bos_token = bos_token
        self._eos_token = eos_token
        self._source = source if isinstance(source, str) else named

    @property
    def source(self) -> str | dict[str, str]:
        """The template text, or the named texts: what `lpu export` writes to tokenizer_config.json."""
        return self._source

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._templates)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """`extra` are further template variables passed through as transformers does (documents for RAG
        templates, a date_string, firefunction's functions, ...); they cannot override the fixed ones."""
        template = self._templates["tool_use" if tools and "tool_use" in self._templates else "default"]
        try:
            return template.render(
                {
                    **extra,
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "bos_token": self._bos_token,
                    "eos_token": self._eos_token,
                    "tools": tools,
                }
            )
        except TemplateRaisedError:
            raise
        except Exception as exc:
            # The template is code from the model vendor run on the client's messages: whatever it trips
            # over (a jinja error, a sandbox refusal, None + str), the request cannot be rendered.
            raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {_one_line(exc)}") from exc


def _named_templates(value: Any, path: Path) -> str | dict[str, str] | None:
    """tokenizer_config.json's chat_template: a string, or a list of {"name", "template"}."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
        for t in value
    ):
        return {t["name"]: t["template"] for t in value}
    raise ModelFileError(path, "has a chat_template that is neither a string nor a list of named templates")


def _template_in_json(path: Path) -> str | dict[str, str] | None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(path, f"is not a readable JSON file ({_one_line(exc)})") from None
    return _named_templates(config.get("chat_template") if isinstance(config, dict) else None, path)


def _template_in_folder(folder: Path) -> tuple[Path, str | dict[str, str]] | None:
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file, jinja_file.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file() and (source := _template_in_json(path)) is not None:
            return path, source
    return None


def _template_in_gguf(gguf: GGUFFile) -> str | dict[str, str] | None:
    # llama.cpp writes extra named templates as tokenizer.chat_template.<name>.
    prefix = "tokenizer.chat_template."
    named = {
        k[len(prefix) :]: v for k, v in gguf.metadata.items() if k.startswith(prefix) and isinstance(v, str)
    }
    default = gguf.metadata.get("tokenizer.chat_template")
    if isinstance(default, str):
        return {**named, "default": default} if named else default
    return None


def load_chat_template(source: str | Path | GGUFFile, tokenizer: Tokenizer) -> ChatTemplate | None:
    """The chat template of a model, or None when it has none (chat requests then get a clear error).

    `source` is an open GGUFFile (`tokenizer.chat_template` metadata), a HuggingFace directory
    (`chat_template.jinja`, else `chat_template` in chat_template.json or tokenizer_config.json), or a
    template file given with --chat-template (its text; a .json file is read like tokenizer_config.json).
    `bos_token`/`eos_token` come from the tokenizer. A file that is given but cannot be read or compiled
    raises ModelFileError naming it.
    """
    found: tuple[Path, str | dict[str, str]] | None
    if isinstance(source, GGUFFile):
        text = _template_in_gguf(source)
        found = (source.path, text) if text is not None else None
    else:
        path = Path(source)
        if path.is_dir():
            found = _template_in_folder(path)
        elif path.suffix == ".json" and path.is_file():
            source_json = _template_in_json(path)
            if source_json is None:
                raise ModelFileError(path, "has no chat_template")
            found = (path, source_json)
        else:
            try:
                found = (path, path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelFileError(path, f"cannot be read as a chat template ({_one_line(exc)})") from None
    if found is None:
        return None
    where, text_or_named = found
    try:
        return ChatTemplate(text_or_named, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
    except ChatTemplateError as exc:
        raise ModelFileError(where, str(exc)) from None
