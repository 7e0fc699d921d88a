"""The analytic performance model of an LPU: the only source of emulated time, and the planner's.

Every op on a chip costs a fixed latency plus the larger of its SRAM traffic and its arithmetic (the chip
streams operands from SRAM while the matrix units compute, so the slower of the two bounds it):

    cycles(op) = L_op + ceil(f * max(W / (e * B_sram) + A / B_sram,  I / P_weights + F / P_fp16))

    W  weight bytes a GEMM streams into the matrix units     A  other bytes read and written (activations, KV)
    I  GEMM ops (a multiply-add is 2), at the int8 or FP8 peak  F  fp16/fp32 flops
    f  clock (Hz)   B_sram  SRAM bandwidth   P_*  peak rates  e  weight-stream efficiency
    L_op  latency of one dependent op (fitted; so is t_hop below)

A transfer between chips costs `hops x t_hop + bytes / B_link`; an all-gather in a group of w chips sends each
shard to the w - 1 others over parallel links, ceil((w - 1) / n_links) shards per link, over one hop when the
group sits in one node and two when it spans nodes (`Placement`), as the transfers between stages.

One decoder layer on the busiest chip (rank 0) of a w-chip tensor-parallel group, for T new tokens in S
sequences attending over C cached positions each, is the chain the pipeline executes:

    layer = each vector op on its own (`layer_vector_ops`: norms, RoPE on q and on k, quantizes, residual adds,
            the dense FFN's SiLU-gate)
          + gemm(wq) + gemm(wk) + gemm(wv) + attention(S sequences x T/S queries over C positions: one op,
            every sequence's KV read from SRAM) + gather(attention) + gemm(wo) + gather(wo)
          + dense FFN: gemm(w1) + gemm(w3) + gather(w1) + gather(w3) + gemm(w2) + gather(w2)
          | MoE FFN:   gemm(router) + vector(top-k) + per local expert its tokens chose (`ExpertLoad`):
                       gemm(w1) + gemm(w3) + vector(SiLU-gate) + gemm(w2) (+ their gathers when an expert
                       spans several chips) + gather(combine)

A stage costs its units on the busiest chip; a step costs every stage plus the hop between consecutive
stages (one hop inside a node, two across nodes). Batching enters through T and S: weights are streamed once
per step whatever T is, arithmetic and KV reads grow with it, so a large enough batch turns a GEMM from
weight-bound to compute-bound.

The two fitted parameters, op latency and hop latency, live on `ChipSpec`; their values, the published
figures they are fitted to and the ones that validate them are in docs/perfmodel.md. The compiler
balances stages with these functions, the emulator charges its simulated clock with them and the planner
predicts with them, so all three agree. All results are integer cycles; nothing here reads wall time.

The GPU comparator (`gpu_step_seconds`) follows the same shape with HBM in place of SRAM; it also times the
prefill of disaggregated serving (`gpu_prefill_cycles`), whose KV then crosses to the LPUs
(`kv_transfer_cycles`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lpu_runtime.config import ChipSpec, ModelConfig
from lpu_runtime.hardware import GpuServer, GpuSpec, KvLink
from lpu_runtime.sharding import expert_shard, head_ranges, part

FP32_BYTES = 4
FP16_BYTES = 2
VECTOR_FLOPS_PER_ELEMENT = 4.0  # norms, RoPE, SiLU and residual adds: a few flops per element


def op_cycles(
    chip: ChipSpec,
    *,
    bytes_moved: float = 0.0,
    weight_bytes: float = 0.0,
    matmul_ops: float = 0.0,
    flops: float = 0.0,
) -> int:
    memory_s = (
        weight_bytes / (chip.sram_bandwidth_bytes_per_s * chip.weight_stream_efficiency)
        + bytes_moved / chip.sram_bandwidth_bytes_per_s
    )
    compute_s = matmul_ops / chip.matmul_ops_per_s + flops / chip.fp16_flops_per_s
    return chip.op_latency_cycles + chip.cycles(max(memory_s, compute_s))


def linear_cycles(chip: ChipSpec, n_tokens: int, out_features: int, in_features: int) -> int:
    """An int8 GEMM streaming its weight once: int8 weights + fp32 scales, int8 inputs, fp32 outputs."""
    return op_cycles(
        chip,
        weight_bytes=out_features * in_features + out_features * FP32_BYTES,
        bytes_moved=n_tokens * (in_features + out_features * FP32_BYTES),
        matmul_ops=2.0 * n_tokens * out_features * in_features,
    )


def vector_cycles(chip: ChipSpec, n_elements: int, flops_per_element: float) -> int:
    """Elementwise/normalisation work on fp32 activations (RMSNorm, RoPE, SiLU, residual adds)."""
    return op_cycles(chip, bytes_moved=2.0 * n_elements * FP32_BYTES, flops=n_elements * flops_per_element)


def attention_cycles(
    chip: ChipSpec, seqs: Sequence[tuple[int, int]], n_heads: int, n_kv_heads: int, head_dim: int
) -> int:
    """Causal attention of a step's sequences as one op: (n_new queries, n_ctx cached positions) each, the fp16
    KV of every sequence read from SRAM once."""
    kv_bytes = sum(2.0 * n_ctx * n_kv_heads * head_dim * FP16_BYTES for _, n_ctx in seqs)
    # QK^T and PV (a multiply-add = 2 flops), then scale, mask and softmax (~5 flops) per score.
    flops = sum(n_new * n_ctx * n_heads * (4.0 * head_dim + 5.0) for n_new, n_ctx in seqs)
    return op_cycles(chip, bytes_moved=kv_bytes, flops=flops)


@dataclass(frozen=True)
class Placement:
    """Where a tensor-parallel group's chips sit among the system's nodes. Chips of one node are wired to each
    other directly; a gather among chips of several nodes crosses two hops, as `Plan.hop_cycles` does."""

    first_chip: int = 0
    chips_per_node: int = 0  # 0: no node boundaries (a single node of any size)

    def hops(self, offset: int, width: int) -> int:
        """Hops of a gather among the `width` chips from `first_chip + offset`."""
        if self.chips_per_node == 0:
            return 1
        first = self.first_chip + offset
        return 1 if first // self.chips_per_node == (first + width - 1) // self.chips_per_node else 2


ONE_NODE = Placement()


def link_cycles(chip: ChipSpec, nbytes: int, hops: int = 1) -> int:
    """One chip-to-chip transfer over a single link."""
    seconds = hops * chip.hop_latency_ns * 1e-9 + nbytes / chip.link_bandwidth_bytes_per_s
    return chip.cycles(seconds)


def allgather_cycles(chip: ChipSpec, shard_bytes: int, group: int, hops: int = 1) -> int:
    """Each of `group` chips sends its shard to every other over its own links, in parallel."""
    if group <= 1:
        return 0
    peers_per_link = -(-(group - 1) // chip.n_links)  # links carry this many shards one after another
    return link_cycles(chip, shard_bytes * peers_per_link, hops)


def embed_cycles(
    chip: ChipSpec, config: ModelConfig, n_tokens: int, width: int, place: Placement = ONE_NODE
) -> int:
    """Embedding lookup (int8 rows + fp32 row scales) on the chip owning the rows, then the all-gather."""
    lookup = op_cycles(chip, bytes_moved=n_tokens * config.dim * (1 + FP32_BYTES))
    shard = n_tokens * config.dim * FP32_BYTES // width
    return lookup + allgather_cycles(chip, shard, width, place.hops(0, width))


def head_cycles(
    chip: ChipSpec, config: ModelConfig, n_seqs: int, width: int, place: Placement = ONE_NODE
) -> int:
    """Final RMSNorm and the LM head over each sequence's last position, vocabulary rows split `width` ways."""
    rows = part(config.vocab_size, width, 0)[1]
    return (
        vector_cycles(chip, n_seqs * config.dim, VECTOR_FLOPS_PER_ELEMENT)
        + linear_cycles(chip, n_seqs, rows, config.dim)
        + allgather_cycles(chip, n_seqs * rows * FP32_BYTES, width, place.hops(0, width))
    )


