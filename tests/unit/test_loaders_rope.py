"""RoPE context extension as HuggingFace computes it (linear and llama3), and its config parsing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lpu_runtime.config import RopeScaling
from lpu_runtime.kernels import RopeTables, scaled_inv_freq
from lpu_runtime.loaders.hf import read_hf_config


def test_linear_scaling_divides_positions() -> None:
    plain = RopeTables.build(16, 64, 10000.0)
    scaled = RopeTables.build(16, 128, 10000.0, RopeScaling("linear", 2.0))
    np.testing.assert_allclose(scaled.cos[2 * np.arange(64)], plain.cos[:64], atol=1e-6)
    np.testing.assert_allclose(scaled.sin[2 * np.arange(64)], plain.sin[:64], atol=1e-6)


def test_llama3_scaling_keeps_high_frequencies_stretches_low_ones_and_blends_between() -> None:
    head_dim, theta = 128, 500000.0
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    s = RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)
    out = scaled_inv_freq(inv, s)
    wavelen = 2 * np.pi / inv
    high = wavelen < 8192 / 4.0
    low = wavelen > 8192 / 1.0
    mid = ~high & ~low
    assert high.any() and low.any() and mid.any()
    np.testing.assert_array_equal(out[high], inv[high])
    np.testing.assert_allclose(out[low], inv[low] / 32.0)
    assert np.all(out[mid] < inv[mid]) and np.all(out[mid] > inv[mid] / 32.0)
    # transformers 4.43's scalar loop in _compute_llama3_parameters, which introduced this scaling
    want = []
    for freq in inv:
        w = 2 * math.pi / freq
        if w < 8192 / 4.0:
            want.append(freq)
        elif w > 8192 / 1.0:
            want.append(freq / 32.0)
        else:
            smooth = (8192 / w - 1.0) / (4.0 - 1.0)
            want.append((1 - smooth) * freq / 32.0 + smooth * freq)
    np.testing.assert_allclose(out, want, rtol=1e-12)


def test_hf_config_reads_rope_scaling_and_qwen2_biases(tmp_path: Path) -> None:
    base = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
        "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(base))
    cfg = read_hf_config(tmp_path, "m")
    assert cfg.rope_scaling == RopeScaling("llama3", 32.0, 1.0, 4.0, 8192) and cfg.max_context == 131072
    assert not cfg.attention_bias and not cfg.tied_embeddings
    qwen = {**base, "architectures": ["Qwen2ForCausalLM"], "rope_scaling": None, "tie_word_embeddings": True,
            "sliding_window": 4096, "use_sliding_window": False}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(qwen))
    cfg = read_hf_config(tmp_path, "q")
    assert (
        cfg.attention_bias and cfg.tied_embeddings and cfg.rope_scaling is None and cfg.max_context == 131072
    )
    mistral = {**base, "architectures": ["MistralForCausalLM"], "rope_scaling": None, "sliding_window": 4096}
    (tmp_path / "config.json").write_text(json.dumps(mistral))
    assert read_hf_config(tmp_path, "m").max_context == 4096  # within the window, full attention is exact
