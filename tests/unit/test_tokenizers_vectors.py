"""Every tokenizer adapter against reference ids: llama.cpp's vocab vectors and the stories260K golden file."""

from pathlib import Path

import pytest
import regex
import tokenizers
from tokenizers import Regex, pre_tokenizers

from lpu_runtime.errors import ModelFileError
from lpu_runtime.tokenizer import Tokenizer, encode_prompt
from lpu_runtime.tokenizers import load_tokenizer
from lpu_runtime.tokenizers.bpe import PRE_TOKENIZERS, BPETokenizer, split_pieces
from lpu_runtime.tokenizers.hf import HFTokenizer
from lpu_runtime.tokenizers.hf_export import to_tokenizer_json
from lpu_runtime.tokenizers.spm import SentencePieceTokenizer
from tests.shared_models import params_for, require
from tests.unit.tokenizer_data import golden, tokenizer_for, vocab_vectors

# The vocabularies whose test vectors llama.cpp ships and what reads them (bert-bge is a WordPiece
# embedding vocabulary, not a generative model's, and is refused with a clear error).
SUPPORTED = {
    "ggml-vocab-llama-spm.gguf": SentencePieceTokenizer,
    "ggml-vocab-phi-3.gguf": SentencePieceTokenizer,
    "ggml-vocab-gpt-2.gguf": BPETokenizer,
    "ggml-vocab-mpt.gguf": BPETokenizer,
    "ggml-vocab-falcon.gguf": BPETokenizer,
    "ggml-vocab-starcoder.gguf": BPETokenizer,
    "ggml-vocab-refact.gguf": BPETokenizer,
    "ggml-vocab-deepseek-coder.gguf": BPETokenizer,
    "ggml-vocab-deepseek-llm.gguf": BPETokenizer,
}
UNSUPPORTED = {"ggml-vocab-bert-bge.gguf": "'bert' tokenizer, which is not supported"}


def _check_vectors(tok: Tokenizer, vectors: list[tuple[str, list[int]]]) -> None:
    assert len(vectors) > 40
    for text, expected in vectors:
        assert tok.encode(text, add_bos=False) == expected, text
        assert tok.decode(expected) == text, expected


@pytest.mark.parametrize("path", params_for("llama-cpp-vocab", "*.gguf.inp"))
def test_llama_cpp_vocab_vectors(path: Path | None) -> None:
    if path is None:
        require("llama-cpp-vocab")
        return
    gguf = path.with_suffix("")
    if gguf.name in UNSUPPORTED:
        with pytest.raises(ModelFileError, match=UNSUPPORTED[gguf.name]):
            load_tokenizer(gguf)
        return
    tok = tokenizer_for(f"llama-cpp-vocab/{gguf.name}")
    assert type(tok) is SUPPORTED[gguf.name]
    _check_vectors(tok, vocab_vectors(gguf))


# The library decodes an added token's text through the byte-level decoder; deepseek's vocabularies store
# single characters such as "ü" as user-defined tokens, which our own adapter decodes as their UTF-8.
DECODES_DIFFERENTLY = {
    ("ggml-vocab-deepseek-coder.gguf", "Führer"),
    ("ggml-vocab-deepseek-llm.gguf", "Führer"),
}


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_converted_tokenizer_json_gives_llama_cpp_ids(name: str) -> None:
    """`lpu export` writes GGUF vocabularies as tokenizer.json: read back by the library, the same ids."""
    converted = tokenizers.Tokenizer.from_str(
        to_tokenizer_json(tokenizer_for(f"llama-cpp-vocab/{name}")).to_str()
    )
    vectors = vocab_vectors(require(f"llama-cpp-vocab/{name}"))
    assert [converted.encode(text, add_special_tokens=False).ids for text, _ in vectors] == [
        i for _, i in vectors
    ]
    for text, ids in vectors:
        decoded = converted.decode(ids, skip_special_tokens=True)
        assert (decoded == text) != ((name, text) in DECODES_DIFFERENTLY), text


def test_every_vector_file_is_classified() -> None:
    folder = require("llama-cpp-vocab")
    assert {p.name.removesuffix(".inp") for p in folder.glob("*.gguf.inp")} == set(SUPPORTED) | set(
        UNSUPPORTED
    )


