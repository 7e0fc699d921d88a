"""What every vocabulary we tokenize ourselves shares: special-token splitting, BOS/EOS, byte-level decoding.

Subclasses only turn a run of ordinary text into ids (`_encode_fragment`); everything the Tokenizer
protocol promises about special tokens, decoding and streaming lives here once.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping, Sequence

from lpu_runtime.tokenizer import Span, split_specials


class TokenType(enum.IntEnum):
    """llama.cpp's token types, as GGUF `tokenizer.ggml.token_type` stores them."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")

# Token texts llama.cpp also treats as end-of-generation when the vocabulary has them as control or
# user-defined tokens: chat models end a turn with these, not with their EOS.
END_OF_TURN_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<EOT>",
        "_<EOT>",
        "<｜end▁of▁sentence｜>",
    }
)


def gguf_token_id(
    metadata: Mapping[str, object], key: str, n_tokens: int, default: int | None = None
) -> int | None:
    """`tokenizer.ggml.<key>` when it names a token of the vocabulary (files write -1 / 2**32-1 for none)."""
    value = metadata.get(f"tokenizer.ggml.{key}", default)
    return value if isinstance(value, int) and 0 <= value < n_tokens else None


class VocabTokenizer:
    """A vocabulary held as one byte string per id, with the special tokens that text may spell.

    `token_bytes` is the contract streaming relies on: the bytes of a sequence are the concatenation of
    its tokens' bytes, special tokens contribute nothing. `decode` is that concatenation as UTF-8, minus
    the one leading space a SentencePiece vocabulary's dummy prefix put there (`strip_leading_space`).
    """

    def __init__(
        self,
        *,
        pieces: Sequence[bytes],
        specials: Mapping[str, int],
        bos_id: int | None,
        eos_ids: frozenset[int],
        adds_bos: bool,
        strip_leading_space: bool,
        eos_id: int | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        """`eos_id` is the EOS a template writes as eos_token (default: the lowest of `eos_ids`);
        `bos_token`/`eos_token` override the strings, which otherwise are those special tokens' texts."""
        self._pieces = list(pieces)
        self._specials = dict(specials)
        self._bos_id = bos_id
        self._eos_ids = eos_ids
        self._adds_bos = adds_bos and bos_id is not None
        self._strip_leading_space = strip_leading_space
        names = {i: s for s, i in self._specials.items()}
        if eos_id is None and eos_ids:
            eos_id = min(eos_ids)
        self._bos_token = (
            bos_token if bos_token is not None else names.get(bos_id, "") if bos_id is not None else ""
        )
        self._eos_token = (
            eos_token if eos_token is not None else names.get(eos_id, "") if eos_id is not None else ""
        )
        # Longest first, so that "<|end|>" never shadows "<|endoftext|>" at the same position.
        ordered = sorted(self._specials, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, ordered)) + ")") if ordered else None

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_ids(self) -> frozenset[int]:
        return self._eos_ids

    @property
    def bos_token(self) -> str:
        return self._bos_token

    @property
    def eos_token(self) -> str:
        return self._eos_token

    @property
    def adds_bos(self) -> bool:
        return self._adds_bos

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return self._specials

    def special_id(self, text: str) -> int | None:
        return self._specials.get(text)

    def _fragments(self, text: str, plain_spans: Sequence[Span] = ()) -> Iterator[tuple[str, int | None]]:
        return split_specials(text, self._special_re, self._specials, plain_spans)

    def _encode_fragment(self, text: str, *, after_special: bool) -> list[int]:
        """Ids of ordinary text; `after_special` is true at the start and right after a special token."""
        raise NotImplementedError

    def encode(self, text: str, *, add_bos: bool, plain_spans: Sequence[Span] = ()) -> list[int]:
        ids = [self._bos_id] if add_bos and self._bos_id is not None else []
        after_special = True
        for part, special in self._fragments(text, plain_spans):
            if special is not None:
                ids.append(special)
                after_special = True
            else:
                ids.extend(self._encode_fragment(part, after_special=after_special))
                after_special = False
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < len(self._pieces):
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {len(self._pieces)})")
        return self._pieces[token_id]

    def decode(self, ids: Sequence[int]) -> str:
        text = b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        if self._strip_leading_space and text.startswith(" "):
            return text[1:]
        return text
