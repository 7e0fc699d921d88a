"""The analytic performance model of an LPU: the only source of emulated time.

Every op on a chip costs a fixed issue/drain latency plus the larger of its SRAM traffic and its arithmetic
(the chip streams operands from SRAM while the matrix units compute, so the slower of the two bounds it):

    cycles(op) = op_latency + ceil(clock_hz * max(bytes / sram_bandwidth, int8_ops / int8_peak + flops / fp16_peak))

A transfer between chips costs hops * hop_latency + bytes / link_bandwidth. The compiler estimates stage times
with these functions and the executor charges the simulated clock with the same ones, so the plan and the
emulated figures agree. All results are integer cycles; nothing here reads wall time.
"""

from __future__ import annotations

from lpu_runtime.config import ChipSpec, ModelConfig

FP32_BYTES = 4
FP16_BYTES = 2


def op_cycles(chip: ChipSpec, *, bytes_moved: float, int8_ops: float = 0.0, flops: float = 0.0) -> int:
    memory_s = bytes_moved / chip.sram_bandwidth_bytes_per_s
    compute_s = int8_ops / chip.int8_ops_per_s + flops / chip.fp16_flops_per_s
    return chip.op_latency_cycles + chip.cycles(max(memory_s, compute_s))


def linear_cycles(chip: ChipSpec, n_tokens: int, out_features: int, in_features: int) -> int:
    """An int8 GEMM reading its weight once: int8 weights + fp32 scales, int8 inputs, fp32 outputs."""
    weight_bytes = out_features * in_features + out_features * FP32_BYTES
    act_bytes = n_tokens * (in_features + out_features * FP32_BYTES)
    return op_cycles(
        chip, bytes_moved=weight_bytes + act_bytes, int8_ops=2.0 * n_tokens * out_features * in_features
    )


def vector_cycles(chip: ChipSpec, n_elements: int, flops_per_element: float) -> int:
    """Elementwise/normalisation work on fp32 activations (RMSNorm, RoPE, SiLU, residual adds)."""
    return op_cycles(chip, bytes_moved=2.0 * n_elements * FP32_BYTES, flops=n_elements * flops_per_element)


def attention_cycles(
    chip: ChipSpec, n_new: int, n_ctx: int, n_heads: int, n_kv_heads: int, head_dim: int
) -> int:
    """Causal attention of n_new queries over n_ctx cached positions, fp16 KV read from SRAM."""
    kv_bytes = 2.0 * n_ctx * n_kv_heads * head_dim * FP16_BYTES
    flops = 4.0 * n_new * n_ctx * n_heads * head_dim  # QK^T and PV, a multiply-add = 2 flops
    return op_cycles(chip, bytes_moved=kv_bytes, flops=flops + 5.0 * n_new * n_ctx * n_heads)


def link_cycles(chip: ChipSpec, nbytes: int, hops: int = 1) -> int:
    """One chip-to-chip transfer over a single link."""
    seconds = hops * chip.hop_latency_ns * 1e-9 + nbytes / chip.link_bandwidth_bytes_per_s
    return chip.cycles(seconds)


def allgather_cycles(chip: ChipSpec, shard_bytes: int, group: int) -> int:
    """Each of `group` chips sends its shard to every other over its own links, in parallel."""
    if group <= 1:
        return 0
    peers_per_link = -(-(group - 1) // chip.n_links)  # links carry this many shards one after another
    return link_cycles(chip, shard_bytes * peers_per_link)


def layer_vector_cycles(chip: ChipSpec, config: ModelConfig, n_tokens: int, width: int) -> int:
    """The non-GEMM work of one decoder layer on one of `width` tensor-parallel chips."""
    # two RMSNorms and two residual adds over dim; RoPE over q and k; SiLU-gate over the FFN shard.
    elements = n_tokens * (
        4 * config.dim + (config.dim + config.kv_dim) // width + 2 * config.ffn_dim // width
    )
    return vector_cycles(chip, elements, flops_per_element=4.0)


def layer_cycles(chip: ChipSpec, config: ModelConfig, n_tokens: int, n_ctx: int, width: int = 1) -> int:
    """Estimated cycles of one decoder layer split `width` ways: the compiler's balancing cost."""
    d, kv, f = config.dim, config.kv_dim, config.ffn_dim
    gemms = sum(
        linear_cycles(chip, n_tokens, -(-out // width), inp)
        for out, inp in ((d, d), (kv, d), (kv, d), (d, d), (f, d), (f, d), (d, f))
    )
    kv_local = -(-config.n_kv_heads // width)
    heads_local = kv_local * (config.n_heads // config.n_kv_heads)
    attn = attention_cycles(chip, n_tokens, n_ctx, heads_local, kv_local, config.head_dim)
    gathers = 5 * allgather_cycles(chip, n_tokens * max(d, f) // width * FP32_BYTES, width)
    return gemms + attn + layer_vector_cycles(chip, config, n_tokens, width) + gathers