@pytest.mark.parametrize("source", ["llama2-tokenizer/hf", "llama2-tokenizer/tokenizer.bin"])
def test_llama2_tokenizer_json_and_bin_give_llama_cpp_ids(source: str) -> None:
    tok = tokenizer_for(source)
    assert (tok.vocab_size, tok.bos_id, tok.eos_ids, tok.adds_bos) == (32000, 1, frozenset({2}), True)
    _check_vectors(tok, vocab_vectors(require("llama-cpp-vocab/ggml-vocab-llama-spm.gguf")))


def test_gguf_without_vectors_still_load() -> None:
    """gpt-neox (no pre-tokenizer key: llama.cpp's default regexes) and baichuan have no .inp files."""
    neox = tokenizer_for("llama-cpp-vocab/ggml-vocab-gpt-neox.gguf")
    assert isinstance(neox, BPETokenizer)
    assert neox.decode(neox.encode("Hello world", add_bos=False)) == "Hello world"
    baichuan = tokenizer_for("llama-cpp-vocab/ggml-vocab-baichuan.gguf")
    assert isinstance(baichuan, SentencePieceTokenizer)
    assert baichuan.decode(baichuan.encode("你好，世界", add_bos=False)) == "你好，世界"


STORIES = [
    "stories260K-hf",
    "stories260K-hf/tokenizer.json",
    "stories260K/tok512.bin",
    "stories260K-gguf/stories260K.gguf",
    "stories260K-gguf/stories260K-f16.gguf",
    "stories260K-gguf/stories260K-q8_0.gguf",
]


@pytest.mark.parametrize("source", STORIES)
def test_stories260k_golden_vectors_in_every_format(source: str) -> None:
    tok = tokenizer_for(source)
    assert (tok.vocab_size, tok.bos_id, tok.bos_token, tok.eos_token) == (512, 1, "<s>", "</s>")
    assert tok.eos_ids == frozenset({2}) and tok.adds_bos
    data = golden()
    for vector in data["tokenizer_vectors_add_special_tokens_true"]:
        assert tok.encode(vector["text"], add_bos=True) == vector["ids"], vector["text"]
        assert encode_prompt(tok, vector["text"]) == vector["ids"]
    chat = data["chat_template_example"]
    ids = chat["prompt_ids_add_special_tokens_false"]
    assert tok.encode(chat["rendered"], add_bos=False) == ids
    # The rendered prompt spells <s> itself: encode_prompt must not add a second one.
    assert encode_prompt(tok, chat["rendered"]) == ids
    assert tok.decode(chat["greedy_30_generated_ids"]) == chat["greedy_30_text"]


def test_hf_adapter_type() -> None:
    assert isinstance(tokenizer_for("stories260K-hf"), HFTokenizer)


def test_special_token_strings_become_their_ids_with_spm_spacing() -> None:
    """After a special token SentencePiece starts a new text, so it gets the dummy-prefix space again
    (llama.cpp and HF's legacy Llama tokenizer agree: the golden vector shows it)."""
    for source in ("stories260K-hf", "stories260K-gguf/stories260K-f16.gguf"):
        tok = tokenizer_for(source)
        assert tok.encode("</s>", add_bos=False) == [2]
        a = tok.encode("a", add_bos=False)
        assert tok.encode("a</s>a", add_bos=False) == [*a, 2, *a]


# The expressions as the models' tokenizer.json files write them (llama.cpp rewrites the case-insensitive
# group (?i:...) as character classes); the tokenizers library runs these through Oniguruma.
ORIGINAL_SPLIT_REGEX = {
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "gpt-2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
}


@pytest.mark.parametrize("pre", sorted(ORIGINAL_SPLIT_REGEX))
def test_pre_tokenizer_splits_like_the_tokenizers_library(pre: str) -> None:
    """llama3 and qwen2 have no llama.cpp vectors here: their pre-tokenization is checked against the
    library running the original expression, over every vector text plus case and digit edge cases."""
    texts = [
        text
        for path in require("llama-cpp-vocab").glob("*.inp")
        for text, _ in vocab_vectors(path.with_suffix(""))
    ]
    texts += ["I'VE SEEN IT'S We'Re", "1234567 12 3", "a\r\n\r\nb  \n c", "x\u3000y\u00a0z", "don’t"]
    library = pre_tokenizers.Split(Regex(ORIGINAL_SPLIT_REGEX[pre]), behavior="isolated")
    ours = [regex.compile(p) for p in PRE_TOKENIZERS[pre][0]]
    for text in texts:
        assert split_pieces(text, ours) == [piece for piece, _ in library.pre_tokenize_str(text)], text
