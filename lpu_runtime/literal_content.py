"""Special-token strings typed into a chat message stay text.

A chat template writes the model's control tokens (`<|im_start|>`, `</s>`) around the messages, and the rendered
prompt is tokenized with special-token strings parsed, so `</s>` typed in a message would otherwise become the
real end-of-sequence token: a prompt injection that transformers' and llama.cpp's chat paths do not allow.
Before rendering, each special-token string inside a message's content is swapped for a private-use character;
after rendering, each such character is swapped back and its span marked, and the tokenizer reads marked spans
as plain text. A conversation without such strings renders exactly as before, so its prompt is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from typing import Any

from lpu_runtime.chat_template import ChatTemplate
from lpu_runtime.tokenizer import Span

_PRIVATE_USE = range(0xE000, 0xF900)  # the Basic Multilingual Plane's private-use area


def render_with_literal_content(
    template: ChatTemplate, messages: list[dict[str, Any]], specials: Collection[str], **variables: Any
) -> tuple[str, list[Span]]:
    """The rendered prompt and the spans in it where message content spelled a special-token string."""
    if not specials:
        return template.render(messages, **variables), []
    pattern = re.compile("|".join(map(re.escape, sorted(specials, key=len, reverse=True))))
    taken = {ch for m in messages if isinstance(m.get("content"), str) for ch in m["content"]}
    free: Iterator[str] = (chr(c) for c in _PRIVATE_USE if chr(c) not in taken)
    marks: dict[str, str] = {}  # special string -> its stand-in

    def stand_in(match: re.Match[str]) -> str:
        return marks.setdefault(match.group(), next(free))

    marked = [
        {**m, "content": pattern.sub(stand_in, m["content"])} if isinstance(m.get("content"), str) else m
        for m in messages
    ]
    rendered = template.render(marked, **variables)
    if not marks:
        return rendered, []
    literal = {mark: text for text, mark in marks.items()}
    pieces: list[str] = []
    spans: list[Span] = []
    at = 0
    for piece in re.split(f"([{''.join(literal)}])", rendered):
        if piece in literal:
            piece = literal[piece]
            spans.append((at, at + len(piece)))
        pieces.append(piece)
        at += len(piece)
    return "".join(pieces), spans
