"""The kernel backend on the compiled C kernels (lpu_runtime/csrc, wrapped by native.py).

int8 weights are read in place from the chips' SRAM and summed exactly in int32 (AVX2 where the CPU has it),
the norms and SwiGLU quantize as they go, and attention runs over the paged fp16 cache for the whole batch
in one call. Why these kernels and not a library's: docs/kernels.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lpu_runtime import native
from lpu_runtime.backend import F16, F32, I8, I64, NumpyBackend, PreparedLinear, QuantizedActs
from lpu_runtime.kernels import RopeTables
from lpu_runtime.model import PagedBatch

# The attention kernel works on heads in 8-lane vectors; other head widths (rare) take the numpy path.
ATTENTION_LANES = 8


@dataclass(frozen=True)
class NativeLinear:
    w: I8  # (rows, in) int8, a view into the chip's SRAM
    scale: F32  # (rows,) float32 view
    bias: F32 | None  # (rows,) float32 view

    def __call__(self, x: QuantizedActs, out: F32) -> None:
        native.linear_s8(x.q, x.scale, self.w, self.scale, self.bias, out)


class NativeBackend:
    name = "native"

    def __init__(self) -> None:
        if not native.AVAILABLE:
            raise RuntimeError(native.UNAVAILABLE_REASON)
        self._fallback = NumpyBackend()

    def prepare_linear(self, w: I8, scale: F32, bias: F32 | None) -> PreparedLinear:
        return NativeLinear(w, scale, bias)

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

    def attention(self, q: F32, k_cache: F16, v_cache: F16, paged: PagedBatch, out: F32) -> None:
        if q.shape[-1] % ATTENTION_LANES:
            self._fallback.attention(q, k_cache, v_cache, paged, out)
            return
        native.attention(
            q, k_cache, v_cache, paged.seq_rows, paged.start_pos, paged.slot_offsets, paged.slots, out
        )
