"""One entry point from a model's files to its Tokenizer."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lpu_runtime.errors import ModelFileError
from lpu_runtime.gguf_file import GGUFFile
from lpu_runtime.tokenizer import Tokenizer
from lpu_runtime.tokenizers import bpe, spm
from lpu_runtime.tokenizers.hf import load_hf_tokenizer
from lpu_runtime.tokenizers.llama2c import load_llama2c_tokenizer
from lpu_runtime.tokenizers.vocab import END_OF_TURN_TEXTS, TokenType, gguf_token_id

GGUF_TOKENIZER_MODELS = ("llama", "gpt2")


def gguf_eos_ids(metadata: Mapping[str, Any]) -> frozenset[int]:
    """`tokenizer.ggml.eos_token_id`, the end-of-turn/-message ids, and (as llama.cpp does) every control or
    user-defined token spelled like a known end of turn."""
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    ids = {
        value
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if (value := gguf_token_id(metadata, key, len(tokens))) is not None
    }
    types = metadata.get("tokenizer.ggml.token_type") or []
    for i, kind in enumerate(types):
        if kind in (TokenType.CONTROL, TokenType.USER_DEFINED) and tokens[i] in END_OF_TURN_TEXTS:
            ids.add(i)
    return frozenset(ids)


def tokenizer_from_gguf(gguf: GGUFFile) -> Tokenizer:
    metadata = gguf.metadata
    if not isinstance(metadata.get("tokenizer.ggml.tokens"), list):
        raise ModelFileError(
            gguf.path, "has no tokenizer (no tokenizer.ggml.tokens): pass one with --tokenizer"
        )
    model = metadata.get("tokenizer.ggml.model")
    if model == "llama":
        return spm.from_gguf_metadata(metadata, gguf_eos_ids(metadata))
    if model == "gpt2":
        pre = metadata.get("tokenizer.ggml.pre") or "default"
        if pre not in bpe.PRE_TOKENIZERS:
            raise ModelFileError(
                gguf.path,
                f"uses the BPE pre-tokenizer {pre!r}, which is not supported "
                f"(supported: {', '.join(sorted(bpe.PRE_TOKENIZERS))})",
            )
        return bpe.from_gguf_metadata(metadata, gguf_eos_ids(metadata))
    raise ModelFileError(
        gguf.path,
        f"has a {model!r} tokenizer, which is not supported (supported: {', '.join(GGUF_TOKENIZER_MODELS)})",
    )


def load_tokenizer(source: str | Path | GGUFFile) -> Tokenizer:
    """The Tokenizer of a model, from any of:

    - an open `GGUFFile` or a `.gguf` path: the vocabulary in its metadata (SentencePiece or BPE);
    - a HuggingFace directory or its `tokenizer.json`: through the `tokenizers` library, with BOS/EOS and
      add_bos_token from `tokenizer_config.json` and extra EOS ids from `generation_config.json`;
    - a llama2.c `tokenizer.bin` (any other file that is not JSON or GGUF is read as one), or a directory
      holding only a `tokenizer.bin`.

    Raises ModelFileError naming the file when it is missing, malformed or of an unsupported kind.
    """
    if isinstance(source, GGUFFile):
        return tokenizer_from_gguf(source)
    path = Path(source)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.bin"):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        raise ModelFileError(
            path, "has no tokenizer (neither tokenizer.json nor tokenizer.bin): pass one with --tokenizer"
        )
    if not path.is_file():
        raise ModelFileError(path, "no such tokenizer file")
    if path.suffix == ".gguf":
        return tokenizer_from_gguf(GGUFFile(path))
    if path.suffix == ".json":
        return load_hf_tokenizer(path)
    if path.suffix == ".model":
        raise ModelFileError(
            path,
            "is a SentencePiece .model, which is not read directly: pass the tokenizer.json or tokenizer.bin",
        )
    return load_llama2c_tokenizer(path)
