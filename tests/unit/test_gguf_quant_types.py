"""Every GGUF tensor type the `gguf` package dequantizes, in files its own writer wrote: read whole or by rows,
each equals the library's dequantization of the bytes written, and a llama whose matrices use all of them
loads tensor by tensor and runs on the emulated chips.

Where the library can quantize a type (Q4_0 ... Q8_0, BF16, TQ*, MXFP4) the bytes are real quantized
weights; for the K-quants and IQ types, whose quantizers live only in llama.cpp's C code, they are random
blocks (with their scales kept finite), which exercises every bit of the format the same way.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import quant_shape_to_byte_shape

from lpu_runtime.checkpoint_source import CheckpointSource, WeightFormat
from lpu_runtime.compiler import compile_model
from lpu_runtime.config import EngineConfig, ModelConfig, SystemSpec
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.gguf_file import GGUFFile, decodable_types
from lpu_runtime.loaders.gguf import gguf_name
from lpu_runtime.loaders.layout import rotate_half_order
from lpu_runtime.model import ReferenceModel, TokenBatch, tensor_shapes
from lpu_runtime.synthetic import synthetic_checkpoint

TYPES = sorted(decodable_types())
# What llama.cpp's quantize tool writes for weights; the rest of TYPES is asserted separately below.
COMMON = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
# Every block size divides 512 columns (32, 64, 128 and 256).
ROWS, COLS = 6, 512
# dim and FFN of 256 make every matrix a whole number of 256-value K/IQ blocks per row.
ALL_TYPES_LLAMA = ModelConfig(
    name="all-types",
    dim=256,
    n_layers=4,
    n_heads=4,
    n_kv_heads=2,
    ffn_dim=256,
    vocab_size=300,
    max_context=64,
)


def stored(values: np.ndarray, qtype: GGMLQuantizationType, rng: np.random.Generator) -> np.ndarray:
    """What a GGUF holds for float32 `values` as `qtype`: float arrays for F32/F16, block bytes otherwise."""
    if qtype is GGMLQuantizationType.F32:
        return values.astype(np.float32)
    if qtype is GGMLQuantizationType.F16:
        return values.astype(np.float16)
    try:
        blocks: np.ndarray = gguf.quants.quantize(values, qtype)
        return blocks
    except NotImplementedError:
        # Random blocks; clearing the top 3 bits of every byte keeps any fp16, e8m0 or e4m3 scale small.
        shape = quant_shape_to_byte_shape(values.shape, qtype)
        random: np.ndarray = rng.integers(0, 256, size=shape, dtype=np.uint8) & 0x1F
        return random


def library_values(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if data.dtype != np.uint8:
        return data.astype(np.float32)
    values: np.ndarray = gguf.quants.dequantize(data, qtype)
    return values


def write(path: Path, tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType]], **metadata: int) -> Path:
    writer = gguf.GGUFWriter(path, arch="llama")
    for key, value in metadata.items():
        writer.add_uint32(f"llama.{key}", value)
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_library_dequantizes_every_common_weight_type() -> None:
    names = {t.name for t in TYPES}
    assert set(COMMON) | {"F32", "F16", "BF16"} <= names
    assert {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"} <= names
    assert not names & {"Q8_1", "Q8_K", "I8", "I16", "I32", "I64", "F64"}  # activations and integers


@pytest.fixture(scope="module")
def every_type(tmp_path_factory: pytest.TempPathFactory) -> tuple[GGUFFile, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((ROWS, COLS)).astype(np.float32) * 0.05
    tensors = {f"t.{qtype.name}": (stored(values, qtype, rng), qtype) for qtype in TYPES}
    path = write(tmp_path_factory.mktemp("types") / "every-type.gguf", tensors)
    return GGUFFile(path), {name: library_values(data, qtype) for name, (data, qtype) in tensors.items()}


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_each_type_reads_whole_and_by_rows_as_the_library_dequantizes_it(
    qtype: GGMLQuantizationType, every_type: tuple[GGUFFile, dict[str, np.ndarray]]
) -> None:
    g, expected = every_type
    name = f"t.{qtype.name}"
    want = expected[name]
    assert g.info(name).ggml_type is qtype and g.info(name).shape == (ROWS, COLS)
    got = g.dequantize(name)
    assert got.dtype == np.float32 and not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(g.dequantize_rows(name, slice(2, 5)), want[2:5])
    order = np.array([5, 0, 3])
    np.testing.assert_array_equal(g.dequantize_rows(name, order), want[order])


def test_a_llama_of_every_type_loads_row_by_row_and_runs_on_the_chips(tmp_path: Path) -> None:
    cfg = ALL_TYPES_LLAMA
    floats = synthetic_checkpoint(cfg, seed=5)
    matrices = [n for n, shape in tensor_shapes(cfg).items() if len(shape) == 2]
    weight_types = [t for t in TYPES if t is not GGMLQuantizationType.F32]
    assert len(matrices) >= len(weight_types)
    rng = np.random.default_rng(1)
    tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType]] = {}
    for name in tensor_shapes(cfg):
        qtype = weight_types[matrices.index(name) % len(weight_types)] if name in matrices else TYPES[0]
        value = floats.tensor(name)
        if name.endswith((".wq", ".wk")):  # llama.cpp's interleaved RoPE order, as convert_hf_to_gguf writes
            heads = cfg.n_heads if name.endswith(".wq") else cfg.n_kv_heads
            value = value[np.argsort(rotate_half_order(value.shape[0], heads))]
        tensors[gguf_name(name, tied=False)] = (stored(value, qtype, rng), qtype)
    path = write(
        tmp_path / "all-types.gguf", tensors, block_count=cfg.n_layers, context_length=cfg.max_context,
        embedding_length=cfg.dim, feed_forward_length=cfg.ffn_dim, **{
            "attention.head_count": cfg.n_heads, "attention.head_count_kv": cfg.n_kv_heads, "vocab_size": 300,
        },
    )  # fmt: skip
    checkpoint = CheckpointSource(WeightFormat.GGUF, cfg, str(path)).open()
    for name in tensor_shapes(cfg):
        data, qtype = tensors[gguf_name(name, tied=False)]
        want = library_values(data, qtype)
        if name.endswith((".wq", ".wk")):
            heads = cfg.n_heads if name.endswith(".wq") else cfg.n_kv_heads
            want = want[rotate_half_order(want.shape[0], heads)]
        np.testing.assert_array_equal(checkpoint.tensor(name), want, err_msg=name)
        if name in matrices:
            np.testing.assert_array_equal(checkpoint.rows(name, 64, 192), want[64:192], err_msg=name)
    assert tensors["blk.0.attn_q.weight"][0].dtype == np.uint8  # weights really are blocks

    plan = compile_model(cfg, SystemSpec(2), EngineConfig(max_num_seqs=1, max_num_batched_tokens=32))
    assert len(plan.stages) == 2
    prompt = [1, 72, 105, 33, 200, 17]
    chips = PipelineExecutor(plan, checkpoint).execute(TokenBatch.single(prompt)).logits[0]
    reference = ReferenceModel(checkpoint).forward(TokenBatch.single(prompt))[0]
    assert np.isfinite(chips).all()
    error = np.sqrt(np.mean((chips - reference) ** 2) / np.mean(reference**2))
    assert error < 0.05, error  # 1.6% measured; int8 against float32 on random models stays under 6%
