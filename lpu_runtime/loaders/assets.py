"""The files around the weights: tokenizer, chat template and end-of-sequence ids, found per format.

- HuggingFace directory: its tokenizer.json and chat template (tokenizers.load_tokenizer,
  chat_template.load_chat_template), EOS ids from config.json on top of the tokenizer's.
- GGUF: the vocabulary and template in its metadata.
- llama2.c: tokenizer.bin (or tok<vocab>.bin, or the only tok*.bin) beside the checkpoint; no template.
`--tokenizer PATH` replaces the model's own tokenizer, `--chat-template FILE` its template.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lpu_runtime.chat_template import ChatTemplate, load_chat_template
from lpu_runtime.errors import ModelFileError
from lpu_runtime.gguf_file import GGUFFile
from lpu_runtime.tokenizer import Span, Tokenizer
from lpu_runtime.tokenizers import load_tokenizer


class ServedTokenizer:
    """A model's tokenizer as the engine uses it: the model's vocabulary size (checkpoints often pad their
    embedding rows past the tokenizer's last id; those ids decode to nothing) and every end-of-sequence id
    the model's generation config names."""

    def __init__(self, inner: Tokenizer, vocab_size: int, extra_eos_ids: Iterable[int] = ()) -> None:
        self.inner = inner
        self.vocab_size = vocab_size
        self.eos_ids = inner.eos_ids | frozenset(i for i in extra_eos_ids if 0 <= i < vocab_size)

    @property
    def bos_id(self) -> int | None:
        return self.inner.bos_id

    @property
    def bos_token(self) -> str:
        return self.inner.bos_token

    @property
    def adds_bos(self) -> bool:
        return self.inner.adds_bos

    @property
    def eos_token(self) -> str:
        return self.inner.eos_token

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return self.inner.special_tokens

    def encode(self, text: str, *, add_bos: bool, plain_spans: Sequence[Span] = ()) -> list[int]:
        return self.inner.encode(text, add_bos=add_bos, plain_spans=plain_spans)

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode([i for i in ids if i < self.inner.vocab_size])

    def token_bytes(self, token_id: int) -> bytes:
        if self.inner.vocab_size <= token_id < self.vocab_size:
            return b""
        return self.inner.token_bytes(token_id)


@dataclass(frozen=True)
class ModelAssets:
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    tokenizer_origin: str  # what /v1/models says the tokenizer came from
    template_origin: str = ""
    extra_eos_ids: frozenset[int] = frozenset()
    tokenizer_path: str = ""  # the file named if its vocabulary does not fit the model

    def with_template_file(self, path: Path) -> ModelAssets:
        template = load_chat_template(path, self.tokenizer)
        return replace(self, chat_template=template, template_origin=str(path))

    def padded_to(self, vocab_size: int) -> ServedTokenizer:
        if self.tokenizer.vocab_size > vocab_size:
            raise ModelFileError(
                self.tokenizer_path or self.tokenizer_origin,
                f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model's vocabulary is {vocab_size}",
            )
        return ServedTokenizer(self.tokenizer, vocab_size, self.extra_eos_ids)


def _config_eos_ids(path: Path) -> frozenset[int]:
    """config.json's eos_token_id (an int or a list), which some models set beyond their tokenizer's."""
    if not path.is_file():
        return frozenset()
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return frozenset()  # config.json itself is validated by the weight loader
    values = value if isinstance(value, list) else [value]
    return frozenset(v for v in values if isinstance(v, int))


def _open(path: Path) -> Tokenizer:
    if not path.exists():
        raise ModelFileError(path, "no such tokenizer file")
    return load_tokenizer(path)


def assets_for_tokenizer(path: Path) -> ModelAssets:
    """A tokenizer file on its own (`--tokenizer` for a synthetic model): no template, no extra EOS ids."""
    return ModelAssets(_open(path), None, str(path), tokenizer_path=str(path))


def assets_for_hf_dir(directory: Path, tokenizer_path: Path | None) -> ModelAssets:
    if tokenizer_path is None and not (directory / "tokenizer.json").is_file():
        raise ModelFileError(
            directory,
            "has no tokenizer.json: add it or pass --tokenizer PATH (tokenizer.json, tokenizer.bin)",
        )
    path = tokenizer_path or directory / "tokenizer.json"
    tokenizer = _open(path)
    template = load_chat_template(directory, tokenizer)
    return ModelAssets(
        tokenizer,
        template,
        str(path),
        template_origin=f"from {directory.name}" if template is not None else "",
        extra_eos_ids=_config_eos_ids(directory / "config.json"),
        tokenizer_path=str(path),
    )


def assets_for_gguf(gguf: GGUFFile, tokenizer_path: Path | None) -> ModelAssets:
    if tokenizer_path is not None:
        tokenizer, origin = _open(tokenizer_path), str(tokenizer_path)
    else:
        tokenizer, origin = load_tokenizer(gguf), f"the GGUF vocabulary of {gguf.path.name}"
    template = load_chat_template(gguf, tokenizer)
    return ModelAssets(
        tokenizer,
        template,
        origin,
        template_origin=f"{gguf.path.name} metadata" if template is not None else "",
        tokenizer_path=str(tokenizer_path or gguf.path),
    )


def assets_for_llama2c(checkpoint: Path, tokenizer_path: Path | None, vocab_size: int) -> ModelAssets:
    """The tokenizer given, else `tokenizer.bin` beside the checkpoint, else `tok<vocab>.bin`, else the only
    `tok*.bin` there."""
    path = tokenizer_path
    if path is None:
        folder = checkpoint.parent
        named = [p for p in (folder / "tokenizer.bin", folder / f"tok{vocab_size}.bin") if p.is_file()]
        others = sorted(folder.glob("tok*.bin"))
        path = named[0] if named else others[0] if len(others) == 1 else None
    if path is None:
        raise ModelFileError(
            checkpoint,
            "has no tokenizer beside it (tokenizer.bin or tok*.bin): pass --tokenizer PATH "
            "(a llama2.c tokenizer.bin, tokenizer.json or .gguf)",
        )
    return assets_for_tokenizer(path)
