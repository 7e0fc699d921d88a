"""Shared readers of the tokenizer test data (llama.cpp's vocab vectors, the stories260K golden file)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from lpu_runtime.tokenizer import Tokenizer
from lpu_runtime.tokenizers import load_tokenizer
from tests.shared_models import require

# llama.cpp's test-tokenizer-0 format: inputs split on this separator, one line of ids per input.
SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_vectors(gguf: Path) -> list[tuple[str, list[int]]]:
    """(text, expected ids) pairs of a ggml-vocab-*.gguf; the ids are tokenized without BOS."""
    texts = Path(f"{gguf}.inp").read_text(encoding="utf-8").split(SEPARATOR)
    lines = Path(f"{gguf}.out").read_text(encoding="utf-8").split("\n")
    assert len(lines) == len(texts), f"{gguf}.out has {len(lines)} lines for {len(texts)} inputs"
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines, strict=True)]


def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(require("golden/stories260K.json").read_text(encoding="utf-8"))
    return data


@cache
def _load(path: Path) -> Tokenizer:
    return load_tokenizer(path)


def tokenizer_for(relative: str) -> Tokenizer:
    """The tokenizer of a test-data path, loaded once per session (the 100k vocabularies take ~0.5 s)."""
    return _load(require(relative))
