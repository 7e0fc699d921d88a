"""One emulated chip: its SRAM bytes, the tensors resident there, and the kernels that read them.

Every weight, scale, bias, KV cache and buffer is a numpy view into the chip's one SRAM byte array, and its
linear ops are prepared once from those views (never from copies), so the SRAM is the only place the
chip's weights live. Each op charges the chip its cycles for every micro-batch of the step separately
(the host computes the step's micro-batches together; the emulated pipeline runs them one behind another).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from lpu_runtime import perfmodel
from lpu_runtime.backend import KernelBackend, PreparedLinear, QuantizedActs
from lpu_runtime.compiler import ChipPlan, TensorShard
from lpu_runtime.config import ChipSpec
from lpu_runtime.errors import SramOverflowError
from lpu_runtime.model import TokenBatch

F32 = NDArray[np.float32]
LinearKey = tuple[str | int, ...]  # the matrices' names a prepared op runs (and, for one expert, its index)


@lru_cache(maxsize=8192)
def linear_costs(chip: ChipSpec, tokens: tuple[int, ...], rows: int, cols: int) -> tuple[int, ...]:
    """Cycles of an int8 GEMM for each micro-batch's token count."""
    return tuple(perfmodel.linear_cycles(chip, n, rows, cols) for n in tokens)


@lru_cache(maxsize=8192)
def vector_costs(chip: ChipSpec, tokens: tuple[int, ...], elements_per_token: int) -> tuple[int, ...]:
    """Cycles of one vector op (a norm, RoPE, a quantize, a residual add) for each micro-batch."""
    return tuple(
        perfmodel.vector_cycles(chip, n * elements_per_token, perfmodel.VECTOR_FLOPS_PER_ELEMENT)
        for n in tokens
    )


@lru_cache(maxsize=8192)
def gather_costs(
    chip: ChipSpec, tokens: tuple[int, ...], row_bytes: int, group: int, hops: int
) -> tuple[int, ...]:
    """Cycles of an all-gather of `row_bytes` per token per chip over `hops`, for each micro-batch."""
    return tuple(perfmodel.allgather_cycles(chip, n * row_bytes, group, hops) for n in tokens)


