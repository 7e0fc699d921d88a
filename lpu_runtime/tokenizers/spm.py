"""SentencePiece (unigram-scored) vocabularies: GGUF `tokenizer.ggml.model == "llama"` and llama2.c tokenizer.bin.

The encoder is llama.cpp's llm_tokenizer_spm, which is also what llama2.c's run.c computes: split the text
into characters, then repeatedly merge the adjacent pair whose concatenation is the highest-scoring
vocabulary piece (the leftmost on ties); characters no piece covers fall back to `<0xNN>` byte tokens.
Spaces are written as U+2581 "▁", and a space is prefixed to the text at the start and after every
special token (SentencePiece's dummy prefix; llama.cpp and HF's legacy Llama tokenizer both do this).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lpu_runtime.tokenizers.merge import merge_pairs
from lpu_runtime.tokenizers.vocab import BYTE_PIECE, TokenType, VocabTokenizer, gguf_token_id

SPACE = "▁"


@dataclass(frozen=True)
class SentencePieceVocab:
    """The vocabulary as the file gave it, which `lpu export` converts to a tokenizer.json."""

    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    unk_id: int | None
    add_space_prefix: bool


class SentencePieceTokenizer(VocabTokenizer):
    def __init__(
        self,
        *,
        tokens: Sequence[str],
        scores: Sequence[float],
        types: Sequence[int],
        bos_id: int | None,
        eos_ids: frozenset[int],
        unk_id: int | None,
        adds_bos: bool,
        add_space_prefix: bool,
        eos_id: int | None = None,
    ) -> None:
        self._ids: dict[str, int] = {}
        self._scores = [float(s) for s in scores]
        self._byte_ids: dict[int, int] = {}
        pieces: list[bytes] = []
        specials: dict[str, int] = {}
        for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
            self._ids.setdefault(text, i)
            byte = BYTE_PIECE.fullmatch(text) if kind == TokenType.BYTE else None
            if byte is not None:
                self._byte_ids[int(byte.group(1), 16)] = i
                pieces.append(bytes((int(byte.group(1), 16),)))
            elif kind in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.UNUSED):
                pieces.append(b"")
                if kind == TokenType.CONTROL:
                    specials[text] = i
            else:
                if kind == TokenType.USER_DEFINED:
                    specials[text] = i
                pieces.append(text.replace(SPACE, " ").encode("utf-8", errors="surrogateescape"))
        self._unk_id = unk_id
        self._add_space_prefix = add_space_prefix
        self.vocab = SentencePieceVocab(
            tuple(tokens), tuple(self._scores), tuple(types), unk_id, add_space_prefix
        )
        super().__init__(
            pieces=pieces,
            specials=specials,
            bos_id=bos_id,
            eos_ids=eos_ids,
            adds_bos=adds_bos,
            strip_leading_space=add_space_prefix,
            eos_id=eos_id,
        )

    def _encode_fragment(self, text: str, *, after_special: bool) -> list[int]:
        if self._add_space_prefix and after_special:
            text = " " + text
        ids, scores = self._ids, self._scores

        def priority(left: str, right: str) -> float | None:
            token = ids.get(left + right)
            return None if token is None else -scores[token]  # the highest score merges first

        out: list[int] = []
        for piece in merge_pairs(list(text.replace(" ", SPACE)), priority):
            token = ids.get(piece)
            if token is not None:
                out.append(token)
                continue
            # Only single characters can be missing (every merge makes a piece): their UTF-8 bytes.
            for byte in piece.encode("utf-8"):
                fallback = self._byte_ids.get(byte, self._unk_id)
                if fallback is not None:
                    out.append(fallback)
        return out


def from_gguf_metadata(metadata: Mapping[str, object], eos_ids: frozenset[int]) -> SentencePieceTokenizer:
    tokens = metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list)
    scores = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = metadata.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)
    assert isinstance(scores, list) and isinstance(types, list)
    return SentencePieceTokenizer(
        tokens=tokens,
        scores=scores,
        types=types,
        bos_id=gguf_token_id(metadata, "bos_token_id", len(tokens), default=1),
        eos_ids=eos_ids,
        eos_id=gguf_token_id(metadata, "eos_token_id", len(tokens)),
        unk_id=gguf_token_id(metadata, "unknown_token_id", len(tokens), default=0),
        adds_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", True)),
        add_space_prefix=bool(metadata.get("tokenizer.ggml.add_space_prefix", True)),
    )
