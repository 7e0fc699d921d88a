"""Loaders on hand-made files: safetensors dtypes and shards, GGUF RoPE order and types, exports that read back
bit-identically, and every bad file failing with one sentence that names the file."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as GGMLType

from lpu_runtime.catalog import load_model
from lpu_runtime.config import ModelConfig
from lpu_runtime.errors import ModelFileError
from lpu_runtime.loaders.export import write_hf_directory
from lpu_runtime.loaders.gguf import load_gguf_checkpoint
from lpu_runtime.loaders.hf import hf_name, load_hf_checkpoint
from lpu_runtime.loaders.llama2c import load_llama2c_checkpoint
from lpu_runtime.loaders.safetensors import write_safetensors
from lpu_runtime.model import Checkpoint, tensor_shapes
from lpu_runtime.synthetic import synthetic_checkpoint
from lpu_runtime.tokenizer import ByteTokenizer
from tests.shared_models import require
from tests.unit.gguf_writer import gguf_value, write_gguf
from tests.unit.tiny_model import TINY_HEAD_DIM

QWEN_TINY = ModelConfig(
    name="qwen-tiny", dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, vocab_size=259,
    max_context=64, tied_embeddings=True, attention_bias=True,
)  # fmt: skip
LLAMA_TINY = ModelConfig(
    name="llama-tiny", dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=259, max_context=64
)


def assert_same_weights(a: Checkpoint, b: Checkpoint) -> None:
    assert tensor_shapes(a.config) == tensor_shapes(b.config)
    for name in a.names:
        np.testing.assert_array_equal(a.tensor(name), b.tensor(name), err_msg=name)


def export_dir(checkpoint: Checkpoint, out: Path) -> Path:
    out.mkdir()
    write_hf_directory(checkpoint, ByteTokenizer(), out)
    return out


# -- HuggingFace -----------------------------------------------------------------------------------------


def test_export_reads_back_bit_identically_with_biases_and_tied_embeddings(tmp_path: Path) -> None:
    original = synthetic_checkpoint(QWEN_TINY, seed=3)
    directory = export_dir(original, tmp_path / "qwen")
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["tie_word_embeddings"] is True
    loaded = load_hf_checkpoint(directory)
    assert loaded.config == QWEN_TINY.__class__(**{**QWEN_TINY.__dict__, "name": "qwen"})
    assert_same_weights(original, loaded)


def test_llama2c_bin_exported_through_the_cli_equals_the_reference_hf_conversion(tmp_path: Path) -> None:
    from server.cli import main

    out = tmp_path / "exported"
    assert (
        main(["export", "--model", str(require("stories260K/stories260K.bin")), "--out", str(out)], env={})
        == 0
    )
    ours = load_hf_checkpoint(out)
    reference = load_hf_checkpoint(require("stories260K-hf"))
    assert_same_weights(ours, reference)
    # and the export refuses to write over a non-empty directory
    assert (
        main(["export", "--model", str(require("stories260K/stories260K.bin")), "--out", str(out)], env={})
        == 1
    )


def test_head_dim_apart_from_hidden_size_exports_and_reads_back_bit_identically(tmp_path: Path) -> None:
    """Mistral-Nemo's layout in small: head_dim 24 x 4 heads = 96 != hidden_size 64, so q_proj is (96, 64) and
    o_proj (64, 96)."""
    original = synthetic_checkpoint(TINY_HEAD_DIM, seed=8)
    directory = export_dir(original, tmp_path / "nemo")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    assert (config["hidden_size"], config["num_attention_heads"], config["head_dim"]) == (64, 4, 24)
    loaded = load_hf_checkpoint(directory)
    assert loaded.config == ModelConfig(**{**TINY_HEAD_DIM.__dict__, "name": "nemo"})
    assert loaded.tensor("layers.0.wq").shape == (96, 64) and loaded.tensor("layers.0.wo").shape == (64, 96)
    assert_same_weights(original, loaded)
    # a head_dim the tensors do not have, one RoPE cannot rotate, and hidden_size / heads without head_dim
    config_path.write_text(json.dumps({**config, "head_dim": 32}))
    with pytest.raises(ModelFileError, match=r"q_proj.weight has shape \(96, 64\), expected \(128, 64\)"):
        load_hf_checkpoint(directory)
    config_path.write_text(json.dumps({**config, "head_dim": 25}))
    with pytest.raises(ModelFileError, match=r"config\.json: holds an unusable value: .*head_dim 25 must be"):
        load_hf_checkpoint(directory)
    config_path.write_text(json.dumps({**config, "head_dim": None, "num_attention_heads": 6}))
    with pytest.raises(ModelFileError, match="dim 64 not divisible by n_heads 6"):
        load_hf_checkpoint(directory)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_safetensors_widen_exactly(tmp_path: Path, dtype: str) -> None:
    original = synthetic_checkpoint(LLAMA_TINY, seed=5)
    directory = export_dir(original, tmp_path / "half")
    names = {hf_name(n): n for n in original.names}
    halves: dict[str, np.ndarray] = {}
    for key, name in names.items():
        value = original.tensor(name)
        if dtype == "F16":
            halves[key] = value.astype(np.float16)
        else:
            halves[key] = (value.view(np.uint32) >> 16).astype(np.uint16)  # truncate to bf16 bits
    header: dict[str, object] = {}
    offset = 0
    for key, value in halves.items():
        header[key] = {
            "dtype": dtype,
            "shape": list(value.shape),
            "data_offsets": [offset, offset + value.nbytes],
        }
        offset += value.nbytes
    raw = json.dumps(header).encode()
    with (directory / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(v.tobytes() for v in halves.values()))
    loaded = load_hf_checkpoint(directory)
    for key, name in names.items():
        got = loaded.tensor(name)
        want = (
            halves[key].astype(np.float32)
            if dtype == "F16"
            else (halves[key].astype(np.uint32) << 16).view(np.float32)
        )
        np.testing.assert_array_equal(got, want)


def test_sharded_checkpoint_with_its_index(tmp_path: Path) -> None:
    original = synthetic_checkpoint(LLAMA_TINY, seed=6)
    directory = export_dir(original, tmp_path / "sharded")
    (directory / "model.safetensors").unlink()
    shapes = {hf_name(n): s for n, s in tensor_shapes(LLAMA_TINY).items()}
    keys = list(shapes)
    weight_map: dict[str, str] = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), start=1):
        shard = f"model-0000{i}-of-00002.safetensors"
        write_safetensors(
            directory / shard, {k: shapes[k] for k in part}, lambda k: original.tensor(_canon(k))
        )
        weight_map |= dict.fromkeys(part, shard)
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same_weights(original, load_hf_checkpoint(directory))


def _canon(key: str) -> str:
    return {hf_name(n): n for n in tensor_shapes(LLAMA_TINY)}[key]


# -- GGUF ------------------------------------------------------------------------------------------------


def _interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """HF rotate-half rows -> llama.cpp's order, as convert_hf_to_gguf.py's LlamaModel.permute does."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_gguf(
    path: Path,
    checkpoint: Checkpoint,
    arch: str = "llama",
    q_type: GGMLType = GGMLType.F32,
    extra: dict[str, object] | None = None,
) -> Path:
    cfg = checkpoint.config
    if cfg.head_dim != cfg.dim // cfg.n_heads:  # convert_hf_to_gguf writes them only then
        extra = {"llama.attention.key_length": cfg.head_dim, "llama.attention.value_length": cfg.head_dim} | (
            extra or {}
        )
    meta = {
        "general.architecture": arch,
        "llama.embedding_length": cfg.dim,
        "llama.block_count": cfg.n_layers,
        "llama.feed_forward_length": cfg.ffn_dim,
        "llama.attention.head_count": cfg.n_heads,
        "llama.attention.head_count_kv": cfg.n_kv_heads,
        "llama.context_length": cfg.max_context,
        "llama.rope.freq_base": cfg.rope_theta,
        "llama.attention.layer_norm_rms_epsilon": cfg.norm_eps,
        **(extra or {}),
    }
    kv = [(k, *gguf_value(v)) for k, v in meta.items()]
    names = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
    layer = {"attn_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
             "ffn_norm": "ffn_norm", "w1": "ffn_gate", "w3": "ffn_up", "w2": "ffn_down"}  # fmt: skip
    tensors = []
    for name in checkpoint.names:
        value = checkpoint.tensor(name)
        field = name.split(".")[-1]
        if name.startswith("layers."):
            _, i, field = name.split(".")
            key = f"blk.{i}.{layer[field]}.weight"
            if field in ("wq", "wk"):
                value = _interleave(value, cfg.n_heads if field == "wq" else cfg.n_kv_heads)
        else:
            key = f"{names[name]}.weight"
        ggml_type, data = GGMLType.F32, value.astype("<f4").tobytes()
        if field == "wq" and q_type is not GGMLType.F32:  # zero blocks of that type
            block, block_bytes = GGML_QUANT_SIZES[q_type]
            ggml_type, data = q_type, bytes(value.size // block * block_bytes)
        tensors.append((key, tuple(reversed(value.shape)), int(ggml_type), data))
    return write_gguf(path, kv=kv, tensors=tensors)


def test_gguf_q_k_rows_are_reordered_back_to_rotate_half(tmp_path: Path) -> None:
    original = synthetic_checkpoint(LLAMA_TINY, seed=7)
    loaded = load_gguf_checkpoint(_llama_gguf(tmp_path / "m.gguf", original))
    assert loaded.config.tied_embeddings is False and loaded.config.max_context == 64
    assert_same_weights(original, loaded)


def test_gguf_key_length_sets_the_head_dim(tmp_path: Path) -> None:
    original = synthetic_checkpoint(TINY_HEAD_DIM, seed=9)
    loaded = load_gguf_checkpoint(_llama_gguf(tmp_path / "nemo.gguf", original))
    assert (loaded.config.head_dim, loaded.config.q_dim) == (24, 96)
    assert_same_weights(original, loaded)  # Q/K reordered per head of 24 rows
    for key, value, message in (
        ("llama.attention.value_length", 16, "llama.attention.value_length 16 != 24 (the key length)"),
        ("llama.rope.dimension_count", 12, "llama.rope.dimension_count 12 != 24 (the key length)"),
    ):
        path = _llama_gguf(tmp_path / f"{value}.gguf", original, extra={key: value})
        with pytest.raises(ModelFileError, match=re.escape(message)):
            load_gguf_checkpoint(path)


# -- bad files: one sentence naming the file -------------------------------------------------------------


def _fails(model: Path | str, match: str, tokenizer: str | None = None) -> ModelFileError:
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(str(model), tokenizer=tokenizer)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return info.value


def test_truncated_safetensors(tmp_path: Path) -> None:
    directory = tmp_path / "hf"
    shutil.copytree(require("stories260K-hf"), directory)
    directory.chmod(0o755)
    weights = directory / "model.safetensors"
    weights.chmod(0o644)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    err = _fails(directory, r"is truncated: tensor .* ends at data byte")
    assert err.path == str(weights)
    weights.write_bytes(b"\xff" * 16)
    _fails(directory, "header length")
    weights.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    _fails(directory, "not JSON")


def test_unsupported_architecture_dtype_and_missing_pieces(tmp_path: Path) -> None:
    directory = export_dir(synthetic_checkpoint(LLAMA_TINY, seed=1), tmp_path / "hf")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    (directory / "tokenizer.json").write_text("{}")  # never reached in the checks below that fail first
    config_path.write_text(json.dumps({**config, "architectures": ["GPTNeoXForCausalLM"]}))
    _fails(directory, "architecture GPTNeoXForCausalLM is not supported")
    config_path.write_text(json.dumps({k: v for k, v in config.items() if k != "num_hidden_layers"}))
    _fails(directory, "misses the field num_hidden_layers")
    config_path.write_text(json.dumps({**config, "num_hidden_layers": 2}))
    _fails(directory, "misses tensor model.layers.1")
    config_path.write_text(json.dumps(config))
    (directory / "tokenizer.json").unlink()
    _fails(directory, "has no tokenizer.json")
    # an integer tensor
    weights = directory / "model.safetensors"
    header = {"model.embed_tokens.weight": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}
    raw = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    _fails(directory, "is I64, which is not supported")


def test_bad_gguf_files(tmp_path: Path) -> None:
    original = synthetic_checkpoint(LLAMA_TINY, seed=2)
    bad_magic = tmp_path / "magic.gguf"
    bad_magic.write_bytes(b"GGUX" + bytes(64))
    _fails(bad_magic, "not a GGUF file")
    _fails(_llama_gguf(tmp_path / "gpt2.gguf", original, arch="gpt2"), "architecture 'gpt2' is not supported")
    # an integer matrix: a ggml type, but no weight type
    _fails(_llama_gguf(tmp_path / "i8.gguf", original, q_type=GGMLType.I8), "is I8, which is not supported")
    # a llama GGUF without a vocabulary needs --tokenizer
    _fails(_llama_gguf(tmp_path / "novocab.gguf", original), "pass one with --tokenizer")
    data = require("stories260K-gguf/stories260K-q8_0.gguf").read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) - 1000])
    _fails(truncated, "truncated")


