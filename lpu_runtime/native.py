"""Compiled kernels for the emulator's hot paths: exact int8 GEMM, fused quantizers, fp16-KV attention.

The C extension `lpu_runtime._native` (lpu_runtime/csrc/lpu_kernels.c) is built by `pip install -e .` when a C
compiler is present; without one the package still installs, `AVAILABLE` is False, `UNAVAILABLE_REASON` says why,
and callers keep the numpy kernels. What each kernel computes, and which results are bit-identical to the numpy
path, is documented per function here and in docs/kernels.md.

The extension checks every argument (dtype, shape, strides, index ranges) before it touches memory, raising
TypeError or ValueError, so these wrappers only allocate outputs. Every kernel releases the GIL and runs on a
persistent pool of `num_threads()` threads (the caller plus workers); the default is the CPUs this process may run
on, or `LPU_NUM_THREADS`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

_T = TypeVar("_T")

BUILD_HINT = "install a C compiler (e.g. apt-get install gcc) and run `pip install -e .` in the project"

try:
    from lpu_runtime import _native

    UNAVAILABLE_REASON: str | None = None
except ImportError as exc:  # no compiler at install time, or a foreign platform
    UNAVAILABLE_REASON = f"the C extension lpu_runtime._native is not built ({exc}): {BUILD_HINT}"
    log.warning("%s; using the numpy kernels", UNAVAILABLE_REASON)

AVAILABLE: bool = UNAVAILABLE_REASON is None


class NativeUnavailableError(RuntimeError):
    """A native kernel was called but the extension is not built."""


def _require() -> None:
    if UNAVAILABLE_REASON is not None:
        raise NativeUnavailableError(UNAVAILABLE_REASON)


def default_num_threads() -> int:
    """`LPU_NUM_THREADS` when set (a positive integer), else the CPUs this process may run on."""
    configured = os.environ.get("LPU_NUM_THREADS", "").strip()
    if configured:
        try:
            n = int(configured)
        except ValueError:
            n = 0
        if n >= 1:
            return n
        log.warning("LPU_NUM_THREADS=%r is not a positive integer; using the CPU count", configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def isa() -> str:
    """The instruction set the kernels run with: 'avx2' (AVX2 + FMA + F16C) or 'generic' (portable C)."""
    _require()
    return _native.isa()


def set_isa(name: str) -> None:
    """Selects 'generic', 'avx2' or 'best' (the default: the best the CPU has). For tests and benchmarks: the
    portable path replays the AVX2 arithmetic, so floats are bit-identical either way."""
    _require()
    _native.set_isa(name)


def set_num_threads(n: int) -> None:
    """Threads per kernel call, the caller included (n - 1 persistent workers). Results do not depend on it."""
    _require()
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    _native.set_num_threads(n)


def num_threads() -> int:
    _require()
    return _native.num_threads()


def set_spin_us(us: float) -> None:
    """How long an idle worker spins (with pause) before it sleeps; default 100 us or `LPU_SPIN_US`."""
    _require()
    _native.set_spin_us(us)


def gemm_s8s8_s32(
    a: NDArray[np.int8], b: NDArray[np.int8], out: NDArray[np.int32] | None = None
) -> NDArray[np.int32]:
    """a: (M, K) int8, b: (N, K) int8 (rows contiguous) -> a @ b.T as (M, N) int32, exact.

    An `Int8Gemm` (lpu_runtime.gemm): drop-in for NumpyExactGemm. Any int8 values are exact, -128 included,
    as long as the activations `a` stay in [-127, 127] (our quantizers guarantee it).
    """
    _require()
    if out is None:
        out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    _native.gemm_s8s8_s32(a, b, out)
    return out


def linear_s8(
    x_q: NDArray[np.int8],
    x_scale: NDArray[np.float32],
    w: NDArray[np.int8],
    w_scale: NDArray[np.float32],
    bias: NDArray[np.float32] | None = None,
    out: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """out[m, n] = (float(acc[m, n]) * x_scale[m]) * w_scale[n] (+ bias[n]), acc = x_q @ w.T exact in int32.

    x_q: (M, K) int8; x_scale: (M,); w: (N, K) int8 with contiguous rows (any row stride: a view into SRAM, read
    in place on every call, never copied or cached); w_scale, bias: (N,) float32; out: (M, N) float32 with
    contiguous rows, any row stride (a column slice of a wider array is written in place, its other columns
    untouched). Bit-identical to numpy's `acc.astype(f32) * x_scale[:, None] * w_scale[None, :] + bias`.
    """
    _require()
    if out is None:
        out = np.empty((x_q.shape[0], w.shape[0]), dtype=np.float32)
    _native.linear_s8(x_q, x_scale, w, w_scale, bias, out)
    return out


def linear_s8_multi(
    x_q: NDArray[np.int8],
    x_scale: NDArray[np.float32],
    ws: Sequence[NDArray[np.int8]],
    w_scales: Sequence[NDArray[np.float32]],
    biases: Sequence[NDArray[np.float32] | None],
    outs: Sequence[NDArray[np.float32]] | None = None,
) -> Sequence[NDArray[np.float32]]:
    """linear_s8 for several matrices that read the same quantized input (q/k/v, gate/up), in one call.

    ws, w_scales, biases (entries may be None) and outs have one entry per matrix (outs=None: allocated);
    outs[i] = linear_s8(x_q, x_scale, ws[i], w_scales[i], biases[i]) bit for bit, with one check of x_q, one
    packing of it and one thread-pool dispatch for all the matrices (their row blocks are tasks of the same job).
    Outputs must not overlap each other (column slices of one wider array are fine). Returns outs. Lists and
    tuples go to the extension as they are; other sequences are copied into lists first.
    """
    _require()
    if outs is None:
        outs = [np.empty((x_q.shape[0], w.shape[0]), dtype=np.float32) for w in ws]
    elif not isinstance(outs, list | tuple):
        outs = list(outs)
    _native.linear_s8_multi(x_q, x_scale, _listed(ws), _listed(w_scales), _listed(biases), outs)
    return outs


def _listed(items: Sequence[_T]) -> list[_T] | tuple[_T, ...]:
    return items if isinstance(items, list | tuple) else list(items)


def _quant_outputs(
    shape: tuple[int, ...], q_out: NDArray[np.int8] | None, scale_out: NDArray[np.float32] | None
) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    q = np.empty(shape, dtype=np.int8) if q_out is None else q_out
    s = np.empty(shape[0], dtype=np.float32) if scale_out is None else scale_out
    return q, s


def quantize_rows(
    x: NDArray[np.float32],
    q_out: NDArray[np.int8] | None = None,
    scale_out: NDArray[np.float32] | None = None,
) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """x: (M, K) float32 -> ((M, K) int8, (M,) float32), bit-identical to quant.quantize_activations."""
    _require()
    q, s = _quant_outputs(x.shape, q_out, scale_out)
    _native.quantize_rows(x, q, s)
    return q, s


def rmsnorm_quantize(
    x: NDArray[np.float32],
    weight: NDArray[np.float32],
    eps: float,
    q_out: NDArray[np.int8] | None = None,
    scale_out: NDArray[np.float32] | None = None,
) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """quantize_rows(rmsnorm(x, weight, eps)) in one pass over each row.

    h = x / sqrt(mean(x^2) + eps) * weight in float32 (the sum of squares in a fixed 32-lane order, so not
    bit-identical to numpy's pairwise mean, but deterministic and per row: never dependent on M, the other rows
    or the thread count).
    """
    _require()
    q, s = _quant_outputs(x.shape, q_out, scale_out)
    _native.rmsnorm_quantize(x, weight, eps, q, s)
    return q, s


def rmsnorm(
    x: NDArray[np.float32], weight: NDArray[np.float32], eps: float, out: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    """The float32 RMSNorm of rmsnorm_quantize (same arithmetic), e.g. for the LM head's input."""
    _require()
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    _native.rmsnorm(x, weight, eps, out)
    return out


