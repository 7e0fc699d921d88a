"""load_tokenizer: which files it reads, the BOS/EOS it reports, and the clear errors for bad files."""

import json
import shutil
import struct
from pathlib import Path

import pytest

from lpu_runtime.errors import ModelFileError
from lpu_runtime.gguf_file import GGUFFile
from lpu_runtime.tokenizer import ByteTokenizer, IncrementalDetokenizer, encode_prompt
from lpu_runtime.tokenizers import load_tokenizer
from lpu_runtime.tokenizers.hf import HFTokenizer
from tests.shared_models import require
from tests.unit.gguf_writer import write_metadata_gguf
from tests.unit.tokenizer_data import vocab_vectors


def _hf_copy(tmp_path: Path, **config_changes: object) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    source = require("stories260K-hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(source / name, folder / name)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(config_changes)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_generation_config_eos_ids_int_or_list(tmp_path: Path) -> None:
    folder = _hf_copy(tmp_path)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 13, 500]}))
    tok = load_tokenizer(folder)
    assert tok.eos_ids == frozenset({2, 13, 500}) and tok.eos_token == "</s>"
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 13}))
    assert load_tokenizer(folder).eos_ids == frozenset({2, 13})
    (folder / "generation_config.json").unlink()
    assert load_tokenizer(folder).eos_ids == frozenset({2})


def test_added_token_dict_form_and_add_bos_false(tmp_path: Path) -> None:
    folder = _hf_copy(tmp_path, bos_token={"content": "<s>", "special": True}, add_bos_token=False)
    tok = load_tokenizer(folder)
    assert (tok.bos_id, tok.bos_token, tok.adds_bos) == (1, "<s>", False)
    # A model that does not want BOS gets none, even when a caller's text has none.
    assert encode_prompt(tok, "Once upon a time") == tok.encode("Once upon a time", add_bos=False)
    assert encode_prompt(tok, "Once upon a time")[0] != 1


def test_add_bos_from_the_post_processor_when_the_config_is_silent(tmp_path: Path) -> None:
    config = json.loads((require("stories260K-hf") / "tokenizer_config.json").read_text())
    del config["add_bos_token"]
    folder = _hf_copy(tmp_path)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(folder).adds_bos  # its TemplateProcessing writes <s> first


def test_byte_level_tokenizer_json_matches_llama_cpp_gpt2_vectors(tmp_path: Path) -> None:
    """A GPT-2 tokenizer.json (ByteLevel pre-tokenizer and decoder) built from the GGUF vocabulary: the
    library's ids equal llama.cpp's, and token_bytes undoes the byte alphabet so streams stay exact."""
    gguf_path = require("llama-cpp-vocab/ggml-vocab-gpt-2.gguf")
    meta = GGUFFile(gguf_path).metadata
    tokens = meta["tokenizer.ggml.tokens"]
    spec = {
        "version": "1.0",
        "added_tokens": [
            {
                "id": 50256,
                "content": "<|endoftext|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": meta["tokenizer.ggml.merges"],
        },
    }
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": False})
    )
    tok = load_tokenizer(folder)
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_ids, tok.adds_bos) == (50256, frozenset({50256}), False)
    for text, ids in vocab_vectors(gguf_path):
        assert tok.encode(text, add_bos=False) == ids, text
        assert tok.decode(ids) == text
        detok = IncrementalDetokenizer(tok)
        assert "".join(detok.push(i) for i in ids) + detok.flush() == text


def test_gguf_eos_includes_end_of_turn_tokens() -> None:
    phi3 = load_tokenizer(require("llama-cpp-vocab/ggml-vocab-phi-3.gguf"))
    # tokenizer.ggml.eos_token_id is <|endoftext|> (32000); the chat turn ends with <|end|> (32007).
    assert phi3.eos_ids == frozenset({32000, 32007})
    assert phi3.encode("<|user|>\nHi<|end|>", add_bos=False)[0] == 32010
    assert phi3.encode("<|user|>\nHi<|end|>", add_bos=False)[-1] == 32007


