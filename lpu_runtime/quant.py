"""Symmetric int8 quantization: weights per output channel, activations per token.

Both use the range [-127, 127] (never -128), so every int8 x int8 product is at most 127 * 127 = 16129 in
magnitude and a sum of 1024 of them stays below 2**24: exact in float32 (see gemm.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

QMAX = 127
QUANT_BLOCK_ELEMENTS = 1 << 20  # weights quantized per block of rows (elements)


@dataclass(frozen=True)
class QuantizedTensor:
    q: NDArray[np.int8]  # (rows, cols) int8
    scale: NDArray[np.float32]  # (rows,) float32; row i dequantizes as q[i] * scale[i]

    def dequantize(self) -> NDArray[np.float32]:
        return self.q.astype(np.float32) * self.scale[:, None]


def row_scales(x: NDArray[np.float32], qmax: float) -> NDArray[np.float32]:
    """(rows,) float32: each row's scale mapping its largest magnitude to `qmax`."""
    amax = np.max(np.abs(x), axis=-1)
    # An all-zero row keeps scale 1 so dequantizing never divides by zero and returns exact zeros.
    return np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)


def _quantize_rows(x: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    scale = row_scales(x, QMAX)
    q = np.clip(np.rint(x / scale[..., None]), -QMAX, QMAX).astype(np.int8)
    return q, scale


def quantize_weight(w: NDArray[np.float32]) -> QuantizedTensor:
    """w: (out_features, in_features) float32 -> int8 with one fp32 scale per output channel.

    The round-to-nearest error of each element is at most scale/2 = max|row| / 254.
    """
    if w.ndim != 2:
        raise ValueError(f"quantize_weight expects a 2-D weight, got shape {w.shape}")
    q = np.empty(w.shape, dtype=np.int8)  # (rows, cols) int8
    scale = np.empty(w.shape[0], dtype=np.float32)  # (rows,) float32
    # A block of rows at a time: each row's bytes are the same, and the float temporaries stay small even for
    # a 128k-row vocabulary.
    step = max(1, QUANT_BLOCK_ELEMENTS // max(1, w.shape[1]))
    for a in range(0, w.shape[0], step):
        q[a : a + step], scale[a : a + step] = _quantize_rows(
            np.ascontiguousarray(w[a : a + step], dtype=np.float32)
        )
    return QuantizedTensor(q, scale)


def quantize_activations(x: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """x: (n_tokens, dim) float32 -> ((n_tokens, dim) int8, (n_tokens,) float32 scale per token)."""
    return _quantize_rows(x.astype(np.float32, copy=False))


def max_quantization_error(w: NDArray[np.float32], qt: QuantizedTensor) -> float:
    """Largest absolute element error of a quantized weight."""
    return float(np.max(np.abs(qt.dequantize() - w)))
