"""Our vocabularies as HuggingFace `tokenizer.json`, built with the `tokenizers` library, for `lpu export`.

Each conversion reproduces the ids our own adapter (and llama.cpp) computes, which the tests check against
llama.cpp's vocabulary vectors through the exported file:

- GGUF BPE (`gpt2`): the BPE model with the file's merges, the pre-tokenizer's expressions as `Split`
  steps that keep both matches and gaps (llama.cpp's splitting), then GPT-2's byte-level alphabet.
- SentencePiece (GGUF `llama`, llama2.c `tokenizer.bin`): what transformers' LlamaConverter writes, a BPE
  model with byte fallback whose merges are every split of every piece, ranked by the merged piece's
  score (llama.cpp merges the highest-scoring pair first); spaces become "▁", with the dummy prefix
  prepended to every run of text between special tokens when the vocabulary asks for it.
- The demo model's bytes: one token per byte in the byte-level alphabet, no merges.

Control tokens become special added tokens (never produced from text by the BPE, skipped in decoding);
user-defined ones become plain added tokens, as llama.cpp and transformers both treat them.
"""

from __future__ import annotations

from collections.abc import Sequence

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

from lpu_runtime.tokenizer import ByteTokenizer, Tokenizer
from lpu_runtime.tokenizers.bpe import PRE_TOKENIZERS, BPETokenizer, bytes_to_unicode
from lpu_runtime.tokenizers.spm import SPACE, SentencePieceTokenizer, SentencePieceVocab
from lpu_runtime.tokenizers.vocab import TokenType


def to_tokenizer_json(tokenizer: Tokenizer) -> tokenizers.Tokenizer:
    """The `tokenizers` equivalent of one of our own vocabularies (a tokenizer.json already is one)."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        converted = _sentencepiece(tokenizer.vocab)
        _add_tokens(converted, tokenizer.vocab.tokens, tokenizer.vocab.types)
    elif isinstance(tokenizer, BPETokenizer):
        converted = _byte_level_bpe(tokenizer)
        _add_tokens(converted, tokenizer.vocab.tokens, tokenizer.vocab.types)
    elif isinstance(tokenizer, ByteTokenizer):
        converted = _bytes()
    else:
        raise TypeError(f"{type(tokenizer).__name__} has no tokenizer.json conversion")
    if tokenizer.adds_bos and tokenizer.bos_id is not None:
        bos = tokenizer.bos_token
        converted.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tokenizer.bos_id)],
        )
    return converted


def _vocab(tokens: Sequence[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for i, text in enumerate(tokens):
        ids.setdefault(text, i)  # a duplicated piece keeps its first id, as our adapters look it up
    return ids


def _add_tokens(converted: tokenizers.Tokenizer, tokens: Sequence[str], types: Sequence[int]) -> None:
    kinds = list(zip(tokens, types, strict=True))
    special = (TokenType.CONTROL, TokenType.UNKNOWN)
    converted.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in kinds if k in special]
    )
    converted.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, k in kinds if k == TokenType.USER_DEFINED]
    )


def _sentencepiece(vocab: SentencePieceVocab) -> tokenizers.Tokenizer:
    ids = _vocab(vocab.tokens)
    merges: list[tuple[float, int, int, str, str]] = []
    for piece, token in ids.items():
        if vocab.types[token] != TokenType.NORMAL:
            continue  # bytes and specials are never the result of a merge
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                merges.append((-vocab.scores[token], ids[left], ids[right], left, right))
    merges.sort()  # highest score first; ties by the parts' ids, as transformers' extractor orders them
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    converted = tokenizers.Tokenizer(
        models.BPE(
            ids,
            [(left, right) for *_, left, right in merges],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    spaces = normalizers.Replace(" ", SPACE)
    converted.normalizer = (
        normalizers.Sequence([normalizers.Prepend(SPACE), spaces]) if vocab.add_space_prefix else spaces
    )
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if vocab.add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))  # the dummy prefix, at the start of a text
    converted.decoder = decoders.Sequence(steps)
    return converted


def _byte_level_bpe(tokenizer: BPETokenizer) -> tokenizers.Tokenizer:
    vocab = tokenizer.vocab
    patterns, ignore_merges = PRE_TOKENIZERS[vocab.pre]
    pairs = [tuple(merge.split(" ", 1)) for merge in vocab.merges]
    converted = tokenizers.Tokenizer(
        models.BPE(
            _vocab(vocab.tokens), [(left, right) for left, right in pairs], ignore_merges=ignore_merges
        )
    )
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in patterns]
    converted.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    converted.decoder = decoders.ByteLevel()
    return converted


def _bytes() -> tokenizers.Tokenizer:
    alphabet = bytes_to_unicode()
    converted = tokenizers.Tokenizer(models.BPE({alphabet[b]: b for b in range(256)}, []))
    converted.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    converted.decoder = decoders.ByteLevel()
    converted.add_special_tokens(
        [
            AddedToken("<s>", special=True, normalized=False),
            AddedToken("</s>", special=True, normalized=False),
            # The demo vocabulary's filler; as an added token, text that spells "<pad>" becomes it.
            AddedToken("<pad>", special=True, normalized=False),
        ]
    )
    return converted
