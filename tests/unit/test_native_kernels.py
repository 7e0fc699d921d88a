"""The compiled kernels (lpu_runtime.native) against the numpy definitions they replace.

Integer results must be exact (against int64), the quantizer, RoPE, the fp16 store and linear_s8 bit-identical
to numpy, attention within float32 rounding of kernels.causal_attention; and every float kernel must be
invariant: a row (a row and head for attention) gives the same bits alone or in a batch, with any head subset,
on 1 or 2 threads and on the AVX2 or the portable path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray

from lpu_runtime import native
from lpu_runtime.gemm import NumpyExactGemm, int8_linear
from lpu_runtime.kernels import RopeTables, causal_attention, rmsnorm, silu
from lpu_runtime.quant import quantize_activations, quantize_weight
from tests.shared_models import in_ci


@pytest.fixture(autouse=True)
def _extension_built() -> None:
    if not native.AVAILABLE:
        message = str(native.UNAVAILABLE_REASON)
        if in_ci():
            pytest.fail(f"the native kernels must be built under CI: {message}")
        pytest.skip(message)


def _isas() -> list[str]:
    if not native.AVAILABLE:
        return ["generic"]
    native.set_isa("best")
    best = native.isa()
    return ["generic"] if best == "generic" else ["generic", best]


@contextmanager
def isa(name: str) -> Iterator[None]:
    native.set_isa(name)
    try:
        yield
    finally:
        native.set_isa("best")


@contextmanager
def threads(n: int) -> Iterator[None]:
    before = native.num_threads()
    native.set_num_threads(n)
    try:
        yield
    finally:
        native.set_num_threads(before)


def _ref_gemm(a: NDArray[np.int8], b: NDArray[np.int8]) -> NDArray[np.int64]:
    return a.astype(np.int64) @ b.astype(np.int64).T


ISAS = _isas()


# ---------------------------------------------------------------------------------------------------------------
# int8 GEMM and linear


@pytest.mark.parametrize("which", ISAS)
@pytest.mark.parametrize(
    ("m", "n", "k"),
    [(1, 77, 100), (3, 64, 768), (8, 33, 1025), (33, 18, 96), (1, 9, 5632), (5, 40, 5632), (70, 130, 257)],
)
def test_gemm_is_exact_against_int64(which: str, m: int, n: int, k: int) -> None:
    rng = np.random.default_rng(m * 1000 + n + k)
    a = rng.integers(-127, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (n, k), dtype=np.int8)  # weights may hold -128 (a flipped SRAM byte)
    with isa(which):
        got = native.gemm_s8s8_s32(a, b)
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, _ref_gemm(a, b))


@pytest.mark.parametrize("which", ISAS)
@pytest.mark.parametrize(("av", "wv"), [(127, 127), (-127, 127), (-127, -127), (127, -128), (-127, -128)])
def test_gemm_worst_cases_do_not_saturate(which: str, av: int, wv: int) -> None:
    k = 5632
    a = np.full((4, k), av, dtype=np.int8)
    b = np.full((6, k), wv, dtype=np.int8)
    with isa(which):
        got = native.gemm_s8s8_s32(a, b)
    assert np.all(got == av * wv * k)


def test_gemm_is_exact_for_any_int8_activation() -> None:
    """Our quantizers never produce -128, but a call that has one is still exact (the portable kernel)."""
    rng = np.random.default_rng(12)
    a = rng.integers(-128, 128, (5, 300), dtype=np.int8)
    a[2, 17] = -128
    b = rng.integers(-128, 128, (40, 300), dtype=np.int8)
    np.testing.assert_array_equal(native.gemm_s8s8_s32(a, b), _ref_gemm(a, b))


def test_gemm_accepts_row_strided_views_and_is_an_int8gemm() -> None:
    rng = np.random.default_rng(1)
    big_a = rng.integers(-127, 128, (6, 300), dtype=np.int8)
    big_b = rng.integers(-128, 128, (20, 300), dtype=np.int8)
    a, b = big_a[:, 10:210], big_b[::2, 50:250]  # (6, 200), rows strided
    gemm = native.gemm_s8s8_s32
    np.testing.assert_array_equal(gemm(a, np.ascontiguousarray(b)), _ref_gemm(a, b))
    np.testing.assert_array_equal(gemm(a, big_b[:, 50:250]), _ref_gemm(a, big_b[:, 50:250]))
    np.testing.assert_array_equal(gemm(a, big_b[:, 50:250]), NumpyExactGemm()(a, big_b[:, 50:250]))


@pytest.mark.parametrize("which", ISAS)
@pytest.mark.parametrize("m", [1, 3, 8, 33])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_s8_is_bit_identical_to_int8_linear(which: str, m: int, with_bias: bool) -> None:
    rng = np.random.default_rng(m)
    k, n = 1000, 130
    w = quantize_weight(rng.standard_normal((n, k)).astype(np.float32))
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    expected = int8_linear(x, w.q, w.scale, NumpyExactGemm())
    if bias is not None:
        expected = expected + bias
    x_q, x_scale = quantize_activations(x)
    with isa(which):
        got = native.linear_s8(x_q, x_scale, w.q, w.scale, bias)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), expected.view(np.int32))


def test_linear_s8_writes_a_column_slice_in_place() -> None:
    rng = np.random.default_rng(2)
    m, k, n, width = 5, 256, 48, 200
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    ws = rng.random(n, dtype=np.float32)
    x_q = rng.integers(-127, 128, (m, k), dtype=np.int8)
    xs = rng.random(m, dtype=np.float32)
    gathered = np.full((m, width), 7.0, dtype=np.float32)
    native.linear_s8(x_q, xs, w, ws, None, gathered[:, 100 : 100 + n])
    expected = _ref_gemm(x_q, w).astype(np.float32) * xs[:, None] * ws[None, :]
    np.testing.assert_array_equal(gathered[:, 100 : 100 + n], expected)
    assert np.all(gathered[:, :100] == 7.0) and np.all(gathered[:, 100 + n :] == 7.0)


def test_linear_s8_reads_the_weights_on_every_call() -> None:
    """Weights are read in place from the (emulated SRAM) bytes: a flipped byte changes the next result."""
    rng = np.random.default_rng(3)
    n, k = 64, 512
    sram = np.zeros(4096 + n * k, dtype=np.uint8)
    w = sram[4096:].view(np.int8).reshape(n, k)
    w[...] = rng.integers(-127, 128, (n, k), dtype=np.int8)
    ws = np.ones(n, dtype=np.float32)
    x_q = rng.integers(-127, 128, (1, k), dtype=np.int8)
    xs = np.ones(1, dtype=np.float32)
    before = native.linear_s8(x_q, xs, w, ws)
    sram[4096 + 10 * k + 7] ^= 0xFF  # flip every bit of one weight byte (row 10)
    after = native.linear_s8(x_q, xs, w, ws)
    np.testing.assert_array_equal(after, _ref_gemm(x_q, w).astype(np.float32))
    changed = np.flatnonzero(after[0] != before[0])
    assert list(changed) == [10] or x_q[0, 7] == 0


@pytest.mark.parametrize("which", ISAS)
@pytest.mark.parametrize("m", [2, 4, 5, 8, 9, 31, 64, 77])
def test_gemm_row_chunks_k_chunks_and_tails_are_exact(which: str, m: int) -> None:
    """Every path of the M > 1 kernel: 8-row chunks with 1..8 valid rows (the 4-row kernel below 5), K split in
    chunks (K > 1024) with a tail that is not a multiple of 32, weight rows in blocks, strided views."""
    rng = np.random.default_rng(m)
    for k in (31, 96, 1000, 2090):
        a_big = rng.integers(-128, 128, (m, k + 9), dtype=np.int8)  # -128 activations too: exact here
        w_big = rng.integers(-128, 128, (2 * 150 + 1, k + 5), dtype=np.int8)
        a, w = a_big[:, 3 : 3 + k], w_big[::2, 5:]
        with isa(which):
            got = native.gemm_s8s8_s32(a, w)
        np.testing.assert_array_equal(got, _ref_gemm(a, w))


@pytest.mark.parametrize("which", ISAS)
def test_gemm_worst_cases_do_not_overflow_at_large_k(which: str) -> None:
    k = 16384 + 32 * 3 + 7  # several K chunks, and a scalar tail
    for av, wv in [(127, 127), (-128, -128), (-127, -128), (127, -128)]:
        a = np.full((9, k), av, dtype=np.int8)
        b = np.full((20, k), wv, dtype=np.int8)
        with isa(which):
            got = native.gemm_s8s8_s32(a, b)
        assert np.all(got == av * wv * k)


def _linear_case(
    rng: np.random.Generator, m: int, k: int, ns: list[int], bias: list[bool]
) -> tuple[
    NDArray[np.int8],
    NDArray[np.float32],
    list[NDArray[np.int8]],
    list[NDArray[np.float32]],
    list[NDArray[np.float32] | None],
]:
    x_q = rng.integers(-127, 128, (m, k), dtype=np.int8)
    xs = (rng.random(m) + 0.1).astype(np.float32)
    ws = [rng.integers(-128, 128, (n, k), dtype=np.int8) for n in ns]
    scales = [(rng.random(n) * 0.01).astype(np.float32) for n in ns]
    biases: list[NDArray[np.float32] | None] = [
        rng.standard_normal(n).astype(np.float32) if b else None for n, b in zip(ns, bias, strict=True)
    ]
    return x_q, xs, ws, scales, biases


@pytest.mark.parametrize("which", ISAS)
@pytest.mark.parametrize("m", [1, 3, 8, 32, 70])
def test_linear_s8_multi_is_bit_identical_to_separate_calls(which: str, m: int) -> None:
    rng = np.random.default_rng(100 + m)
    k = 1056
    x_q, xs, ws, scales, biases = _linear_case(rng, m, k, [96, 16, 16, 200], [True, False, True, False])
    expected = [native.linear_s8(x_q, xs, w, s, b) for w, s, b in zip(ws, scales, biases, strict=True)]
    fused = np.full((m, 96 + 16 + 16 + 7), 3.0, dtype=np.float32)  # q|k|v of a fused output, plus a gap
    outs = (fused[:, :96], fused[:, 96:112], fused[:, 112:128], np.empty((m, 200), np.float32))
    for n_threads in (1, 2):
        with isa(which), threads(n_threads):
            got = native.linear_s8_multi(x_q, xs, ws, scales, biases, outs)
        assert got is outs
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g.view(np.int32), e.view(np.int32))
        assert np.all(fused[:, 128:] == 3.0)
    allocated = native.linear_s8_multi(x_q, xs, ws[:2], scales[:2], biases[:2])
    for g, e in zip(allocated, expected[:2], strict=True):
        np.testing.assert_array_equal(g.view(np.int32), e.view(np.int32))
    assert native.linear_s8_multi(x_q, xs, [], [], [], []) == []


def test_linear_s8_multi_rejects_mismatches_with_clear_errors() -> None:
    from lpu_runtime import _native  # the extension itself: no wrapper in front of its checks

    rng = np.random.default_rng(7)
    x_q, xs, ws, scales, biases = _linear_case(rng, 4, 64, [8, 12], [False, True])
    outs = [np.empty((4, 8), np.float32), np.empty((4, 12), np.float32)]
    with pytest.raises(ValueError, match="same length, got 2, 1, 2 and 2"):
        native.linear_s8_multi(x_q, xs, ws, scales[:1], biases, outs)
    with pytest.raises(ValueError, match="same length, got 2, 2, 2 and 1"):
        native.linear_s8_multi(x_q, xs, ws, scales, biases, outs[:1])
    with pytest.raises(ValueError, match="same length, got 2, 2, 2 and 3"):
        native.linear_s8_multi(x_q, xs, ws, scales, biases, [*outs, outs[0]])
    with pytest.raises(TypeError, match="ws must be a list or a tuple"):
        _native.linear_s8_multi(x_q, xs, iter(ws), scales, biases, outs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"outs\[1\]: expected a writable float32 array"):
        native.linear_s8_multi(x_q, xs, ws, scales, biases, [outs[0], None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"x_q is \(4, 64\) but ws\[1\] is \(12, 63\)"):
        native.linear_s8_multi(x_q, xs, [ws[0], ws[1][:, :63]], scales, biases, outs)
    with pytest.raises(ValueError, match=r"w_scales\[1\] must have shape \(12,\)"):
        native.linear_s8_multi(x_q, xs, ws, [scales[0], scales[1][:5]], biases, outs)
    with pytest.raises(ValueError, match=r"biases\[1\] must have shape \(12,\)"):
        native.linear_s8_multi(x_q, xs, ws, scales, [None, np.zeros(3, np.float32)], outs)
    with pytest.raises(ValueError, match=r"outs\[0\] must have shape \(4, 8\)"):
        native.linear_s8_multi(x_q, xs, ws, scales, biases, [np.empty((4, 9), np.float32), outs[1]])
    with pytest.raises(TypeError, match=r"ws\[0\]: expected dtype int8"):
        native.linear_s8_multi(x_q, xs, [ws[0].astype(np.int16), ws[1]], scales, biases, outs)
    with pytest.raises(ValueError, match="x_scale must have shape"):
        native.linear_s8_multi(x_q, xs[:3], ws, scales, biases, outs)


def test_empty_and_wrong_inputs() -> None:
    assert native.gemm_s8s8_s32(np.zeros((0, 16), np.int8), np.ones((4, 16), np.int8)).shape == (0, 4)
    assert native.linear_s8(
        np.zeros((0, 16), np.int8), np.zeros(0, np.float32), np.ones((4, 16), np.int8), np.ones(4, np.float32)
    ).shape == (0, 4)
    q, s = native.quantize_rows(np.zeros((0, 8), np.float32))
    assert q.shape == (0, 8) and s.shape == (0,)
    with pytest.raises(TypeError, match="int8"):
        native.gemm_s8s8_s32(np.zeros((2, 16), np.int16), np.ones((4, 16), np.int8))
    with pytest.raises(ValueError, match="shape mismatch"):
        native.gemm_s8s8_s32(np.zeros((2, 16), np.int8), np.ones((4, 15), np.int8))
    with pytest.raises(ValueError, match="contiguous"):
        native.gemm_s8s8_s32(np.zeros((2, 16), np.int8), np.ones((16, 4), np.int8).T)
    with pytest.raises(ValueError, match="w_scale"):
        native.linear_s8(
            np.zeros((2, 16), np.int8),
            np.ones(2, np.float32),
            np.ones((4, 16), np.int8),
            np.ones(3, np.float32),
        )


# ---------------------------------------------------------------------------------------------------------------
# Row kernels


def test_quantize_rows_is_bit_identical_to_quantize_activations() -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((9, 333)) * rng.random((9, 1)) * 10).astype(np.float32)
    x[2] = 0.0  # an all-zero row keeps scale 1
    x[3, :8] = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]  # scale 1: exact ties, to even
    x[3, 8:] = 0.25
    x[4, :] = -3.0
    x[5, 1] = 1e-30  # tiny values
    for which in ISAS:
        with isa(which):
            q, s = native.quantize_rows(x)
        q_ref, s_ref = quantize_activations(x)
        np.testing.assert_array_equal(s, s_ref)
        np.testing.assert_array_equal(q, q_ref)
    assert list(q[3, :8]) == [127, 0, 2, 2, 0, -2, -2, 126]


def _rows_alone(
    fn: object, *arrays: NDArray[np.float32]
) -> list[tuple[NDArray[np.int8], NDArray[np.float32]]]:
    assert callable(fn)
    return [fn(*(a[i : i + 1] for a in arrays)) for i in range(arrays[0].shape[0])]


def test_rmsnorm_quantize_is_close_to_numpy_and_per_row_deterministic() -> None:
    rng = np.random.default_rng(5)
    m, k, eps = 70, 1000, 1e-5
    x = (rng.standard_normal((m, k)) * 2).astype(np.float32)
    weight = (1 + 0.1 * rng.standard_normal(k)).astype(np.float32)
    q, s = native.rmsnorm_quantize(x, weight, eps)
    q_ref, s_ref = quantize_activations(rmsnorm(x, weight, eps))
    np.testing.assert_allclose(s, s_ref, rtol=2e-6)
    assert np.max(np.abs(q.astype(np.int32) - q_ref)) <= 1 and np.mean(q != q_ref) < 1e-3
    h = native.rmsnorm(x, weight, eps)
    np.testing.assert_allclose(h, rmsnorm(x, weight, eps), rtol=2e-6, atol=1e-6)
    np.testing.assert_array_equal(native.quantize_rows(h)[0], q)  # the same arithmetic
    for i, (qi, si) in enumerate(_rows_alone(lambda a: native.rmsnorm_quantize(a, weight, eps), x)):
        assert np.array_equal(qi[0], q[i]) and si[0] == s[i]
    for which in ISAS:
        for n_threads in (1, 2):
            with isa(which), threads(n_threads):
                q2, s2 = native.rmsnorm_quantize(x, weight, eps)
                h2 = native.rmsnorm(x, weight, eps)
            np.testing.assert_array_equal(q2, q)
            np.testing.assert_array_equal(s2, s)
            np.testing.assert_array_equal(h2, h)


def test_silu_mul_quantize_is_close_to_numpy_and_per_row_deterministic() -> None:
    rng = np.random.default_rng(6)
    m, f = 40, 2051  # a tail of 3 past the last 8 lanes
    g = (rng.standard_normal((m, f)) * 4).astype(np.float32)
    g[0, :4] = [-100.0, 100.0, 0.0, -0.0]  # exp overflow and underflow
    u = rng.standard_normal((m, f)).astype(np.float32)
    q, s = native.silu_mul_quantize(g, u)
    with np.errstate(over="ignore"):
        q_ref, s_ref = quantize_activations((silu(g) * u).astype(np.float32))
    np.testing.assert_allclose(s, s_ref, rtol=1e-6)
    assert np.max(np.abs(q.astype(np.int32) - q_ref)) <= 1 and np.mean(q != q_ref) < 1e-3
    for i, (qi, si) in enumerate(_rows_alone(native.silu_mul_quantize, g, u)):
        assert np.array_equal(qi[0], q[i]) and si[0] == s[i]
    for which in ISAS:
        for n_threads in (1, 2):
            with isa(which), threads(n_threads):
                q2, s2 = native.silu_mul_quantize(g, u)
            np.testing.assert_array_equal(q2, q)
            np.testing.assert_array_equal(s2, s)


def test_rope_is_bit_identical_to_rope_tables() -> None:
    rng = np.random.default_rng(7)
    tables = RopeTables.build(head_dim=40, max_context=300, theta=10000.0)
    fused = rng.standard_normal((11, 7 * 40)).astype(np.float32)  # q of 4 heads and k of 3 heads in one row
    positions = rng.integers(0, 300, 11).astype(np.int64)
    q = fused[:, : 4 * 40].reshape(11, 4, 40)
    expected = tables.apply(q.copy(), positions)
    for which in ISAS:
        x = fused.copy()
        xq = x[:, : 4 * 40].reshape(11, 4, 40)  # a strided view: rows 280 floats apart
        with isa(which):
            native.rope_inplace(xq, positions, tables.cos, tables.sin)
        np.testing.assert_array_equal(xq, expected)
        np.testing.assert_array_equal(x[:, 160:], fused[:, 160:])


def test_kv_store_is_bit_identical_to_numpy_assignment() -> None:
    rng = np.random.default_rng(8)
    t, hkv, d, s = 13, 2, 24, 50
    k = (rng.standard_normal((t, hkv, d)) * 100).astype(np.float32)
    v = rng.standard_normal((t, hkv, d)).astype(np.float32)
    specials = [65504.0, 65519.0, 65520.0, 1e6, -1e6, np.inf, -np.inf, 6e-8, 3e-8, 2.98e-8, 1e-5, -1e-7, 0.0]
    k[0, 0, : len(specials)] = specials
    v[0, 1, :] = np.float32(1.0) + np.float32(2.0**-11) * np.arange(d, dtype=np.float32)  # ties at fp16 ulp
    slots = rng.choice(s, t, replace=False).astype(np.int64)
    for which in ISAS:
        kc = np.zeros((s, hkv, d), np.float16)
        vc = np.zeros((s, hkv, d), np.float16)
        kc_ref, vc_ref = kc.copy(), vc.copy()
        with np.errstate(over="ignore"):
            kc_ref[slots], vc_ref[slots] = k, v
        with isa(which):
            native.kv_store(k, v, kc, vc, slots)
        np.testing.assert_array_equal(kc.view(np.uint16), kc_ref.view(np.uint16))
        np.testing.assert_array_equal(vc.view(np.uint16), vc_ref.view(np.uint16))


def test_kv_store_of_a_prefill_is_split_over_threads_and_keeps_numpy_order() -> None:
    rng = np.random.default_rng(18)
    t, hkv, d, s = 300, 4, 64, 700  # 76800 values: above the threshold for splitting rows over the threads
    k = rng.standard_normal((t, hkv, d)).astype(np.float32)
    v = rng.standard_normal((t, hkv, d)).astype(np.float32)
    distinct = rng.choice(s, t, replace=False).astype(np.int64)
    repeated = distinct.copy()
    repeated[250] = repeated[10]  # the same slot twice: the later row wins, as in numpy
    for slots in (distinct, repeated):
        kc_ref = np.zeros((s, hkv, d), np.float16)
        vc_ref = np.zeros((s, hkv, d), np.float16)
        kc_ref[slots], vc_ref[slots] = k, v
        for n_threads in (1, 2, 3):
            kc = np.zeros((s, hkv, d), np.float16)
            vc = np.zeros((s, hkv, d), np.float16)
            with threads(n_threads):
                native.kv_store(k, v, kc, vc, slots)
            np.testing.assert_array_equal(kc.view(np.uint16), kc_ref.view(np.uint16))
            np.testing.assert_array_equal(vc.view(np.uint16), vc_ref.view(np.uint16))


# ---------------------------------------------------------------------------------------------------------------
# Attention


@dataclass
class Seq:
    start: int  # position of its first new row
    rows: int  # new rows
    slots: NDArray[np.int64]  # (start + rows,)


@dataclass
class Batch:
    q: NDArray[np.float32]  # (T, Hq, D)
    seq_rows: NDArray[np.int64]
    start: NDArray[np.int64]
    offsets: NDArray[np.int64]
    slots: NDArray[np.int64]


def _batch(seqs: list[Seq], qs: list[NDArray[np.float32]]) -> Batch:
    rows = np.cumsum([0] + [s.rows for s in seqs]).astype(np.int64)
    offsets = np.cumsum([0] + [len(s.slots) for s in seqs]).astype(np.int64)
    q = np.concatenate(qs) if qs else np.zeros((0, 1, 8), np.float32)
    slots = np.concatenate([s.slots for s in seqs]) if seqs else np.zeros(0, np.int64)
    return Batch(q, rows, np.array([s.start for s in seqs], np.int64), offsets, slots)


def _setup(
    rng: np.random.Generator, specs: list[tuple[int, int]], hq: int, hkv: int, d: int, cache_slots: int = 4096
) -> tuple[list[Seq], list[NDArray[np.float32]], NDArray[np.float16], NDArray[np.float16]]:
    k_cache = (rng.standard_normal((cache_slots, hkv, d)) * 1.5).astype(np.float16)
    v_cache = rng.standard_normal((cache_slots, hkv, d)).astype(np.float16)
    free = rng.permutation(cache_slots)  # scattered, non-contiguous slots
    seqs, qs, used = [], [], 0
    for start, rows in specs:
        n = start + rows
        seqs.append(Seq(start, rows, free[used : used + n].astype(np.int64)))
        used += n
        qs.append((rng.standard_normal((rows, hq, d)) * 1.5).astype(np.float32))
    return seqs, qs, k_cache, v_cache


def _run(b: Batch, k_cache: NDArray[np.float16], v_cache: NDArray[np.float16]) -> NDArray[np.float32]:
    return native.attention(b.q, k_cache, v_cache, b.seq_rows, b.start, b.offsets, b.slots)


def _reference(
    seq: Seq, q: NDArray[np.float32], k_cache: NDArray[np.float16], v_cache: NDArray[np.float16]
) -> NDArray[np.float32]:
    keys = k_cache[seq.slots].astype(np.float32)
    values = v_cache[seq.slots].astype(np.float32)
    return causal_attention(q, keys, values, seq.start)


ATTENTION_CASES = {
    "prefill": ([(0, 70)], 8, 2, 64),
    "decode": ([(37, 1), (5, 1), (200, 1), (0, 1)], 8, 2, 64),
    "chunked_prefill": ([(45, 19), (0, 9)], 6, 3, 32),
    "mixed": ([(130, 1), (0, 33), (64, 17), (9, 1)], 4, 4, 24),
    "mqa_wide_heads": ([(20, 5)], 4, 1, 128),
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_attention_matches_causal_attention(case: str) -> None:
    specs, hq, hkv, d = ATTENTION_CASES[case]
    rng = np.random.default_rng(len(case))
    seqs, qs, k_cache, v_cache = _setup(rng, specs, hq, hkv, d)
    b = _batch(seqs, qs)
    out = _run(b, k_cache, v_cache)
    for i, (seq, q) in enumerate(zip(seqs, qs, strict=True)):
        expected = _reference(seq, q, k_cache, v_cache)
        got = out[b.seq_rows[i] : b.seq_rows[i + 1]]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize(("hq", "hkv", "d"), [(8, 4, 32), (3, 3, 16), (16, 1, 8), (6, 2, 72)])
def test_attention_is_invariant_to_batch_heads_threads_and_isa(hq: int, hkv: int, d: int) -> None:
    """Prefill tiles take (row, head) pairs two by two (consecutive heads, or the last head of a row with the
    first of the next, whose position is one further) with 4 keys at a time: the specs give tiles with an odd
    number of pairs, chunk and tile edges, and head widths that are not a multiple of 32."""
    rng = np.random.default_rng(9)
    seqs, qs, k_cache, v_cache = _setup(rng, [(0, 100), (50, 1), (12, 7), (3, 1), (31, 67)], hq, hkv, d)
    b = _batch(seqs, qs)
    with threads(2):
        full = _run(b, k_cache, v_cache)
    # each sequence alone
    for i, (seq, q) in enumerate(zip(seqs, qs, strict=True)):
        alone = _run(_batch([seq], [q]), k_cache, v_cache)
        np.testing.assert_array_equal(alone, full[b.seq_rows[i] : b.seq_rows[i + 1]])
    # a row of a prefill alone (as a chunk of one row at its position)
    seq0 = seqs[0]
    row = 13
    one = Seq(row, 1, seq0.slots[: row + 1])
    np.testing.assert_array_equal(_run(_batch([one], [qs[0][row : row + 1]]), k_cache, v_cache)[0], full[row])
    # contiguous head subsets with the matching cache subset (a tensor-parallel chip's share)
    group = hq // hkv
    parts = []
    for kv0, kv1 in [(0, 1), (1, hkv)] if hkv > 1 else [(0, 1)]:
        qpart = b.q[:, kv0 * group : kv1 * group]  # strided view
        kc = np.ascontiguousarray(k_cache[:, kv0:kv1])
        vc = np.ascontiguousarray(v_cache[:, kv0:kv1])
        parts.append(native.attention(qpart, kc, vc, b.seq_rows, b.start, b.offsets, b.slots))
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), full)
    # thread counts and instruction sets
    for which in ISAS:
        for n_threads in (1, 2, 3):
            with isa(which), threads(n_threads):
                np.testing.assert_array_equal(_run(b, k_cache, v_cache), full)


def test_attention_writes_into_a_strided_out_and_handles_empty_batches() -> None:
    rng = np.random.default_rng(10)
    seqs, qs, k_cache, v_cache = _setup(rng, [(4, 3)], 4, 2, 16, cache_slots=64)
    b = _batch(seqs, qs)
    wide = np.full((3, 10, 16), 5.0, np.float32)
    native.attention(b.q, k_cache, v_cache, b.seq_rows, b.start, b.offsets, b.slots, out=wide[:, 3:7])
    np.testing.assert_array_equal(wide[:, 3:7], _run(b, k_cache, v_cache))
    assert np.all(wide[:, :3] == 5.0) and np.all(wide[:, 7:] == 5.0)
    empty = _batch([], [])
    q0 = np.zeros((0, 4, 16), np.float32)
    assert native.attention(
        q0, k_cache, v_cache, empty.seq_rows, empty.start, empty.offsets, empty.slots
    ).shape == (0, 4, 16)
    bad = b.slots.copy()
    bad[2] = 64
    with pytest.raises(ValueError, match="outside the cache"):
        native.attention(b.q, k_cache, v_cache, b.seq_rows, b.start, b.offsets, bad)
    with pytest.raises(ValueError, match="slots"):
        native.attention(b.q, k_cache, v_cache, b.seq_rows, b.start + 1, b.offsets, b.slots)


def test_thread_count_changes() -> None:
    rng = np.random.default_rng(11)
    a = rng.integers(-127, 128, (8, 2048), dtype=np.int8)
    w = rng.integers(-128, 128, (512, 2048), dtype=np.int8)
    expected = _ref_gemm(a, w)
    for n in (1, 2, 4, 1, 2):
        with threads(n):
            assert native.num_threads() == n
            np.testing.assert_array_equal(native.gemm_s8s8_s32(a, w), expected)
    with pytest.raises(ValueError):
        native.set_num_threads(0)
    assert native.default_num_threads() >= 1
