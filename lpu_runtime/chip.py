"""One emulated chip: its SRAM bytes, the tensors resident there, and the kernels that read them.

A chip's kernels take their weights and KV cache only from views into its own SRAM; the performance model
charges every op to the chip's cycle counters.
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import NDArray

from lpu_runtime import perfmodel
from lpu_runtime.compiler import ChipPlan, TensorShard
from lpu_runtime.config import ChipSpec
from lpu_runtime.errors import SramOverflowError
from lpu_runtime.gemm import Int8Gemm, int8_linear
from lpu_runtime.kernels import causal_attention
from lpu_runtime.model import TokenBatch


class Chip:
    def __init__(self, plan: ChipPlan, spec: ChipSpec, gemm: Int8Gemm) -> None:
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
        self.gemm = gemm
        # Only the planned high-water mark is backed by host memory; pages are touched as they are written.
        self.sram = np.empty(plan.used_bytes, dtype=np.uint8)  # (used_bytes,) uint8
        self._views: dict[str, np.ndarray] = {}
        for region, shard in zip(plan.regions, plan.shards, strict=True):
            raw = self.sram[region.offset : region.end]
            self._views[shard.tensor] = raw.view(np.dtype(shard.dtype)).reshape(shard.shape)
        self.shards: dict[str, TensorShard] = {s.tensor: s for s in plan.shards}
        self.busy_cycles = 0  # cycles spent on ops since start
        self.step_cycles = 0  # cycles of the current pipeline stage, reset by the pipeline

    def tensor(self, name: str) -> np.ndarray:
        """A view of a resident tensor, straight into this chip's SRAM."""
        return self._views[name]

    def write(self, name: str, value: np.ndarray) -> None:
        """Copies data into a resident tensor (weights at load time, activations arriving over a link)."""
        view = self._views[name]
        if value.shape != view.shape:
            raise ValueError(f"chip {self.chip_id}: {name} expects shape {view.shape}, got {value.shape}")
        view[...] = value

    def charge(self, cycles: int) -> None:
        self.busy_cycles += cycles
        self.step_cycles += cycles

    def linear(self, x: NDArray[np.float32], name: str) -> NDArray[np.float32]:
        """x: (n_tokens, in) float32 times this chip's int8 shard of `name` -> (n_tokens, rows) float32."""
        w = self._views[name]  # (rows, in) int8
        self.charge(perfmodel.linear_cycles(self.spec, x.shape[0], w.shape[0], w.shape[1]))
        y = int8_linear(x, w, self._views[f"{name}.scale"], self.gemm)
        bias = self._views.get(f"{name}.bias")  # (rows,) float32, only on biased projections
        return y if bias is None else y + bias

    def embed(self, token_ids: NDArray[np.int64]) -> tuple[NDArray[np.bool_], NDArray[np.float32]]:
        """Rows of the embedding table this chip holds: (mask of tokens it owns, (n_owned, dim) float32)."""
        start, stop = self.shards["tok_embeddings"].rows
        owned = (token_ids >= start) & (token_ids < stop)
        local = token_ids[owned] - start
        table = self._views["tok_embeddings"]  # (rows, dim) int8
        rows = table[local].astype(np.float32) * self._views["tok_embeddings.scale"][local][:, None]
        self.charge(perfmodel.op_cycles(self.spec, bytes_moved=rows.size * 5))
        return owned, rows

    def attention(
        self,
        layer: int,
        q: NDArray[np.float32],
        k: NDArray[np.float32],
        v: NDArray[np.float32],
        batch: TokenBatch,
    ) -> NDArray[np.float32]:
        """Attention over this chip's KV heads, with its KV cache in its SRAM (fp16).

        q: (n_tokens, local_heads, head_dim); k, v: (n_tokens, local_kv_heads, head_dim) float32.
        """
        k_cache = self._views[f"layers.{layer}.k_cache"]  # (kv_tokens, local_kv_heads, head_dim) float16
        v_cache = self._views[f"layers.{layer}.v_cache"]
        out = np.empty_like(q)
        for s in batch.seqs:
            rows = slice(s.row, s.row + s.n_tokens)
            new_slots = s.kv_slots[s.start_pos : s.start_pos + s.n_tokens]
            k_cache[new_slots] = k[rows]
            v_cache[new_slots] = v[rows]
            keys = k_cache[s.kv_slots].astype(np.float32)  # (n_ctx, local_kv_heads, head_dim)
            values = v_cache[s.kv_slots].astype(np.float32)
            out[rows] = causal_attention(q[rows], keys, values, s.start_pos)
        seqs = [(s.n_tokens, len(s.kv_slots)) for s in batch.seqs]  # one batched op over every sequence
        self.charge(perfmodel.attention_cycles(self.spec, seqs, q.shape[1], k.shape[1], q.shape[2]))
        return out
