"""Kernel backends: the exact int8 GEMM, activation quantization and attention the emulated chips run.

A linear op is prepared once at load time from views into a chip's SRAM (weight, scale, bias) and then runs
on activations quantized once per input (`QuantizedActs`), which every matrix and every tensor-parallel rank
that reads the input shares. The prepared op keeps only the views: the SRAM bytes stay the one copy of the
weights, so a byte changed in a chip's arena changes what the chip computes.

`NumpyBackend` is the reference: int8 x int8 summed exactly through float32 BLAS over K-chunks (gemm.py),
numpy RMSNorm and SiLU, and attention one sequence at a time over the fp16 cache converted to float32.
`NativeBackend` runs the C kernels in `lpu_runtime/csrc` (exact int32 sums read straight from int8, batched
attention over the paged fp16 cache). Both are deterministic and compute every row and every attention head
on its own, so one chip and any tensor-parallel split, and a sequence batched or alone, give bit-identical
results within a backend; the two backends agree to float32 rounding (tests/unit/test_backend.py).
`Fp8Backend` is the numpy reference with FP8 (E4M3) weights and activations and exact float64 sums (fp8.py),
for a chip whose weights are FP8 (`backend_for`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.config import ChipSpec
from lpu_runtime.fp8 import quantize_activations_fp8, scaled_fp8_gemm
from lpu_runtime.gemm import NumpyExactGemm, scaled_int8_gemm
from lpu_runtime.kernels import RopeTables, causal_attention, rmsnorm, silu
from lpu_runtime.model import PagedBatch
from lpu_runtime.quant import quantize_activations

log = logging.getLogger(__name__)

F32 = NDArray[np.float32]
F16 = NDArray[np.float16]
I8 = NDArray[np.int8]
I64 = NDArray[np.int64]

BACKEND_ENV = "LPU_KERNELS"  # "native" or "numpy"; default: native when the extension is built


@dataclass(frozen=True)
class QuantizedActs:
    """Activations as every GEMM reads them: quantized once per token."""

    q: I8  # (n_tokens, features) int8 in [-127, 127], or E4M3 codes (viewed as int8) for FP8 weights
    scale: F32  # (n_tokens,) float32: row i is q[i] * scale[i]

    @property
    def n_tokens(self) -> int:
        return int(self.q.shape[0])


class PreparedLinear(Protocol):
    def __call__(self, x: QuantizedActs, outs: Sequence[F32]) -> None:
        """Writes x @ W.T (+ bias) of each of its matrices as (n_tokens, rows) float32 into the matching
        `outs` entry, which may be a column slice of a wider array."""
        ...


LinearWeights = tuple[I8, F32, F32 | None]  # (rows, in) int8, (rows,) scale, (rows,) bias or None: SRAM views


class KernelBackend(Protocol):
    name: str

    def prepare_linear(self, parts: Sequence[LinearWeights]) -> PreparedLinear:
        """One op for one matrix, or for several that read the same input (q/k/v, gate/up): run together."""
        ...

    def quantize(self, x: F32) -> QuantizedActs: ...

    def rmsnorm(self, x: F32, weight: F32, eps: float) -> F32: ...

    def rmsnorm_quantize(self, x: F32, weight: F32, eps: float) -> QuantizedActs: ...

    def silu_mul_quantize(self, gate: F32, up: F32) -> QuantizedActs: ...

    def rope(self, x: F32, positions: I64, tables: RopeTables) -> F32:
        """Rotate-half RoPE of x (n_tokens, heads, head_dim), bit-identical to `RopeTables.apply`; may
        rotate x in place."""
        ...

    def store_kv(self, k: F32, v: F32, k_cache: F16, v_cache: F16, slots: I64) -> None:
        """k, v (n_tokens, kv_heads, head_dim) float32 into the fp16 caches at `slots` (round to nearest even)."""
        ...

    def attention(self, q: F32, k_cache: F16, v_cache: F16, paged: PagedBatch, out: F32) -> None:
        """Causal attention of q (n_tokens, heads, head_dim) over the cache's KV heads, into out."""
        ...