def layer_vector_ops(config: ModelConfig, width: int, rank: int = 0) -> tuple[int, ...]:
    """Elements per token of each vector op one decoder layer runs on chip `rank` of a `width`-chip group, in
    the order the chip runs them: attention RMSNorm (+ quantize), RoPE on the local q heads, RoPE on the local
    k heads, quantize the gathered attention output, residual add, FFN RMSNorm (+ quantize), SiLU-gate (+
    quantize) over the local FFN rows (dense FFN only: a MoE layer gates each expert it runs), residual add.
    Each is one dependent op on the chip, so each pays the op latency."""
    (q0, q1), (kv0, kv1) = head_ranges(config, width, rank)
    d, hd = config.dim, config.head_dim
    f0, f1 = part(config.ffn_dim, width, rank)
    swiglu = () if config.is_moe else (f1 - f0,)
    return (d, (q1 - q0) * hd, (kv1 - kv0) * hd, config.q_dim, d, d, *swiglu, d)


def layer_vector_cycles(chip: ChipSpec, config: ModelConfig, n_tokens: int, width: int) -> int:
    """The non-GEMM work of one decoder layer on the busiest of `width` tensor-parallel chips."""
    return sum(
        vector_cycles(chip, n_tokens * n, VECTOR_FLOPS_PER_ELEMENT) for n in layer_vector_ops(config, width)
    )