def _vocab_metadata(**extra: object) -> dict[str, object]:
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "▁", "a", "b", "▁a", "<|eot|>"]
    types = [2, 3, 3, *([6] * 256), 1, 1, 1, 1, 3]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * (len(tokens) - 2) + [-1.0, 0.0],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        **extra,
    }


def test_gguf_eot_id_and_named_eos(tmp_path: Path) -> None:
    path = write_metadata_gguf(
        tmp_path / "v.gguf",
        _vocab_metadata(**{"tokenizer.ggml.eos_token_id": 263, "tokenizer.ggml.eot_token_id": 2}),
    )
    tok = load_tokenizer(path)
    assert tok.eos_ids == frozenset({2, 263})
    assert tok.eos_token == "<|eot|>"  # the file's eos_token_id, not the lowest end id
    assert tok.encode("ab a", add_bos=True) == [1, 262, 261, 262]
    assert tok.encode("c", add_bos=False) == [259, 3 + ord("c")]  # byte fallback
    assert tok.decode([1, 262, 3 + 0xC3, 3 + 0xA9, 2]) == "aé"


def test_gguf_vocabulary_errors(tmp_path: Path) -> None:
    bad_pre = write_metadata_gguf(
        tmp_path / "p.gguf",
        {
            **_vocab_metadata(),
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "no-such-pre",
            "tokenizer.ggml.merges": [],
        },
    )
    with pytest.raises(
        ModelFileError, match=r"p\.gguf: uses the BPE pre-tokenizer 'no-such-pre'.*supported: "
    ):
        load_tokenizer(bad_pre)
    rwkv = write_metadata_gguf(tmp_path / "r.gguf", _vocab_metadata(**{"tokenizer.ggml.model": "rwkv"}))
    with pytest.raises(ModelFileError, match="'rwkv' tokenizer, which is not supported"):
        load_tokenizer(rwkv)
    empty = write_metadata_gguf(tmp_path / "e.gguf", {"general.architecture": "llama"})
    with pytest.raises(ModelFileError, match="has no tokenizer"):
        load_tokenizer(empty)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such tokenizer file"):
        load_tokenizer(tmp_path / "absent.json")
    with pytest.raises(ModelFileError, match=r"neither tokenizer\.json nor tokenizer\.bin"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"tokenizer\.json: is not a readable tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ModelFileError, match=r"is a SentencePiece \.model"):
        load_tokenizer(require("stories260K-hf/tokenizer.model"))


def test_llama2c_tokenizer_bin_errors(tmp_path: Path) -> None:
    data = require("stories260K/tok512.bin").read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"cut\.bin: .*truncated"):
        load_tokenizer(cut)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(struct.pack("<i", -7) + bytes(64))
    with pytest.raises(ModelFileError, match=r"is not a llama2\.c tokenizer\.bin"):
        load_tokenizer(garbage)


def test_directory_with_only_a_tokenizer_bin(tmp_path: Path) -> None:
    shutil.copy(require("stories260K/tok512.bin"), tmp_path / "tokenizer.bin")
    tok = load_tokenizer(tmp_path)
    assert tok.encode("Once upon a time", add_bos=True) == [1, 403, 407, 261, 378]


def test_encode_prompt_adds_bos_exactly_once() -> None:
    tok = ByteTokenizer()
    bos = ByteTokenizer.BOS_ID
    assert encode_prompt(tok, "hi") == [bos, *b"hi"]
    assert encode_prompt(tok, "<s>hi") == [bos, *b"hi"]  # a template that wrote BOS itself
    assert encode_prompt(tok, " <s>hi") == [bos, *b" ", bos, *b"hi"]  # not at the start: text, kept
    assert encode_prompt(tok, "") == [bos]
