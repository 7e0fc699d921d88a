"""FP8 weights as a chip with FP8 matrix units holds them: OCP E4M3 codes, one per byte, with an fp32 scale per
output row (weights) or per token (activations), and a GEMM whose sums are exact.

E4M3 (the "fn" variant of the OCP FP8 spec, NVIDIA's and the Groq 3 LPU's FP8): 1 sign bit, 4 exponent bits
(bias 7), 3 mantissa bits, no infinities, largest finite 448, smallest subnormal 2**-9; codes 0x7F and 0xFF
are NaN and never produced here. Rounding is to nearest, ties to even, after scaling each row to 448.

Exactness: every E4M3 value is an integer multiple of 2**-9 below 2**9, so a product of two is a multiple of
2**-18 below 2**18, and a dot product over K < 2**17 terms is a multiple of 2**-18 below 2**35: within the 53
bits a float64 holds exactly. A float64 GEMM of decoded codes therefore returns the exact sum whatever order
BLAS adds in, so one chip and any row split give bit-identical outputs, as the int8 path does with int32 sums.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.quant import QuantizedTensor, row_scales

E4M3_MAX = 448.0
MANTISSA_BITS = 3
EXPONENT_BIAS = 7
MIN_NORMAL_EXP = 1 - EXPONENT_BIAS  # -6: below 2**-6 the values are subnormal, spaced 2**-9
MAX_K = 1 << 17  # inner dimension up to which float64 sums of E4M3 products stay exact
ROW_BLOCK = 4096  # weight rows decoded to float64 at once (bounds the temporary: rows x K x 8 bytes)


def _decode_table() -> NDArray[np.float64]:
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp, mant = (codes >> MANTISSA_BITS) & 0xF, codes & 0x7
    normal = (1.0 + mant / 8.0) * np.exp2(exp - EXPONENT_BIAS)
    subnormal = mant / 8.0 * 2.0**MIN_NORMAL_EXP
    values = sign * np.where(exp == 0, subnormal, normal)
    values[(codes & 0x7F) == 0x7F] = np.nan
    return values


DECODE = _decode_table()  # (256,) float64: the value of each code


def encode_e4m3(x: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Codes of x (already scaled into [-448, 448]) rounded to the nearest E4M3 value, ties to even."""
    mag = np.minimum(np.abs(x).astype(np.float64), E4M3_MAX)
    exp = np.floor(np.log2(np.maximum(mag, 2.0**MIN_NORMAL_EXP)))  # the binade; subnormals share the lowest
    steps = np.rint(mag / np.exp2(exp - MANTISSA_BITS))  # 8..16 in a normal binade, 0..8 below 2**-6
    carry = steps == 16  # rounded up into the next binade
    exp, steps = exp + carry, np.where(carry, 8, steps)
    normal = steps >= 8
    exp_bits = np.where(normal, exp + EXPONENT_BIAS, 0).astype(np.int64)
    mant = np.where(normal, steps - 8, steps).astype(np.int64)
    return ((np.signbit(x).astype(np.int64) << 7) | (exp_bits << MANTISSA_BITS) | mant).astype(np.uint8)


def round_e4m3(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """x (already scaled into [-448, 448]) rounded to the nearest E4M3 value, ties to even."""
    return DECODE[encode_e4m3(x)].astype(np.float32)


def _quantize_rows(x: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    scale = row_scales(x, E4M3_MAX)
    codes = encode_e4m3(x / scale[..., None])
    return codes.view(np.int8), scale  # one byte per element, stored where int8 weights would be


def quantize_weight_fp8(w: NDArray[np.float32]) -> QuantizedTensor:
    """w: (out_features, in_features) float32 -> E4M3 codes (viewed as int8) with one fp32 scale per row."""
    if w.ndim != 2:
        raise ValueError(f"quantize_weight_fp8 expects a 2-D weight, got shape {w.shape}")
    q, scale = _quantize_rows(np.ascontiguousarray(w, dtype=np.float32))
    return QuantizedTensor(q, scale)


def quantize_activations_fp8(x: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """x: (n_tokens, dim) float32 -> ((n_tokens, dim) E4M3 codes as int8, (n_tokens,) float32 scale)."""
    return _quantize_rows(x.astype(np.float32, copy=False))


def dequantize_fp8(q: NDArray[np.int8], scale: NDArray[np.float32]) -> NDArray[np.float32]:
    return (DECODE[q.view(np.uint8)] * scale[:, None]).astype(np.float32)


def scaled_fp8_gemm(
    x: NDArray[np.int8], x_scale: NDArray[np.float32], w: NDArray[np.int8], w_scale: NDArray[np.float32]
) -> NDArray[np.float32]:
    """(n, K) codes x (rows, K) codes -> (n, rows) float32: the exact sums, scaled per token and per row."""
    if x.shape[1] > MAX_K:
        raise ValueError(f"FP8 GEMM: K={x.shape[1]} exceeds {MAX_K}, beyond which float64 sums are not exact")
    xs = DECODE[x.view(np.uint8)]  # (n, K) float64
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)  # (n, rows)
    for a in range(0, w.shape[0], ROW_BLOCK):
        b = min(a + ROW_BLOCK, w.shape[0])
        exact = xs @ DECODE[w[a:b].view(np.uint8)].T  # (n, b - a) float64, exact
        out[:, a:b] = exact * x_scale[:, None].astype(np.float64) * w_scale[None, a:b].astype(np.float64)
    return out
