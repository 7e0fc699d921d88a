"""Tool calling: which format the served model's chat template speaks, rendering tools and earlier calls into
the prompt, parsing calls back out of the output (whole or streamed), and the grammars that force them."""

from __future__ import annotations

from server.tools.formats import Function, ToolFormat
from server.tools.hermes import Hermes
from server.tools.json_calls import GENERIC_JSON, LLAMA3_JSON, MISTRAL

FORMATS: dict[str, ToolFormat] = {f.name: f for f in (Hermes(), LLAMA3_JSON, MISTRAL, GENERIC_JSON)}


def template_takes_tools(template: str | None) -> bool:
    return template is not None and "tools" in template


def template_is_chatml(template: str | None) -> bool:
    """Whether the template writes ChatML turns (`<|im_start|>role`), which take any role's name."""
    return template is not None and "<|im_start|>" in template


def detect_format(template: str | None) -> ToolFormat:
    """The format a chat template teaches its model. A template that takes no tools gets the Hermes format:
    it is what the server writes into such a prompt (tools/hermes.py)."""
    if not template_takes_tools(template):
        return FORMATS["hermes"]
    assert template is not None
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<tool_call>" in template:
        return FORMATS["hermes"]
    if "ipython" in template and "parameters" in template:
        return LLAMA3_JSON
    return GENERIC_JSON


__all__ = ["FORMATS", "Function", "ToolFormat", "detect_format", "template_is_chatml", "template_takes_tools"]
