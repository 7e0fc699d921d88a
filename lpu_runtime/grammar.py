"""Grammar-constrained decoding: a `GrammarSpec` (plain data in the request) becomes a token mask per step.

llguidance compiles JSON Schemas and Lark grammars (with JSON Schemas inline through `%json`) against our
vocabulary and computes each step's allowed tokens as a bitmask; why it and not outlines-core or xgrammar:
docs/structured-outputs.md (benchmarks/bench_grammar.py). The mask is applied to the logits on the host, in
the sampler: the chips' numerics never change. Requests carry only the spec (it pickles into the engine
process); the engine compiles each distinct spec once and gives every request a copy of the compiled matcher.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np
from numpy.typing import NDArray

from lpu_runtime.errors import InvalidRequestError
from lpu_runtime.tokenizer import Tokenizer
from lpu_runtime.types import GrammarSpec

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # a TypedDict of the stubs only

# JSON laid out as json.dumps does: one space after ':' and ','. Flexible whitespace would let a model pad the
# output with newlines forever (an untrained one does), and a fixed layout is what models are trained on.
JSON_LAYOUT: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
# Enough distinct schemas for a busy server's clients; each compiled matcher is a few hundred KB at most.
CACHE_SIZE = 64


def json_options(lenient: bool) -> JsonCompileOptions:
    """llguidance's options for a JSON Schema (in a Lark grammar: its `x-guidance` key)."""
    return {**JSON_LAYOUT, "lenient": lenient}


def _llg_grammar(spec: GrammarSpec) -> str:
    if spec.kind == "json_schema":
        # lenient: keywords llguidance does not implement are ignored instead of refused (non-strict schemas)
        return llguidance.LLMatcher.grammar_from_json_schema(
            spec.source, overrides=json_options(spec.lenient)
        )
    return llguidance.LLMatcher.grammar_from_lark(spec.source)


def check_grammar(spec: GrammarSpec, param: str) -> None:
    """Raises InvalidRequestError naming `param` when the grammar or schema cannot be compiled. Runs where the
    request arrives (no vocabulary needed), so a bad schema is a 400, never a failure in the engine."""
    try:
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(_llg_grammar(spec))
    except ValueError as exc:  # not a JSON object at all
        raise InvalidRequestError(param, f"invalid {spec.kind}: {exc}") from None
    if failed:
        raise InvalidRequestError(param, f"invalid {spec.kind}: {'; '.join(messages)}")


@dataclass(frozen=True)
class GrammarVocab:
    """What the grammar compiler needs of the vocabulary, as plain data for the engine process."""

    pieces: tuple[bytes, ...]  # each id's bytes; b"" for special tokens, which text never spells
    eos_ids: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> GrammarVocab:
        pieces = tuple(tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size))
        return cls(pieces, tuple(sorted(tokenizer.eos_ids)))


class _Wrapper:
    """llguidance's tokenizer interface: the token bytes, and a tokenization of text (it tokenizes a grammar's
    forced text with it). Greedy longest-match over the vocabulary stands in for the model's BPE, which lives in
    the server's process: any tokenization of the text is a valid path through the mask."""

    def __init__(self, vocab: GrammarVocab) -> None:
        self.eos_token_id = vocab.eos_ids[0] if vocab.eos_ids else None
        self.bos_token_id = None
        # Special tokens get a name no text spells, so a grammar's literals never match them.
        self.tokens = [p if p else f"<|lpu_special_{i}|>".encode() for i, p in enumerate(vocab.pieces)]
        self.special_token_ids = [i for i, p in enumerate(vocab.pieces) if not p]
        self._ids = {p: i for i, p in reversed(list(enumerate(vocab.pieces))) if p}  # the lowest id wins
        self._longest = max((len(p) for p in self._ids), default=1)

    def __call__(self, text: bytes) -> list[int]:
        ids, at = [], 0
        while at < len(text):
            for n in range(min(self._longest, len(text) - at), 0, -1):
                token = self._ids.get(text[at : at + n])
                if token is not None:
                    ids.append(token)
                    at += n
                    break
            else:
                at += 1  # a byte no token spells (a vocabulary without byte fallback): skipped
        return ids


def llg_tokenizer(vocab: GrammarVocab) -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Wrapper(vocab)), eos_token=list(vocab.eos_ids))


def allowed_from_bitmask(bitmask: NDArray[np.int32], vocab_size: int) -> NDArray[np.bool_]:
    """(ceil(vocab / 32),) int32 words, bit i of word w = token 32 w + i -> (vocab,) bool."""
    return np.unpackbits(bitmask.view(np.uint8), count=vocab_size, bitorder="little").view(np.bool_)


class GrammarMatcher:
    """One request's position in its grammar: the next token's mask, then the token it took."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._bitmask = np.zeros((vocab_size + 31) // 32, dtype=np.int32)  # (words,) int32
        self._vocab_size = vocab_size

    def mask_into(self, scores: NDArray[np.float64]) -> None:
        """Sets every token the grammar does not allow next to -inf in `scores` (vocab,)."""
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        allowed = allowed_from_bitmask(self._bitmask, self._vocab_size)
        np.putmask(scores, ~allowed, -np.inf)

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self._matcher.get_error()}")


class GrammarCompiler:
    """The engine's compiled grammars, keyed by spec: one compilation per distinct schema, a cheap copy per
    request. The llguidance tokenizer is built on the first constrained request (about a second for a 50k
    vocabulary), so servers that never see one never pay for it."""

    def __init__(self, vocab: GrammarVocab) -> None:
        self._vocab = vocab
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[GrammarSpec, Any] = OrderedDict()

    def matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        compiled = self._compiled.get(spec)
        if compiled is None:
            if self._tokenizer is None:
                self._tokenizer = llg_tokenizer(self._vocab)
            compiled = llguidance.LLMatcher(self._tokenizer, _llg_grammar(spec))
            if compiled.is_error():
                raise InvalidRequestError("response_format", f"invalid {spec.kind}: {compiled.get_error()}")
            self._compiled[spec] = compiled
            if len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(spec)
        return GrammarMatcher(compiled.deep_copy(), len(self._vocab.pieces))
