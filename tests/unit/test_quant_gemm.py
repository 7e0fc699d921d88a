from __future__ import annotations

import numpy as np
import pytest

from lpu_runtime.gemm import EXACT_CHUNK_K, NumpyExactGemm, int8_linear
from lpu_runtime.quant import QMAX, max_quantization_error, quantize_activations, quantize_weight


def test_weight_quantization_error_is_within_half_a_step_per_channel() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 200)).astype(np.float32) * rng.uniform(0.01, 10, (96, 1)).astype(np.float32)
    qt = quantize_weight(w)
    assert qt.q.dtype == np.int8 and qt.scale.dtype == np.float32 and qt.scale.shape == (96,)
    assert np.abs(qt.q).max() <= QMAX
    step = np.abs(w).max(axis=1) / QMAX  # per output channel
    err = np.abs(qt.dequantize() - w).max(axis=1)
    # round-to-nearest: at most half a step, plus float32 rounding of the scale product
    assert np.all(err <= step / 2 * (1 + 1e-5) + 1e-7)
    assert max_quantization_error(w, qt) == pytest.approx(float(err.max()))


def test_zero_rows_quantize_to_exact_zeros() -> None:
    w = np.zeros((3, 8), dtype=np.float32)
    w[1] = 1.0
    qt = quantize_weight(w)
    np.testing.assert_array_equal(qt.dequantize()[[0, 2]], 0.0)
    q, scale = quantize_activations(np.zeros((2, 5), dtype=np.float32))
    assert np.all(q == 0) and np.all(scale == 1.0)


def _int64_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.int64) @ b.astype(np.int64).T


@pytest.mark.parametrize(
    ("m", "n", "k"),
    [
        (1, 1, 1),
        (1, 7, 1023),
        (3, 5, 1024),
        (2, 9, 1025),
        (17, 33, 3000),
        (4, 8, 4096),
        (64, 48, 2 * EXACT_CHUNK_K + 7),
    ],
)
def test_int8_gemm_equals_int64_reference_exactly(m: int, n: int, k: int) -> None:
    rng = np.random.default_rng(m * 1000 + n + k)
    a = rng.integers(-QMAX, QMAX + 1, (m, k), dtype=np.int8)
    b = rng.integers(-QMAX, QMAX + 1, (n, k), dtype=np.int8)
    out = NumpyExactGemm()(a, b)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, _int64_reference(a, b))


def test_int8_gemm_is_exact_at_the_worst_case_magnitude() -> None:
    # Every product is 127 * 127 with one sign: the largest partial sums a chunk can reach.
    k = 5 * EXACT_CHUNK_K
    a = np.full((2, k), QMAX, dtype=np.int8)
    b = np.full((3, k), QMAX, dtype=np.int8)
    b[1] = -QMAX
    out = NumpyExactGemm()(a, b)
    np.testing.assert_array_equal(out, _int64_reference(a, b))
    assert out[0, 0] == k * QMAX * QMAX


def test_gemm_refuses_chunks_that_could_lose_exactness_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="exact"):
        NumpyExactGemm(chunk_k=EXACT_CHUNK_K + 1)
    with pytest.raises(ValueError, match="shape"):
        NumpyExactGemm()(np.zeros((2, 3), np.int8), np.zeros((2, 4), np.int8))


def test_int8_linear_tracks_float_matmul() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 256)).astype(np.float32)
    w = (rng.standard_normal((40, 256)) / 16).astype(np.float32)
    qt = quantize_weight(w)
    y = int8_linear(x, qt.q, qt.scale, NumpyExactGemm())
    ref = x @ w.T
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel < 0.02  # two 8-bit roundings on random data: about 1%
