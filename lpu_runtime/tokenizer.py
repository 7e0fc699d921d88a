"""Tokenizers and streaming detokenisation.

Every vocabulary (the byte-level demo one, SentencePiece or BPE from tokenizer.json, GGUF, llama2.c
tokenizer.bin) reduces each token to the raw bytes it contributes to the output. Streaming works on those
bytes, so a character split across tokens (byte-fallback pieces, byte-level BPE) is never emitted half-made.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar, Protocol

Span = tuple[int, int]  # [start, end) character offsets into a text


class Tokenizer(Protocol):
    """What the engine and server need from a vocabulary."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None:
        """None when the vocabulary has no BOS token (some BPE models)."""
        ...

    @property
    def eos_ids(self) -> frozenset[int]:
        """Every id that ends generation (chat models often have several, e.g. <|eot_id|> and </s>)."""
        ...

    @property
    def bos_token(self) -> str:
        """The BOS string chat templates insert; "" when there is none."""
        ...

    @property
    def eos_token(self) -> str: ...

    @property
    def adds_bos(self) -> bool:
        """Whether the model's prompts start with BOS (HF add_bos_token, GGUF tokenizer.ggml.add_bos_token)."""
        ...

    @property
    def special_tokens(self) -> Mapping[str, int]:
        """The special-token strings text may spell, and their ids."""
        ...

    def encode(self, text: str, *, add_bos: bool, plain_spans: Sequence[Span] = ()) -> list[int]:
        """Special-token strings inside `text` become their ids, as HF added tokens do, except inside
        `plain_spans`, where they are ordinary text (what a user typed into a message)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids` without special tokens; invalid UTF-8 becomes U+FFFD."""
        ...

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes `token_id` adds to the output; b"" for special tokens."""
        ...


class ByteTokenizer:
    """The demo vocabulary: ids 0..255 are UTF-8 bytes, then <s>, </s> and <pad>."""

    BOS_ID = 256
    EOS_ID = 257
    PAD_ID = 258
    # <pad> is deliberately not special: it is an internal filler, and text that spells it is ordinary bytes.
    special_tokens: ClassVar[Mapping[str, int]] = {"<s>": BOS_ID, "</s>": EOS_ID}
    _SPECIAL_RE = re.compile("<s>|</s>")

    vocab_size = 259
    bos_id = BOS_ID
    eos_ids = frozenset({EOS_ID})
    bos_token = "<s>"
    eos_token = "</s>"
    adds_bos = True

    def encode(self, text: str, *, add_bos: bool, plain_spans: Sequence[Span] = ()) -> list[int]:
        ids = [self.BOS_ID] if add_bos else []
        for piece, special in split_specials(text, self._SPECIAL_RE, self.special_tokens, plain_spans):
            if special is not None:
                ids.append(special)
            else:
                ids.extend(piece.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        return bytes((token_id,)) if token_id < 256 else b""


def split_specials(
    text: str, pattern: re.Pattern[str] | None, specials: Mapping[str, int], plain_spans: Sequence[Span] = ()
) -> Iterator[tuple[str, int | None]]:
    """`text` as runs of ordinary text (id None) and special tokens; `pattern` matches the special strings
    (longest first). A match that overlaps a plain span stays part of the ordinary text around it."""
    start = 0  # where the current run of ordinary text began
    for match in pattern.finditer(text) if pattern is not None else ():
        if any(a < match.end() and match.start() < b for a, b in plain_spans):
            continue
        if match.start() > start:
            yield text[start : match.start()], None
        yield match.group(), specials[match.group()]
        start = match.end()
    if start < len(text):
        yield text[start:], None


def encode_prompt(tokenizer: Tokenizer, text: str, plain_spans: Sequence[Span] = ()) -> list[int]:
    """`text` as a prompt: with the BOS the model expects, exactly once, whether or not the text (a rendered
    chat template, say) already spells it. `plain_spans`: see Tokenizer.encode."""
    ids = tokenizer.encode(text, add_bos=False, plain_spans=plain_spans)
    bos = tokenizer.bos_id
    if tokenizer.adds_bos and bos is not None and ids[:1] != [bos]:
        ids.insert(0, bos)
    return ids


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces that are never a broken UTF-8 sequence.

    The incremental UTF-8 codec holds back a valid but incomplete multi-byte prefix and replaces bytes as
    soon as they cannot start or continue a character, so the pieces always join to the bytes of the
    tokens. That is the text the tokens add after whatever preceded them: a SentencePiece token that
    starts with "▁" streams its leading space even as the first token of a completion, where a one-shot
    `decode` of the completion alone would strip it (SentencePiece removes its dummy prefix at the start
    of a text). So the stream of a completion equals decode(prompt + completion)[len(decode(prompt)):].
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
