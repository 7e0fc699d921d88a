import json
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GGMLType

from lpu_runtime.errors import ModelFileError
from lpu_runtime.gguf_file import GGUFFile
from tests.shared_models import params_for, require
from tests.unit.gguf_writer import gguf_string as _string
from tests.unit.gguf_writer import write_gguf as _write_gguf

STORIES_GGUF = ("stories260K.gguf", "stories260K-f16.gguf", "stories260K-q8_0.gguf")
# Q8_0: one fp16 scale then 32 int8 quants; value = d * q.
Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])


def test_hand_written_file_every_value_type_and_tensor_type(tmp_path: Path) -> None:
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3)  # numpy (2, 3) = GGUF dims (3, 2)
    f16 = np.array([[1.5, -2.0]], dtype=np.float16)
    bf16 = (np.array([1.0, -3.5, 0.15625], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    q8 = np.zeros(2, dtype=Q8_0_BLOCK)  # one row of 64 values
    q8["d"] = [0.5, 2.0]
    q8["qs"][0] = np.arange(32) - 16
    q8["qs"][1] = -np.arange(32)
    strings = struct.pack("<IQ", 8, 2) + _string("a") + _string("▁é")
    nested = struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 5, 2) + struct.pack("<2i", -1, 7)
    path = _write_gguf(
        tmp_path / "t.gguf",
        version=2,
        kv=[
            ("u8", 0, struct.pack("<B", 200)),
            ("i8", 1, struct.pack("<b", -3)),
            ("u16", 2, struct.pack("<H", 60000)),
            ("i16", 3, struct.pack("<h", -30000)),
            ("u32", 4, struct.pack("<I", 4000000000)),
            ("i32", 5, struct.pack("<i", -5)),
            ("f32", 6, struct.pack("<f", 0.25)),
            ("bool", 7, struct.pack("<?", True)),
            ("str", 8, _string("héllo")),
            ("u64", 10, struct.pack("<Q", 2**63)),
            ("i64", 11, struct.pack("<q", -(2**40))),
            ("f64", 12, struct.pack("<d", 1e-300)),
            ("arr.f32", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 1.0, -2.0, 0.5)),
            ("arr.str", 9, strings),
            ("arr.nested", 9, nested),
            ("general.alignment", 4, struct.pack("<I", 64)),
        ],
        tensors=[
            ("a", (3, 2), int(GGMLType.F32), f32.tobytes()),
            ("b", (2, 1), int(GGMLType.F16), f16.tobytes()),
            ("c", (3,), int(GGMLType.BF16), bf16.tobytes()),
            ("q", (64, 1), int(GGMLType.Q8_0), q8.tobytes()),
        ],
        alignment=64,
    )
    g = GGUFFile(path)
    assert g.version == 2 and g.alignment == 64 and g.data_offset % 64 == 0
    assert g.metadata == {
        "u8": 200,
        "i8": -3,
        "u16": 60000,
        "i16": -30000,
        "u32": 4000000000,
        "i32": -5,
        "f32": 0.25,
        "bool": True,
        "str": "héllo",
        "u64": 2**63,
        "i64": -(2**40),
        "f64": 1e-300,
        "arr.f32": [1.0, -2.0, 0.5],
        "arr.str": ["a", "▁é"],
        "arr.nested": [[-1, 7]],
        "general.alignment": 64,
    }
    a = g.tensors["a"]
    assert (a.dims, a.shape, a.ggml_type, a.nbytes) == ((3, 2), (2, 3), GGMLType.F32, 24)
    assert a.offset % 64 == 0
    assert g.tensors["q"].nbytes == 68 and g.tensors["q"].shape == (1, 64)
    np.testing.assert_array_equal(g.dequantize("a"), f32)
    np.testing.assert_array_equal(g.dequantize("b"), f16)
    np.testing.assert_array_equal(g.dequantize_rows("a", slice(1, 2)), f32[1:])
    np.testing.assert_array_equal(g.dequantize("c"), [1.0, -3.5, 0.15625])
    expected_q = np.concatenate([0.5 * (np.arange(32) - 16), 2.0 * -np.arange(32)]).reshape(1, 64)
    np.testing.assert_array_equal(g.dequantize("q"), expected_q)
    raw = g.tensor_bytes("a")
    assert isinstance(raw, np.memmap) and raw.dtype == np.uint8 and raw.nbytes == 24
    assert not raw.flags.writeable


