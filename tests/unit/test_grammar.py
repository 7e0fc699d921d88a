"""Grammar-constrained decoding over a byte vocabulary: schemas checked where requests arrive, masks that only
ever allow text the grammar accepts, one compilation per distinct spec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lpu_runtime.errors import InvalidRequestError
from lpu_runtime.grammar import (
    GrammarCompiler,
    GrammarMatcher,
    GrammarVocab,
    _Wrapper,
    allowed_from_bitmask,
    check_grammar,
)
from lpu_runtime.types import GrammarSpec

EOS = 256
# every byte, then an end-of-sequence special token (no text)
VOCAB = GrammarVocab((*(bytes([i]) for i in range(256)), b""), (EOS,))
PICK = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}, "c": {"enum": ["red", "green"]}},
    "required": ["n", "c"],
    "additionalProperties": False,
}


def schema(value: object, lenient: bool = False) -> GrammarSpec:
    return GrammarSpec("json_schema", json.dumps(value), lenient=lenient)


def generate(matcher: GrammarMatcher, seed: int, limit: int = 200) -> bytes:
    """Highest-scoring allowed token among random scores until EOS: whatever the scores, the grammar's text."""
    rng = np.random.default_rng(seed)
    text = b""
    for _ in range(limit):
        scores = rng.standard_normal(len(VOCAB.pieces))
        matcher.mask_into(scores)
        token = int(np.argmax(scores))
        assert np.isfinite(scores[token])
        if token == EOS:
            return text
        matcher.consume(token)
        text += VOCAB.pieces[token]
    raise AssertionError(f"no EOS after {limit} tokens: {text!r}")


def test_every_path_through_a_schema_is_valid_json_matching_it() -> None:
    compiler = GrammarCompiler(VOCAB)
    for seed in range(8):
        value = json.loads(generate(compiler.matcher(schema(PICK)), seed))
        assert set(value) == {"n", "c"} and 0 <= value["n"] <= 9 and value["c"] in ("red", "green")


def test_the_layout_is_json_dumps_so_no_padding_is_possible() -> None:
    text = generate(GrammarCompiler(VOCAB).matcher(schema(PICK)), 0).decode()
    assert text == json.dumps(json.loads(text))


def test_a_lark_grammar_with_an_inline_schema() -> None:
    lark = f'start: "<call>" obj "</call>"\nobj: %json {json.dumps(PICK)}\n'
    text = generate(GrammarCompiler(VOCAB).matcher(GrammarSpec("lark", lark)), 1).decode()
    assert text.startswith("<call>") and text.endswith("</call>")
    json.loads(text.removeprefix("<call>").removesuffix("</call>"))


def test_each_spec_compiles_once_and_every_request_gets_its_own_matcher() -> None:
    compiler = GrammarCompiler(VOCAB)
    first, second = compiler.matcher(schema(PICK)), compiler.matcher(schema(PICK))
    first.consume(ord("{"))  # advancing one leaves the other at the start
    scores = np.zeros(len(VOCAB.pieces))
    second.mask_into(scores)
    assert np.flatnonzero(np.isfinite(scores)).tolist() == [ord("{")]
    assert len(compiler._compiled) == 1


def test_a_token_the_grammar_refuses_is_an_error() -> None:
    matcher = GrammarCompiler(VOCAB).matcher(schema(PICK))
    with pytest.raises(RuntimeError, match="refused token"):
        matcher.consume(ord("x"))


@pytest.mark.parametrize(
    "spec",
    [
        schema({"type": "objekt"}),
        schema({"type": "object", "dependentSchemas": {"a": {}}}),  # a keyword it does not implement
        GrammarSpec("json_schema", "[1, 2"),
        GrammarSpec("lark", "start: undefined_rule"),
    ],
)
def test_bad_grammars_are_refused_naming_the_parameter(spec: GrammarSpec) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_grammar(spec, "response_format.json_schema.schema")
    assert info.value.param == "response_format.json_schema.schema"
    assert info.value.message.startswith(f"invalid {spec.kind}")


def test_a_lenient_schema_ignores_the_keywords_it_does_not_implement() -> None:
    check_grammar(schema({"type": "object", "dependentSchemas": {"a": {}}}, lenient=True), "p")


def test_the_bitmask_is_little_endian_within_each_word() -> None:
    words = np.array([0b101, 1 << 31, 1], dtype=np.uint32).view(np.int32)
    allowed = allowed_from_bitmask(words, 65)
    assert np.flatnonzero(allowed).tolist() == [0, 2, 63, 64]


def test_the_stand_in_tokenizer_takes_the_longest_piece_and_the_lowest_id() -> None:
    vocab = GrammarVocab((b"a", b"ab", b"abc", b"ab", b""), (4,))
    wrapper = _Wrapper(vocab)
    assert wrapper(b"abcab") == [2, 1] and wrapper(b"x") == []  # "ab" twice: the lower id
    assert wrapper.tokens[4] == b"<|lpu_special_4|>" and wrapper.special_token_ids == [4]
