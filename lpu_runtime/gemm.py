"""The int8 GEMM: int8 x int8 products summed exactly in int32.

Everything that multiplies quantized weights goes through `Int8Gemm`, so a faster exact backend (a compiled
kernel, VNNI, a GPU) can replace `NumpyExactGemm` without touching the model code.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.quant import quantize_activations

# float32 has a 24-bit significand: sums of at most 1024 products of magnitude <= 127 * 127 stay below
# 2**24 (1024 * 16129 = 16,516,096 < 16,777,216), so every partial sum in a chunk is an exact integer.
EXACT_CHUNK_K = 1024


class Int8Gemm(Protocol):
    def __call__(self, a: NDArray[np.int8], b: NDArray[np.int8]) -> NDArray[np.int32]:
        """a: (M, K) int8, b: (N, K) int8 (weights, row per output channel) -> a @ b.T as (M, N) int32."""
        ...


class NumpyExactGemm:
    """Pure numpy: float32 BLAS over K-chunks of at most 1024, each chunk exact, chunks summed in int32.

    Inputs must lie in [-127, 127] (our quantizers guarantee it); -128 could break the 2**24 bound.
    """

    def __init__(self, chunk_k: int = EXACT_CHUNK_K) -> None:
        if not 1 <= chunk_k <= EXACT_CHUNK_K:
            raise ValueError(f"chunk_k must be in [1, {EXACT_CHUNK_K}] to stay exact, got {chunk_k}")
        self.chunk_k = chunk_k

    def __call__(self, a: NDArray[np.int8], b: NDArray[np.int8]) -> NDArray[np.int32]:
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
            raise ValueError(f"int8 GEMM shape mismatch: a {a.shape} vs b {b.shape} (expects (M,K) x (N,K))")
        m, k = a.shape
        acc = np.zeros((m, b.shape[0]), dtype=np.int32)  # (M, N) int32
        for k0 in range(0, k, self.chunk_k):
            a_chunk = a[:, k0 : k0 + self.chunk_k].astype(np.float32)
            b_chunk = b[:, k0 : k0 + self.chunk_k].astype(np.float32)
            acc += (a_chunk @ b_chunk.T).astype(np.int32)
        return acc


def int8_linear(
    x: NDArray[np.float32],
    w_q: NDArray[np.int8],
    w_scale: NDArray[np.float32],
    gemm: Int8Gemm,
) -> NDArray[np.float32]:
    """y = x @ W.T with x quantized per token and W per output channel.

    x: (M, K) float32; w_q: (N, K) int8; w_scale: (N,) float32 -> (M, N) float32.
    """
    x_q, x_scale = quantize_activations(x)
    return scaled_int8_gemm(x_q, x_scale, w_q, w_scale, gemm)


def scaled_int8_gemm(
    x_q: NDArray[np.int8],
    x_scale: NDArray[np.float32],
    w_q: NDArray[np.int8],
    w_scale: NDArray[np.float32],
    gemm: Int8Gemm,
) -> NDArray[np.float32]:
    """The exact int32 sum of x_q @ w_q.T with both scales applied once, after it: (M, N) float32."""
    acc = gemm(x_q, w_q)  # (M, N) int32
    return acc.astype(np.float32) * x_scale[:, None] * w_scale[None, :]