def test_bad_llama2c_files(tmp_path: Path) -> None:
    data = require("stories260K/stories260K.bin").read_bytes()
    alone = tmp_path / "model.bin"
    alone.write_bytes(data)
    _fails(alone, "has no tokenizer beside it")  # no tokenizer.bin / tok*.bin here
    tokenizer = str(require("stories260K/tok512.bin"))
    assert load_model(str(alone), tokenizer=tokenizer).name == "model"  # the file name without its extension
    alone.write_bytes(data[:-4])
    _fails(alone, "is truncated", tokenizer=tokenizer)
    alone.write_bytes(data + bytes(4))
    _fails(alone, "bytes after the last tensor", tokenizer=tokenizer)
    alone.write_bytes(struct.pack("<Ii", 0x616B3432, 7) + bytes(300))
    _fails(alone, "llama2.c version 7 is not supported", tokenizer=tokenizer)
    alone.write_bytes(b"hello")
    _fails(alone, "cannot hold a llama2.c header", tokenizer=tokenizer)
    _fails(
        require("stories260K/stories260K.bin"), "no such tokenizer file", tokenizer=str(tmp_path / "none.bin")
    )


def test_llama2c_v0_untied_classifier_is_read(tmp_path: Path) -> None:
    """A negative vocab_size in the v0 header means the classifier follows the RoPE tables."""
    data = bytearray(require("stories260K/stories260K.bin").read_bytes())
    dim, _, _, _, _, vocab, _ = struct.unpack_from("<7i", data, 0)
    struct.pack_into("<i", data, 20, -vocab)
    classifier = np.random.default_rng(0).standard_normal((vocab, dim)).astype("<f4")
    path = tmp_path / "untied.bin"
    path.write_bytes(bytes(data) + classifier.tobytes())
    checkpoint = load_llama2c_checkpoint(path)
    assert not checkpoint.config.tied_embeddings
    np.testing.assert_array_equal(checkpoint.tensor("output"), classifier)
