"""The kernel backend on the compiled C kernels (lpu_runtime/csrc, wrapped by native.py).

int8 weights are read in place from the chips' SRAM and summed exactly in int32 (AVX2 where the CPU has it),
the norms and SwiGLU quantize as they go, and attention runs over the paged fp16 cache for the whole batch
in one call. Why these kernels and not a library's: docs/kernels.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lpu_runtime import native
from lpu_runtime.backend import F16, F32, I8, I64, LinearWeights, NumpyBackend, PreparedLinear, QuantizedActs
from lpu_runtime.kernels import RopeTables
from lpu_runtime.model import PagedBatch

# The attention kernel works on heads in 8-lane vectors; other head widths (rare) take the numpy path.
ATTENTION_LANES = 8


@dataclass(frozen=True)
class NativeLinear:
    """Views into the chip's SRAM, read in place by every call: one kernel call for all the matrices."""

    ws: tuple[I8, ...]  # (rows, in) int8 each
    scales: tuple[F32, ...]  # (rows,) float32 each
    biases: tuple[F32 | None, ...]

    def __call__(self, x: QuantizedActs, outs: Sequence[F32]) -> None:
        if len(self.ws) == 1:
            native.linear_s8(x.q, x.scale, self.ws[0], self.scales[0], self.biases[0], outs[0])
        else:
            native.linear_s8_multi(x.q, x.scale, self.ws, self.scales, self.biases, tuple(outs))


class NativeBackend:
    name = "native"

    def __init__(self) -> None:
        if not native.AVAILABLE:
            raise RuntimeError(native.UNAVAILABLE_REASON)
        self._fallback = NumpyBackend()

    def prepare_linear(self, parts: Sequence[LinearWeights]) -> PreparedLinear:
        ws, scales, biases = zip(*parts, strict=True)
        return NativeLinear(ws, scales, biases)

    def quantize(self, x: F32) -> QuantizedActs:
        return QuantizedActs(*native.quantize_rows(np.ascontiguousarray(x, dtype=np.float32)))

    def rmsnorm(self, x: F32, weight: F32, eps: float) -> F32:
        return native.rmsnorm(np.ascontiguousarray(x), weight, eps)

    def rmsnorm_quantize(self, x: F32, weight: F32, eps: float) -> QuantizedActs:
        return QuantizedActs(*native.rmsnorm_quantize(np.ascontiguousarray(x), weight, eps))

    def silu_mul_quantize(self, gate: F32, up: F32) -> QuantizedActs:
        return QuantizedActs(*native.silu_mul_quantize(gate, up))

    def rope(self, x: F32, positions: I64, tables: RopeTables) -> F32:
        native.rope_inplace(x, positions, tables.cos, tables.sin)
        return x

    def store_kv(self, k: F32, v: F32, k_cache: F16, v_cache: F16, slots: I64) -> None:
        native.kv_store(k, v, k_cache, v_cache, slots)

    def attention(self, q: F32, k_cache: F16, v_cache: F16, paged: PagedBatch, out: F32) -> None:
        if q.shape[-1] % ATTENTION_LANES:
            self._fallback.attention(q, k_cache, v_cache, paged, out)
            return
        native.attention(
            q, k_cache, v_cache, paged.seq_rows, paged.start_pos, paged.slot_offsets, paged.slots, out
        )