class Chip:
    def __init__(self, plan: ChipPlan, spec: ChipSpec, backend: KernelBackend) -> None:
        if plan.used_bytes > spec.sram_bytes:
            raise SramOverflowError(
                f"chip {plan.chip_id}: plan uses {plan.used_bytes:,} bytes, SRAM holds {spec.sram_bytes:,}"
            )
        ends = sorted((r.offset, r.end) for r in plan.regions)
        for (_, end_a), (start_b, _) in itertools.pairwise(ends):
            if start_b < end_a:
                raise SramOverflowError(f"chip {plan.chip_id}: overlapping SRAM regions in its plan")
        self.chip_id = plan.chip_id
        self.plan = plan
        self.spec = spec
        self.backend = backend
        # Only the planned high-water mark is backed by host memory; pages are touched as they are written.
        self.sram = np.empty(plan.used_bytes, dtype=np.uint8)  # (used_bytes,) uint8
        self._views: dict[str, np.ndarray] = {}
        for region, shard in zip(plan.regions, plan.shards, strict=True):
            raw = self.sram[region.offset : region.end]
            self._views[shard.tensor] = raw.view(np.dtype(shard.dtype)).reshape(shard.shape)
        self.shards: dict[str, TensorShard] = {s.tensor: s for s in plan.shards}
        # Linear ops are prepared at load time (`prepare_linear`) from the SRAM views, never copies: the
        # kernels read the chip's own bytes on every call.
        self._linears: dict[LinearKey, PreparedLinear] = {}
        self.busy_cycles = 0  # cycles spent on ops since start
        self.micro_tokens: tuple[int, ...] = (0,)  # tokens of each micro-batch of the current step
        self.micro_seqs: tuple[int, ...] = (0,)  # sequences of each micro-batch of the current step
        self.step_cycles = [0]  # cycles of each micro-batch in the current step
        self._attention_costs: tuple[TokenBatch | None, list[int]] = (None, [])

    def tensor(self, name: str) -> np.ndarray:
        """A view of a resident tensor, straight into this chip's SRAM."""
        return self._views[name]

    def write(self, name: str, value: np.ndarray) -> None:
        """Copies data into a resident tensor (weights at load time, activations arriving over a link)."""
        view = self._views[name]
        if value.shape != view.shape:
            raise ValueError(f"chip {self.chip_id}: {name} expects shape {view.shape}, got {value.shape}")
        view[...] = value

    def begin_step(self, batch: TokenBatch) -> None:
        self.micro_tokens = batch.micro_tokens
        self.micro_seqs = batch.micro_seq_counts
        self.step_cycles = [0] * len(self.micro_tokens)

    def charge(self, cycles: Sequence[int]) -> None:
        """Charges each micro-batch of the step its cycles."""
        self.step_cycles = [a + b for a, b in zip(self.step_cycles, cycles, strict=True)]
        self.busy_cycles += sum(cycles)

    def cols(self, name: str) -> int:
        """Input features of a resident matrix."""
        return int(self._views[name].shape[1])

    def prepare_linear(
        self, names: tuple[str, ...], rows: tuple[int, int] | None = None, key: LinearKey | None = None
    ) -> None:
        """Binds one kernel op to this chip's shards of the matrices `names`, which read the same input: all
        their local rows, or rows [start, stop) of each (one expert of an expert-stacked matrix). The op keeps
        views of the SRAM, never copies. It is run by `key` (default: the names)."""
        a, b = rows or (0, None)

        def part(n: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            bias = self._views.get(f"{n}.bias")
            return self._views[n][a:b], self._views[f"{n}.scale"][a:b], None if bias is None else bias[a:b]

        self._linears[key or names] = self.backend.prepare_linear([part(n) for n in names])

    def linear(self, x: QuantizedActs, key: LinearKey, outs: Sequence[F32], cycles: Sequence[int]) -> None:
        """x (n, in) int8 times this chip's int8 rows of each matrix of the prepared op `key`, written into
        outs (n, rows) float32; charges each micro-batch its `cycles` (the caller's cost of the op, computed
        once per shape)."""
        self.charge(cycles)
        self.run(x, key, outs)

    def run(self, x: QuantizedActs, key: LinearKey, outs: Sequence[F32]) -> None:
        """The prepared op `key` without a charge: for ops whose caller charges a whole block at once."""
        self._linears[key](x, outs)

    def embed(self, token_ids: NDArray[np.int64], out: F32) -> None:
        """Writes the rows of the embedding table this chip holds into out (n_tokens, dim) float32.

        Every chip of the group is charged the lookup of every token, whichever shard holds it (a
        vocabulary shard cannot know in advance which tokens will be its own).
        """
        start, stop = self.shards["tok_embeddings"].rows
        owned = (token_ids >= start) & (token_ids < stop)
        local = token_ids[owned] - start
        table = self._views["tok_embeddings"]  # (rows, dim) int8
        out[owned] = table[local].astype(np.float32) * self._views["tok_embeddings.scale"][local][:, None]
        dim = table.shape[1]
        self.charge([perfmodel.op_cycles(self.spec, bytes_moved=n * dim * 5) for n in self.micro_tokens])

    def attention(
        self, layer: int, q: F32, k: F32, v: F32, batch: TokenBatch, out: F32, n_heads: int
    ) -> None:
        """Stores this step's k, v in this chip's fp16 KV cache, then attends over its KV heads into out.

        q, out: (n_tokens, local_heads, head_dim); k, v: (n_tokens, local_kv_heads, head_dim) float32.
        """
        k_cache = self._views[f"layers.{layer}.k_cache"]  # (kv_tokens, local_kv_heads, head_dim) float16
        v_cache = self._views[f"layers.{layer}.v_cache"]
        paged = batch.paged
        self.backend.store_kv(k, v, k_cache, v_cache, paged.new_slots)
        self.backend.attention(q, k_cache, v_cache, paged, out)
        # Every layer of the step attends over the same contexts with the same heads: cost it once.
        if self._attention_costs[0] is not batch:
            kv_heads, head_dim = k_cache.shape[1], k_cache.shape[2]
            costs = [
                perfmodel.attention_cycles(self.spec, seqs, n_heads, kv_heads, head_dim)
                for seqs in batch.micro_contexts
            ]
            self._attention_costs = (batch, costs)
        self.charge(self._attention_costs[1])
