"""Byte-level BPE vocabularies (GGUF `tokenizer.ggml.model == "gpt2"`), tokenized as llama.cpp's llm_tokenizer_bpe.

Text is first cut by the model's pre-tokenizer: a list of regular expressions applied in turn, each
splitting every piece into its matches and the unmatched gaps between them (llama.cpp keeps the gaps as
pieces too). Each piece's UTF-8 bytes are then written with GPT-2's bytes-to-unicode alphabet and merged
by rank, lowest first, leftmost on ties.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import regex

from lpu_runtime.tokenizers.merge import merge_pairs
from lpu_runtime.tokenizers.vocab import TokenType, VocabTokenizer, gguf_token_id

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_CJK = "[一-龥ࠀ-一가-퟿]+"
# Written with escapes where a character has a canonical equivalent (U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126,
# U+212A): an editor that normalises Unicode would otherwise turn these range ends into other characters.
_DEEPSEEK_LLM_LETTERS = "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"

_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]")
_STARCODER = (r"\p{N}", _GPT2)

# tokenizer.ggml.pre -> (the regexes, in order; whether a piece that is itself a token skips the merges).
# The expressions are llama.cpp's (llama-vocab.cpp), which transcribe each model's tokenizer.json.
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": (_DEFAULT, False),
    "gpt-2": ((_GPT2,), False),
    "phi-2": ((_GPT2,), False),
    "roberta-bpe": ((_GPT2,), False),
    "mpt": ((_GPT2,), False),
    "olmo": ((_GPT2,), False),
    "jais": ((_GPT2,), False),
    "llama3": ((_LLAMA3,), True),
    "llama-v3": ((_LLAMA3,), True),
    "llama-bpe": ((_LLAMA3,), True),
    "falcon3": ((_LLAMA3,), True),
    "dbrx": ((_LLAMA3,), False),
    "smaug-bpe": ((_LLAMA3,), False),
    "chatglm-bpe": ((_LLAMA3,), False),
    "qwen2": ((_QWEN2,), False),
    "deepseek-r1-qwen": ((_QWEN2,), False),
    "stablelm2": ((_QWEN2,), False),
    "deepseek-llm": (
        ("[\r\n]", _DEEPSEEK_LLM_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", _CJK, r"\p{N}+"),
        False,
    ),
    "deepseek-coder": (("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"), False),
    "falcon": ((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"), False),
    "starcoder": (_STARCODER, False),
    "refact": (_STARCODER, False),
    "command-r": (_STARCODER, False),
    "smollm": (_STARCODER, False),
    "codeshell": (_STARCODER, False),
    "exaone": (_STARCODER, False),
    "minerva-7b": (_STARCODER, False),
    "poro-chat": ((_BLOOM,), False),
    "bloom": ((_BLOOM,), False),
    "gpt3-finnish": ((_BLOOM,), False),
    "viking": ((_BLOOM, r"\p{N}"), False),
}


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (space is "Ġ", newline "Ċ")."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def byte_level_bytes(piece: str) -> bytes | None:
    """The bytes a byte-level BPE piece stands for; None if it holds a character outside the alphabet."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in piece)
    except KeyError:
        return None


def split_pieces(text: str, patterns: Sequence[regex.Pattern[str]]) -> list[str]:
    pieces = [text]
    for pattern in patterns:
        out: list[str] = []
        for piece in pieces:
            pos = 0
            for match in pattern.finditer(piece):
                start, end = match.span()
                if start > pos:
                    out.append(piece[pos:start])
                if end > start:
                    out.append(piece[start:end])
                pos = end
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


@dataclass(frozen=True)
class BPEVocab:
    """The vocabulary as the file gave it, which `lpu export` converts to a tokenizer.json."""

    tokens: tuple[str, ...]
    types: tuple[int, ...]
    merges: tuple[str, ...]  # "left right", by rank
    pre: str  # the pre-tokenizer's name, a key of PRE_TOKENIZERS


class BPETokenizer(VocabTokenizer):
    def __init__(
        self,
        *,
        tokens: Sequence[str],
        types: Sequence[int],
        merges: Sequence[str],
        pre: str,
        bos_id: int | None,
        eos_ids: frozenset[int],
        adds_bos: bool,
        eos_id: int | None = None,
    ) -> None:
        patterns, self._ignore_merges = PRE_TOKENIZERS[pre]
        self.vocab = BPEVocab(tuple(tokens), tuple(types), tuple(merges), pre)
        self._patterns = [regex.compile(p) for p in patterns]
        self._ids: dict[str, int] = {}
        pieces: list[bytes] = []
        specials: dict[str, int] = {}
        for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
            self._ids.setdefault(text, i)
            if kind in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.UNUSED):
                pieces.append(b"")
                if kind == TokenType.CONTROL:
                    specials[text] = i
            elif kind == TokenType.USER_DEFINED:
                # Added tokens are stored as their plain text, not in the byte alphabet.
                specials[text] = i
                pieces.append(text.encode("utf-8", errors="surrogateescape"))
            else:
                raw = byte_level_bytes(text)
                pieces.append(raw if raw is not None else text.encode("utf-8", errors="surrogateescape"))
        self._ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(merges):
            left, _, right = merge.partition(" ")
            self._ranks.setdefault((left, right), rank)
        self._byte_chars = bytes_to_unicode()
        self._word_cache: dict[str, tuple[int, ...]] = {}
        super().__init__(
            pieces=pieces,
            specials=specials,
            bos_id=bos_id,
            eos_ids=eos_ids,
            adds_bos=adds_bos,
            strip_leading_space=False,
            eos_id=eos_id,
        )

    def _encode_fragment(self, text: str, *, after_special: bool) -> list[int]:
        out: list[int] = []
        cache = self._word_cache
        for piece in split_pieces(text, self._patterns):
            ids = cache.get(piece)
            if ids is None:
                ids = self._encode_word(piece)
                if len(cache) < 65536:
                    cache[piece] = ids
            out.extend(ids)
        return out

    def _encode_word(self, piece: str) -> tuple[int, ...]:
        word = "".join(self._byte_chars[b] for b in piece.encode("utf-8"))
        if self._ignore_merges and word in self._ids:
            return (self._ids[word],)
        ranks = self._ranks
        out: list[int] = []
        for symbol in merge_pairs(list(word), lambda left, right: ranks.get((left, right))):
            token = self._ids.get(symbol)
            if token is not None:
                out.append(token)
            else:
                # A merge result missing from the vocabulary (a malformed file): fall back to its characters.
                out.extend(self._ids[c] for c in symbol if c in self._ids)
        return tuple(out)


def from_gguf_metadata(metadata: Mapping[str, object], eos_ids: frozenset[int]) -> BPETokenizer:
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = metadata.get("tokenizer.ggml.merges") or []
    types = metadata.get("tokenizer.ggml.token_type")
    assert isinstance(tokens, list) and isinstance(merges, list)
    if not isinstance(types, list):
        types = [TokenType.NORMAL] * len(tokens)
    pre = metadata.get("tokenizer.ggml.pre") or "default"
    assert isinstance(pre, str)
    return BPETokenizer(
        tokens=tokens,
        types=types,
        merges=merges,
        pre=pre,
        bos_id=gguf_token_id(metadata, "bos_token_id", len(tokens)),
        eos_ids=eos_ids,
        eos_id=gguf_token_id(metadata, "eos_token_id", len(tokens)),
        # llama.cpp's default for BPE vocabularies without the key is no BOS.
        adds_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
    )
