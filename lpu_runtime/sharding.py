"""How a unit's rows, attention heads and experts are divided among the chips of a tensor-parallel group.

The compiler places shards with these ranges and the performance model costs the busiest chip with the same
ones, so the two never disagree about who holds what.
"""

from __future__ import annotations

from dataclasses import dataclass

from lpu_runtime.config import ModelConfig


def partition(n: int, parts: int) -> list[tuple[int, int]]:
    """Splits range(n) into `parts` contiguous ranges whose sizes differ by at most one."""
    return [part(n, parts, j) for j in range(parts)]


def part(n: int, parts: int, j: int) -> tuple[int, int]:
    """The j-th of `partition(n, parts)`, without building the others (the compiler asks for one per chip)."""
    base, extra = divmod(n, parts)
    start = j * base + min(j, extra)
    return start, start + base + (1 if j < extra else 0)


def layer_widths(model: ModelConfig) -> list[int]:
    """The group widths a decoder layer can be split over, ascending.

    Up to n_kv_heads chips split by whole KV heads. Beyond that, each KV head's query group is split evenly
    over m chips that each keep a copy of the head's K/V (weights and cache): widths n_kv_heads x m for every
    m dividing the group size, so a model with few KV heads (Llama-3.1-405B has 8) can still spread a layer
    too large for 8 chips. A MoE layer places whole experts on up to n_experts chips, then splits each expert
    evenly over m chips (widths n_experts x m).
    """
    group = model.n_heads // model.n_kv_heads
    widths = list(range(1, model.n_kv_heads + 1))
    widths += [model.n_kv_heads * m for m in range(2, group + 1) if group % m == 0]
    if model.is_moe:
        widths = [w for w in widths if w <= model.n_experts or w % model.n_experts == 0]
    return widths


def head_ranges(model: ModelConfig, width: int, rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(query heads, KV heads) of chip `rank` in a `width`-chip group: [start, stop) ranges."""
    group = model.n_heads // model.n_kv_heads
    if width <= model.n_kv_heads:
        kv0, kv1 = part(model.n_kv_heads, width, rank)
        return (kv0 * group, kv1 * group), (kv0, kv1)
    if width % model.n_kv_heads or group % (width // model.n_kv_heads):
        raise ValueError(f"{model.name}: a layer cannot be split {width} ways (see layer_widths)")
    q_per_chip = model.n_heads // width
    kv = rank * q_per_chip // group
    return (rank * q_per_chip, (rank + 1) * q_per_chip), (kv, kv + 1)


def replicates_kv(model: ModelConfig, width: int) -> bool:
    """Whether a layer split `width` ways keeps copies of KV heads (widths beyond n_kv_heads)."""
    return width > model.n_kv_heads


@dataclass(frozen=True)
class ExpertShard:
    """What one chip of a MoE layer's group holds of the experts."""

    experts: tuple[int, int]  # [start, stop) of the experts it holds rows of
    ffn_rows: tuple[int, int]  # rows of each held expert's w1 and w3 (all of ffn_dim: whole experts)
    dim_rows: tuple[int, int]  # rows of each held expert's w2 (all of dim: whole experts)
    group: int  # chips sharing each of its experts (1: whole experts), gathered like a dense FFN

    def stacked(self, rows: tuple[int, int], size: int) -> tuple[int, int]:
        """Its rows of an expert-stacked matrix (expert e's rows at e * size ...), contiguous by construction:
        several whole experts, or a slice of one."""
        return self.experts[0] * size + rows[0], (self.experts[1] - 1) * size + rows[1]


def expert_shard(model: ModelConfig, width: int, rank: int) -> ExpertShard:
    if width <= model.n_experts:
        return ExpertShard(part(model.n_experts, width, rank), (0, model.ffn_dim), (0, model.dim), 1)
    m = width // model.n_experts
    e, piece = divmod(rank, m)
    return ExpertShard((e, e + 1), part(model.ffn_dim, m, piece), part(model.dim, m, piece), m)
