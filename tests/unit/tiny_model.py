"""A tiny Llama (3 layers, GQA) that compiles and runs in milliseconds, for runtime unit tests."""

from __future__ import annotations

from lpu_runtime.config import EngineConfig, ModelConfig

TINY = ModelConfig(
    name="test-tiny",
    dim=64,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    ffn_dim=160,
    vocab_size=259,  # the byte tokenizer's, so engine tests can detokenize
    max_context=128,
)
TINY_ENGINE = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, max_kv_tokens=512)
# Heads that are not dim / n_heads wide, as Mistral-Nemo's 32 x 128 in dim 5120: wq is (96, 64), wo (64, 96).
TINY_HEAD_DIM = ModelConfig(
    name="test-tiny-head-dim",
    dim=64,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    head_dim=24,
    ffn_dim=160,
    vocab_size=259,
    max_context=128,
)
# Mixtral's shape family at toy size: 8 experts, top-2, 8 KV heads so that 8 chips hold one expert (and one KV
# head) each, and two query heads per KV head so that 16 chips can split every expert over two.
TINY_MOE = ModelConfig(
    name="test-tiny-moe",
    dim=64,
    n_layers=2,
    n_heads=16,
    n_kv_heads=8,
    head_dim=8,
    ffn_dim=32,
    vocab_size=259,
    max_context=128,
    n_experts=8,
    n_experts_per_token=2,
)