@dataclass(frozen=True)
class NumpyLinear:
    parts: tuple[LinearWeights, ...]
    gemm: NumpyExactGemm

    def __call__(self, x: QuantizedActs, outs: Sequence[F32]) -> None:
        for (w, scale, bias), out in zip(self.parts, outs, strict=True):
            y = scaled_int8_gemm(x.q, x.scale, w, scale, self.gemm)  # (n_tokens, rows)
            out[...] = y if bias is None else y + bias


class NumpyBackend:
    """The reference kernels: pure numpy, exact int32 sums through float32 BLAS over K-chunks."""

    name = "numpy"

    def __init__(self) -> None:
        self.gemm = NumpyExactGemm()

    def prepare_linear(self, parts: Sequence[LinearWeights]) -> PreparedLinear:
        return NumpyLinear(tuple(parts), self.gemm)

    def quantize(self, x: F32) -> QuantizedActs:
        return QuantizedActs(*quantize_activations(x))

    def rmsnorm(self, x: F32, weight: F32, eps: float) -> F32:
        return rmsnorm(x, weight, eps)

    def rmsnorm_quantize(self, x: F32, weight: F32, eps: float) -> QuantizedActs:
        return self.quantize(rmsnorm(x, weight, eps))

    def silu_mul_quantize(self, gate: F32, up: F32) -> QuantizedActs:
        return self.quantize(silu(gate) * up)

    def rope(self, x: F32, positions: I64, tables: RopeTables) -> F32:
        return tables.apply(x, positions)

    def store_kv(self, k: F32, v: F32, k_cache: F16, v_cache: F16, slots: I64) -> None:
        k_cache[slots] = k
        v_cache[slots] = v

    def attention(self, q: F32, k_cache: F16, v_cache: F16, paged: PagedBatch, out: F32) -> None:
        rows, offsets = paged.seq_rows, paged.slot_offsets
        for i in range(len(paged.start_pos)):
            r0, r1 = int(rows[i]), int(rows[i + 1])
            slots = paged.slots[offsets[i] : offsets[i + 1]]
            keys = k_cache[slots].astype(np.float32)  # (n_ctx, kv_heads, head_dim)
            values = v_cache[slots].astype(np.float32)
            out[r0:r1] = causal_attention(q[r0:r1], keys, values, int(paged.start_pos[i]))


@dataclass(frozen=True)
class Fp8Linear:
    parts: tuple[LinearWeights, ...]

    def __call__(self, x: QuantizedActs, outs: Sequence[F32]) -> None:
        for (w, scale, bias), out in zip(self.parts, outs, strict=True):
            y = scaled_fp8_gemm(x.q, x.scale, w, scale)  # (n_tokens, rows)
            out[...] = y if bias is None else y + bias


class Fp8Backend(NumpyBackend):
    """FP8 matrix units: weights and activations in E4M3 with fp32 scales, exact sums (fp8.py); the rest as
    the numpy reference."""

    name = "fp8-numpy"

    def prepare_linear(self, parts: Sequence[LinearWeights]) -> PreparedLinear:
        return Fp8Linear(tuple(parts))

    def quantize(self, x: F32) -> QuantizedActs:
        return QuantizedActs(*quantize_activations_fp8(x))


def backend_for(chip: ChipSpec, configured: KernelBackend) -> KernelBackend:
    """The kernels a chip's weight format needs: FP8 weights run the FP8 kernels whatever was configured
    (the int8 ones, native or numpy, otherwise)."""
    return Fp8Backend() if chip.weights == "fp8" else configured


def backend_named(name: str) -> KernelBackend:
    if name == "numpy":
        return NumpyBackend()
    if name == "native":
        from lpu_runtime.native_backend import NativeBackend

        return NativeBackend()
    raise ValueError(f"unknown kernel backend {name!r} (native, numpy)")


@cache
def default_backend() -> KernelBackend:
    """`LPU_KERNELS` if set; else the native kernels when the extension is built, with a warning if not."""
    chosen = os.environ.get(BACKEND_ENV)
    if chosen:
        return backend_named(chosen)
    from lpu_runtime import native

    if native.AVAILABLE:
        return backend_named("native")
    log.warning(
        "native int8 kernels unavailable (%s): running the numpy reference kernels, several times slower; "
        "install a C compiler and reinstall lpu-serve (pip install -e .) to build them",
        native.UNAVAILABLE_REASON,
    )
    return NumpyBackend()