@pytest.mark.parametrize("name", STORIES_GGUF)
def test_stories260k_gguf_directory(name: str) -> None:
    g = GGUFFile(require(f"stories260K-gguf/{name}"))
    assert g.version == 3
    assert g.metadata["general.architecture"] == "llama"
    assert g.metadata["llama.block_count"] == 5
    assert g.metadata["llama.embedding_length"] == 64
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 512
    assert g.metadata["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    emb = g.tensors["token_embd.weight"]
    assert emb.dims == (64, 512) and emb.shape == (512, 64)
    down = g.tensors["blk.0.ffn_down.weight"]
    assert down.shape == (64, 172)
    # The data section ends exactly at the last tensor (plus alignment padding at most).
    end = max(t.offset + t.nbytes for t in g.tensors.values())
    assert 0 <= g.path.stat().st_size - end < g.alignment
    for info in g.tensors.values():
        values = g.dequantize(info.name)
        assert values.shape == info.shape and values.dtype == np.float32
        assert np.isfinite(values).all()


def test_quantized_stories_files_agree_with_f32() -> None:
    ref = GGUFFile(require("stories260K-gguf/stories260K-f16.gguf"))
    q8 = GGUFFile(require("stories260K-gguf/stories260K-q8_0.gguf"))
    assert q8.tensors["blk.0.attn_q.weight"].ggml_type is GGMLType.Q8_0
    # ffn_down stays F16 in the Q8_0 file: its 172 columns are not a multiple of 32.
    assert q8.tensors["blk.0.ffn_down.weight"].ggml_type is GGMLType.F16
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.4.ffn_up.weight"):
        a, b = ref.dequantize(name), q8.dequantize(name)
        # Q8_0 error per value is at most half a quantisation step of its block: |d| / 2.
        step = np.abs(q8.stored_rows(name).view(Q8_0_BLOCK)["d"].astype(np.float32)).repeat(32, axis=-1)
        assert (np.abs(a - b) <= step / 2 + 1e-3 * np.abs(a)).all()


@pytest.mark.parametrize("path", params_for("llama-cpp-vocab", "*.gguf"))
def test_every_vocab_only_gguf_opens(path: Path | None) -> None:
    if path is None:
        require("llama-cpp-vocab")
        return
    g = GGUFFile(path)
    tokens = g.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) > 1000
    assert g.metadata["tokenizer.ggml.model"] in ("llama", "gpt2", "bert")
    if "tokenizer.ggml.merges" in g.metadata:
        assert all(" " in m for m in g.metadata["tokenizer.ggml.merges"][:100])
    json.dumps(g.metadata)  # plain Python values throughout


def _message(path: Path) -> str:
    with pytest.raises(ModelFileError) as info:
        GGUFFile(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    return message


def test_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert "not a GGUF file" in _message(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert "truncated" in _message(tmp_path / "empty.gguf")
    assert "no such GGUF file" in _message(tmp_path / "absent.gguf")


@pytest.mark.parametrize("version", [1, 4])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    path = _write_gguf(tmp_path / "v.gguf", version=version)
    assert f"GGUF version {version} is not supported" in _message(path)


def test_unknown_tensor_type(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "t.gguf", tensors=[("w", (4,), 99, bytes(16))])
    assert "tensor 'w' has unknown ggml type 99" in _message(path)


def test_unknown_value_type(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "t.gguf", kv=[("k", 42, b"")])
    assert "unknown GGUF value type 42" in _message(path)


def test_unsupported_known_tensor_type_fails_on_read(tmp_path: Path) -> None:
    """Q8_K is llama.cpp's activation type: a known block size, but nothing dequantizes it."""
    path = _write_gguf(tmp_path / "t.gguf", tensors=[("w", (256,), int(GGMLType.Q8_K), bytes(292))])
    g = GGUFFile(path)
    assert g.tensors["w"].nbytes == 292
    with pytest.raises(
        ModelFileError, match=r"tensor 'w' is Q8_K, which is not supported \(supported: F32, F16, Q4_0"
    ):
        g.dequantize("w")
    with pytest.raises(ModelFileError, match="has no tensor named 'nope'"):
        g.tensor_bytes("nope")


def test_q8_0_row_not_a_block_multiple(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "t.gguf", tensors=[("w", (40,), int(GGMLType.Q8_0), bytes(68))])
    assert "not a multiple of the Q8_0 block of 32" in _message(path)


@pytest.mark.parametrize("keep", [10, 30, 1000, -1])
def test_truncated_real_file(tmp_path: Path, keep: int) -> None:
    """Cut inside the header, the metadata, the vocabulary, and the last tensor."""
    source = require("stories260K-gguf/stories260K-q8_0.gguf")
    data = source.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:keep])
    message = _message(path)
    assert "the file is truncated" in message
    if keep == -1:
        last = max(GGUFFile(source).tensors.values(), key=lambda t: t.offset)
        assert f"tensor {last.name!r} needs bytes {last.offset}..{last.offset + last.nbytes}" in message


def test_big_endian_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "be.gguf"
    path.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    assert "big-endian GGUF file" in _message(path)