def attention_block_cycles(
    chip: ChipSpec,
    config: ModelConfig,
    n_tokens: int,
    n_ctx: int,
    width: int,
    n_seqs: int = 1,
    place: Placement = ONE_NODE,
) -> int:
    """Q/K/V projections, attention over the chip's heads, the output projection and their gathers."""
    d, hd, hops = config.dim, config.head_dim, place.hops(0, width)
    (q0, q1), (kv0, kv1) = head_ranges(config, width, 0)
    heads, kv_heads = q1 - q0, kv1 - kv0
    dim_rows = part(d, width, 0)[1]
    per_seq = -(-n_tokens // n_seqs)
    return (
        linear_cycles(chip, n_tokens, heads * hd, d)
        + 2 * linear_cycles(chip, n_tokens, kv_heads * hd, d)
        + attention_cycles(chip, [(per_seq, n_ctx)] * n_seqs, heads, kv_heads, hd)
        + allgather_cycles(chip, n_tokens * heads * hd * FP32_BYTES, width, hops)
        + linear_cycles(chip, n_tokens, dim_rows, config.q_dim)
        + allgather_cycles(chip, n_tokens * dim_rows * FP32_BYTES, width, hops)
    )


def dense_ffn_cycles(
    chip: ChipSpec, config: ModelConfig, n_tokens: int, width: int, place: Placement = ONE_NODE
) -> int:
    """SwiGLU split by output channels: w1 and w3 by FFN rows, w2 by model rows, each gathered."""
    d, f, hops = config.dim, config.ffn_dim, place.hops(0, width)
    ffn_rows, dim_rows = part(f, width, 0)[1], part(d, width, 0)[1]
    return (
        2 * linear_cycles(chip, n_tokens, ffn_rows, d)
        + 2 * allgather_cycles(chip, n_tokens * ffn_rows * FP32_BYTES, width, hops)
        + linear_cycles(chip, n_tokens, dim_rows, f)
        + allgather_cycles(chip, n_tokens * dim_rows * FP32_BYTES, width, hops)
    )


@dataclass(frozen=True)
class ExpertLoad:
    """What one chip of a MoE layer's group computes in one step: the tokens routed to each of its experts
    that any token chose (an expert no token chose is never read)."""

    tokens_per_expert: tuple[int, ...]  # one entry per touched local expert, each > 0

    @property
    def pairs(self) -> int:
        """Token-expert pairs this chip computes: the rows of its share of the combine."""
        return sum(self.tokens_per_expert)


def balanced_expert_load(config: ModelConfig, n_tokens: int, width: int, rank: int = 0) -> ExpertLoad:
    """The planner's routing assumption: the step's n_tokens x top-k pairs spread evenly over the experts, so
    chip `rank` computes its experts' share of them, each touched expert streaming its weights once."""
    e0, e1 = expert_shard(config, width, rank).experts
    local = e1 - e0
    pairs = -(-n_tokens * config.n_experts_per_token * local // config.n_experts)
    experts = min(local, pairs)
    per_expert = -(-pairs // experts)
    return ExpertLoad((per_expert,) * experts)


def router_cycles(chip: ChipSpec, config: ModelConfig, n_tokens: int) -> int:
    """Router logits (a GEMM every chip of the group runs on the full activations) and the top-k."""
    return linear_cycles(chip, n_tokens, config.n_experts, config.dim) + vector_cycles(
        chip, n_tokens * config.n_experts, VECTOR_FLOPS_PER_ELEMENT
    )


def expert_cycles(
    chip: ChipSpec,
    config: ModelConfig,
    n_tokens: int,
    width: int,
    rank: int = 0,
    place: Placement = ONE_NODE,
) -> int:
    """One local expert (or the chip's slice of it) over the n_tokens routed to it: gate and up, their
    gathers within the expert's chips, SiLU-gate over the chip's rows, down and its gather."""
    d, f = config.dim, config.ffn_dim
    shard = expert_shard(config, width, rank)
    ffn_rows, dim_rows = shard.ffn_rows[1] - shard.ffn_rows[0], shard.dim_rows[1] - shard.dim_rows[0]
    hops = place.hops(rank - rank % shard.group, shard.group)  # the expert's own chips, in rank order
    return (
        2 * linear_cycles(chip, n_tokens, ffn_rows, d)
        + 2 * allgather_cycles(chip, n_tokens * ffn_rows * FP32_BYTES, shard.group, hops)
        + vector_cycles(chip, n_tokens * ffn_rows, VECTOR_FLOPS_PER_ELEMENT)
        + linear_cycles(chip, n_tokens, dim_rows, f)
        + allgather_cycles(chip, n_tokens * dim_rows * FP32_BYTES, shard.group, hops)
    )


def moe_ffn_cycles(
    chip: ChipSpec,
    config: ModelConfig,
    n_tokens: int,
    width: int,
    load: ExpertLoad | None = None,
    rank: int = 0,
    place: Placement = ONE_NODE,
) -> int:
    """Router and top-k, the experts chip `rank` holds that tokens chose (expert parallel), then the combine
    gather of its token-expert pairs. `load` is what the chip computes (default: balanced routing).

    Every chip of the group already holds the full activations after the attention gathers, so dispatch is
    free; the chip holding a token's expert computes it, streaming the whole expert's weights, or, in a group
    wider than n_experts, its slice of them, gathered within the expert's chips like a dense FFN.
    """
    load = load if load is not None else balanced_expert_load(config, n_tokens, width, rank)
    return (
        router_cycles(chip, config, n_tokens)
        + sum(expert_cycles(chip, config, t, width, rank, place) for t in load.tokens_per_expert)
        + allgather_cycles(chip, load.pairs * config.dim * FP32_BYTES, width, place.hops(0, width))
    )


def layer_cycles(
    chip: ChipSpec,
    config: ModelConfig,
    n_tokens: int,
    n_ctx: int,
    width: int = 1,
    n_seqs: int = 1,
    place: Placement = ONE_NODE,
) -> int:
    """One decoder layer split `width` ways: T = n_tokens new tokens in n_seqs sequences over n_ctx positions."""
    ffn = (
        moe_ffn_cycles(chip, config, n_tokens, width, place=place)
        if config.is_moe
        else dense_ffn_cycles(chip, config, n_tokens, width, place)
    )
    return (
        layer_vector_cycles(chip, config, n_tokens, width)
        + attention_block_cycles(chip, config, n_tokens, n_ctx, width, n_seqs, place)
        + ffn
    )


GPU_KERNELS_PER_LAYER = (
    10  # norm, QKV GEMM, RoPE, attention, O GEMM, add+norm, gate/up GEMM, SiLU, down GEMM, add
)
GPU_KERNELS_HEAD = 3  # final norm, LM head GEMM, sampling


def ffn_experts_touched(config: ModelConfig, n_tokens: int) -> float:
    """Expected distinct experts a step's tokens route to (1 for a dense FFN): each streams its weights."""
    if not config.is_moe:
        return 1.0
    miss = (1.0 - config.n_experts_per_token / config.n_experts) ** n_tokens
    return config.n_experts * (1.0 - miss)


def gpu_allreduce_seconds(gpu: GpuSpec, nbytes: float, group: int) -> float:
    """Ring all-reduce over NVLink: a fixed latency plus 2 (n - 1) / n of the bytes through each GPU's link."""
    if group <= 1:
        return 0.0
    return gpu.allreduce_latency_s + 2.0 * (group - 1) / group * nbytes / gpu.nvlink_bandwidth_bytes_per_s


def gpu_step_seconds(
    server: GpuServer, config: ModelConfig, n_tokens: int, n_ctx: int, n_seqs: int = 1
) -> float:
    """One step of a tensor-parallel GPU server over all its GPUs (Megatron-style: two all-reduces a layer).

    Per layer per GPU: kernels x kernel latency + max(bytes / (e x B_hbm), flops / peak) + 2 all-reduces, where
    bytes are the layer's weights this step touches (all experts a MoE step routes to) and the fp16 KV cache.
    """
    gpu, tp, bpp = server.gpu, server.n_gpus, server.bytes_per_param
    d, q, kv, f = config.dim, config.q_dim, config.kv_dim, config.ffn_dim
    attn_params = 2 * d * q + 2 * d * kv
    ffn_params = 3 * d * f
    touched = ffn_experts_touched(config, n_tokens)
    weight_bytes = (attn_params + touched * ffn_params) * bpp / tp
    kv_bytes = n_seqs * n_ctx * 2 * kv * FP16_BYTES / tp
    flops = (
        2.0 * n_tokens * (attn_params + config.n_experts_per_token * ffn_params) + 4.0 * n_tokens * n_ctx * q
    ) / tp
    bandwidth = gpu.hbm_bandwidth_bytes_per_s * gpu.hbm_efficiency
    layer = (
        GPU_KERNELS_PER_LAYER * gpu.kernel_latency_s
        + max((weight_bytes + kv_bytes) / bandwidth, flops / server.peak_flops_per_s)
        + 2 * gpu_allreduce_seconds(gpu, n_tokens * d * FP16_BYTES, tp)
    )
    head_bytes = config.vocab_size * d * bpp / tp
    head = (
        GPU_KERNELS_HEAD * gpu.kernel_latency_s
        + max(head_bytes / bandwidth, 2.0 * n_seqs * config.vocab_size * d / tp / server.peak_flops_per_s)
        + gpu_allreduce_seconds(gpu, n_seqs * config.vocab_size * FP32_BYTES / tp, tp)
    )
    return config.n_layers * layer + head


def kv_bytes_per_token(config: ModelConfig) -> int:
    """The fp16 K and V of one token in every layer: what disaggregated serving moves per prompt token."""
    return config.n_layers * 2 * config.kv_dim * FP16_BYTES


def gpu_prefill_cycles(
    chip: ChipSpec, server: GpuServer, config: ModelConfig, n_tokens: int, n_ctx: int, n_seqs: int = 1
) -> int:
    """A prefill step on a GPU server (prefill-decode disaggregation), counted in the LPU chips' cycles."""
    return chip.cycles(gpu_step_seconds(server, config, n_tokens, n_ctx, n_seqs))


def kv_transfer_cycles(chip: ChipSpec, link: KvLink, config: ModelConfig, n_tokens: int) -> int:
    """n_tokens of KV cache from the prefill GPUs to the decode LPUs over `link`, in the LPU chips' cycles."""
    return chip.cycles(link.seconds(n_tokens * kv_bytes_per_token(config)))
