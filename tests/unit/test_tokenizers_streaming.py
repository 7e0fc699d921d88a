"""Streaming detokenisation over real vocabularies: pushing ids one at a time never emits a broken UTF-8
sequence and never drops or duplicates text.

The leading-space rule: a completion's stream is the text its tokens add after the prompt, so a
SentencePiece first token "▁Once" streams " Once"; a one-shot decode of the completion alone strips that
dummy-prefix space, as SentencePiece does at the start of any text.
"""

import pytest

from lpu_runtime.tokenizer import IncrementalDetokenizer, Tokenizer
from lpu_runtime.tokenizers import load_tokenizer
from tests.shared_models import require
from tests.unit.tokenizer_data import golden, tokenizer_for, vocab_vectors

SOURCES = [
    "stories260K-hf",
    "stories260K/tok512.bin",
    "stories260K-gguf/stories260K-q8_0.gguf",
    "llama2-tokenizer/hf",
    "llama2-tokenizer/tokenizer.bin",
    "llama-cpp-vocab/ggml-vocab-llama-spm.gguf",
    "llama-cpp-vocab/ggml-vocab-phi-3.gguf",
    "llama-cpp-vocab/ggml-vocab-gpt-2.gguf",
    "llama-cpp-vocab/ggml-vocab-deepseek-llm.gguf",
]
SPM_LEADING_SPACE = {s for s in SOURCES if "gpt-2" not in s and "deepseek" not in s}

TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "naïve café — 日本語 🙂 👩‍👩‍👧",
    "  two leading spaces\n\nand\ttabs",
    "Ελληνικά, русский, العربية, हिन्दी",
]


def _stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push(i) for i in ids]
    pieces.append(detok.flush())
    return pieces


@pytest.mark.parametrize("source", SOURCES)
def test_stream_equals_the_bytes_of_the_tokens(source: str) -> None:
    tok = tokenizer_for(source)
    for text in TEXTS:
        ids = tok.encode(text, add_bos=False)
        pieces = _stream(tok, ids)
        assert all("\ufffd" not in p for p in pieces), pieces  # nothing half-made was emitted
        streamed = "".join(pieces)
        assert streamed == b"".join(tok.token_bytes(i) for i in ids).decode()
        # decode() strips exactly the dummy-prefix space SentencePiece put there; byte-level BPE strips nothing.
        expected = " " + text if source in SPM_LEADING_SPACE else text
        assert streamed == expected
        assert tok.decode(ids) == text


@pytest.mark.parametrize("source", SOURCES)
def test_completion_stream_is_what_the_completion_adds_to_the_prompt(source: str) -> None:
    tok = tokenizer_for(source)
    prompt = tok.encode("Once upon a time", add_bos=True)
    for text in TEXTS:
        completion = tok.encode(text, add_bos=False)
        streamed = "".join(_stream(tok, completion))
        assert streamed == tok.decode(prompt + completion)[len(tok.decode(prompt)) :]


def test_byte_fallback_characters_are_held_until_complete() -> None:
    tok = tokenizer_for("stories260K-hf")
    ids = tok.encode("日本", add_bos=False)  # no piece covers these: six <0xNN> byte tokens after "▁"
    assert len(ids) == 7
    assert _stream(tok, ids) == [" ", "", "", "日", "", "", "本", ""]


def test_golden_completion_streams_to_its_text() -> None:
    tok = tokenizer_for("stories260K-hf")
    chat = golden()["chat_template_example"]
    prompt = chat["prompt_ids_add_special_tokens_false"]
    completion = chat["greedy_30_generated_ids"]
    streamed = "".join(_stream(tok, completion))
    # The prompt ends with "Assistant:", so the first generated token carries the separating space.
    assert streamed == " " + chat["greedy_30_text"]
    assert streamed == tok.decode(prompt + completion)[len(tok.decode(prompt)) :]


@pytest.mark.parametrize(
    "name", ["ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf", "ggml-vocab-phi-3.gguf"]
)
def test_every_llama_cpp_vector_streams_losslessly(name: str) -> None:
    gguf = require(f"llama-cpp-vocab/{name}")
    tok = load_tokenizer(gguf)
    for text, ids in vocab_vectors(gguf):
        streamed = "".join(_stream(tok, ids))
        assert streamed in (text, " " + text)
        assert tok.decode(ids) == text