def silu_mul_quantize(
    g: NDArray[np.float32],
    u: NDArray[np.float32],
    q_out: NDArray[np.int8] | None = None,
    scale_out: NDArray[np.float32] | None = None,
) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """quantize_rows(g / (1 + exp(-g)) * u): SwiGLU's hidden state, quantized for w2. g, u: (M, F) float32.

    exp is an 8-lane polynomial (about 2 ulp) run through the same code for every element, tails included.
    """
    _require()
    q, s = _quant_outputs(g.shape, q_out, scale_out)
    _native.silu_mul_quantize(g, u, q, s)
    return q, s


def attention(
    q: NDArray[np.float32],
    k_cache: NDArray[np.float16],
    v_cache: NDArray[np.float16],
    seq_rows: NDArray[np.int64],
    seq_start_pos: NDArray[np.int64],
    slot_offsets: NDArray[np.int64],
    slots: NDArray[np.int64],
    out: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Causal grouped-query attention for a flat batch of sequences over a paged fp16 KV cache.

    q: (T, Hq, D) float32, each row's (Hq, D) block contiguous, any row stride; k_cache, v_cache: (S, Hkv, D)
    float16, C-contiguous; D a multiple of 8. Sequence i owns rows seq_rows[i]:seq_rows[i+1], its first row is
    at position seq_start_pos[i], and its slot table slots[slot_offsets[i]:slot_offsets[i+1]] covers positions
    0 .. start + n_rows - 1 (the new tokens' K/V already stored). Row r at position p attends to positions
    0..p with query head h reading KV head h // (Hq // Hkv). Returns out (T, Hq, D) (rows of no sequence are
    left as they were).

    out[r, h] depends only on q[r, h], the K/V it reads and p: not on the other rows, sequences or heads of the
    call, the tiling or the thread count, so a sequence alone and in a batch, or all heads and a subset of them,
    give bit-identical results.
    """
    _require()
    if out is None:
        out = np.empty(q.shape, dtype=np.float32)
    _native.attention(q, k_cache, v_cache, seq_rows, seq_start_pos, slot_offsets, slots, out)
    return out


def kv_store(
    k: NDArray[np.float32],
    v: NDArray[np.float32],
    k_cache: NDArray[np.float16],
    v_cache: NDArray[np.float16],
    slots: NDArray[np.int64],
) -> None:
    """k_cache[slots] = k; v_cache[slots] = v (float32 -> float16, round to nearest even), as numpy does it.

    k, v: (T, Hkv, D) float32, any row stride; caches: (S, Hkv, D) float16, C-contiguous.
    """
    _require()
    _native.kv_store(k, v, k_cache, v_cache, slots)


def rope_inplace(
    x: NDArray[np.float32], positions: NDArray[np.int64], cos: NDArray[np.float32], sin: NDArray[np.float32]
) -> None:
    """Rotate-half RoPE in place, bit-identical to kernels.RopeTables.apply.

    x: (T, H, D) float32, any row stride; positions: (T,) int64; cos, sin: (max_context, D / 2) float32.
    """
    _require()
    _native.rope_inplace(x, positions, cos, sin)


if AVAILABLE:
    _native.set_num_threads(default_num_threads())
