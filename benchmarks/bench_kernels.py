"""Kernel benchmark: exact int8 GEMM candidates, the fp16-KV attention kernel, and the machine's memory bandwidth.

Exact int8 GEMM candidates (time per call, median over repeats; GB/s of int8 weight streamed at M=1, GOP/s =
2*M*N*K / time; `exact` compares every result with NumpyExactGemm, itself exact against int64):

- numpy:       lpu_runtime.gemm.NumpyExactGemm (float32 BLAS over K-chunks of 1024), the path being replaced
- native:      lpu_runtime.native.gemm_s8s8_s32 (the C extension, AVX2 sign trick)
- numba:       an @njit(parallel=True, nogil=True) int32-accumulating kernel            (pip install numba)
- onnxruntime: MatMulInteger, activations shifted to uint8 with zero point 128           (pip install onnxruntime onnx)
- torch:       torch._int_mm on CPU                                                      (pip install torch)

The optional candidates are never project dependencies: install them into a separate venv, e.g.

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install -e . numba onnxruntime onnx torch
    /tmp/benchvenv/bin/python benchmarks/bench_kernels.py --json bench-kernels.json

Before/after a kernel change: copy the built lpu_runtime/_native*.so aside before editing, rebuild, and pass the
copy as --baseline (candidate "baseline"; attention and kv_store then also compare their bits with it), e.g.
`--candidates native baseline --baseline /tmp/old/_native.cpython-311-x86_64-linux-gnu.so`.

A candidate that is not installed is skipped and says so. Shapes are the layer matrices of a 110M Llama (dim 768,
ffn 2048) and TinyLlama-1.1B (dim 2048, 4 of 32 heads for KV, ffn 5632), vocab 32000, at M = 1, 8, 32, 512.
Attention: the native kernel against the per-sequence numpy loop the emulator's Chip.attention ran (gather the
fp16 cache per sequence, astype float32, kernels.causal_attention), for decode (32 sequences x 1 row, context
512) and prefill (one sequence, 512 rows); kv_store of a prefill (512 rows) and of a decode step (32 rows).
Linear calls: the per-call cost of native.linear_s8 on tiny shapes (argument checks, no pool dispatch), and
separate linear_s8 calls against one linear_s8_multi call for the matrices that share an input (q/k/v and
gate/up, decode M=1 and batched M=32). Every candidate runs with --threads threads (default: all CPUs).

On a shared machine, medians move with the neighbours' load (the report records the load average at the start
and the end): compare runs made back to back, and look at the best calls too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lpu_runtime import native
from lpu_runtime.gemm import NumpyExactGemm
from lpu_runtime.kernels import causal_attention, rmsnorm, silu
from lpu_runtime.quant import quantize_activations

GemmFn = Callable[[NDArray[np.int8], NDArray[np.int8]], NDArray[np.int32]]

SHAPES_110M = {
    "110m.wq 768x768": (768, 768),
    "110m.w1 2048x768": (2048, 768),
    "110m.w2 768x2048": (768, 2048),
}
SHAPES_110M["110m.lm_head 32000x768"] = (32000, 768)
SHAPES_1B = {
    "1.1b.wq 2048x2048": (2048, 2048),
    "1.1b.wk 256x2048": (256, 2048),
    "1.1b.w1 5632x2048": (5632, 2048),
    "1.1b.w2 2048x5632": (2048, 5632),
    "1.1b.lm_head 32000x2048": (32000, 2048),
}
M_VALUES = (1, 8, 32, 512)


@dataclass
class GemmResult:
    candidate: str
    shape: str
    n: int
    k: int
    m: int
    median_us: float
    best_us: float
    gb_s: float  # weight bytes / median time (meaningful at M=1)
    gop_s: float  # 2*M*N*K / median time
    best_gb_s: float
    best_gop_s: float
    exact: bool | None
    calls: int


@dataclass
class Report:
    machine: dict[str, Any]
    bandwidth_gb_s: dict[str, float]
    candidates: dict[str, str]  # name -> "ok (version)" or the reason it was skipped
    setup_s: dict[str, float]  # JIT / session creation time
    footprint_mb: dict[str, float]
    gemm: list[GemmResult] = field(default_factory=list)
    probes: dict[str, dict[str, bool]] = field(default_factory=dict)  # candidate -> probe -> exact
    attention: list[dict[str, Any]] = field(default_factory=list)
    row_kernels: list[dict[str, Any]] = field(default_factory=list)
    kv_store: list[dict[str, Any]] = field(default_factory=list)
    linear_calls: list[dict[str, Any]] = field(default_factory=list)
    estimates: list[dict[str, Any]] = field(default_factory=list)


# Seconds of back-to-back calls before each measurement (--warm). On this shared 2-vCPU VM a measurement that
# starts cold is slow for its first milliseconds (idle vCPUs, caches), and other thread pools in the process
# (OpenBLAS behind numpy's matmul, OpenMP behind torch and numba) keep spinning for a while after their last
# call, taking a core from the candidate measured next (seen as ~8 ms scheduler quanta in the times): warming
# the candidate up for longer than that spin makes both go away.
WARM_S = {"default": 0.25, "now": 0.25}


def warm_up(fn: Callable[[], object]) -> float:
    """Calls fn for WARM_S seconds (at least once); returns the duration of the first call."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    while time.perf_counter() - t0 < WARM_S["now"]:
        fn()
    return first


def timeit(fn: Callable[[], object], repeats: int, budget_s: float) -> tuple[float, int]:
    median, _, n = timeit_best(fn, repeats, budget_s)
    return median, n


def per_call(fn: Callable[[], object], n: int, rounds: int = 9) -> tuple[float, float]:
    """(median, best) seconds per call over rounds of n back-to-back calls: for calls of a microsecond, where
    timing each call alone would measure the clock."""
    warm_up(fn)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times), min(times)


def timeit_best(fn: Callable[[], object], repeats: int, budget_s: float) -> tuple[float, float, int]:
    """(median, best) seconds per call after a warm-up; fewer repeats (at least 3) when one call is slow, and
    just the first call when it alone takes more than twice the budget. On a shared machine the best call is
    the kernel's own speed, the median what it gets next to the neighbours' load."""
    first = warm_up(fn)
    if first > 2 * budget_s:  # a very slow candidate: its one (warm-up) call is the measurement
        return first, first, 1
    n = max(3, min(repeats, int(budget_s / max(first, 1e-9))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), n


# ---------------------------------------------------------------------------------------------------------------
# Machine


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "native_isa": native.isa() if native.AVAILABLE else None,
        "loadavg_start": list(os.getloadavg()),
    }


def memory_bandwidth(repeats: int) -> dict[str, float]:
    """DRAM bandwidth as numpy sees it: a 256 MiB copy (read + write bytes) and a read (uint8 max, which numpy
    vectorises and runs without the GIL) on 1 and on 2 threads."""
    a = np.ones(256 * 2**20, dtype=np.uint8)
    b = np.empty_like(a)
    copy_s, _ = timeit(functools.partial(np.copyto, b, a), repeats, 5.0)
    read1_s, _ = timeit(a.max, repeats, 5.0)
    halves = (a[: a.size // 2], a[a.size // 2 :])

    def read2() -> None:
        threads = [threading.Thread(target=h.max) for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    read2_s, _ = timeit(read2, repeats, 5.0)
    return {
        "copy_rw": 2 * a.nbytes / copy_s / 1e9,
        "read_1_thread": a.nbytes / read1_s / 1e9,
        "read_2_threads": a.nbytes / read2_s / 1e9,
    }


def package_mb(*modules: str) -> float:
    total = 0
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        root = Path(mod.__file__ or "").parent
        for dirpath, _, files in os.walk(root):
            total += sum((Path(dirpath) / f).stat().st_size for f in files)
    return total / 2**20


# ---------------------------------------------------------------------------------------------------------------
# Candidates: each returns a GEMM (a (M,K) int8, b (N,K) int8 -> (M,N) int32) or raises ImportError


def make_numba(threads: int) -> GemmFn:
    numba: Any = importlib.import_module("numba")
    numba.set_num_threads(threads)

    @numba.njit(parallel=True, nogil=True, cache=False, fastmath=False)  # type: ignore[untyped-decorator]
    def kernel(a: Any, b: Any, out: Any) -> None:
        m_rows, k_len = a.shape
        n_rows = b.shape[0]
        for n in numba.prange(n_rows):  # each weight row streamed once, against every activation row
            w = b[n]
            for m in range(m_rows):
                x = a[m]
                acc = np.int32(0)
                for k in range(k_len):
                    acc += np.int32(x[k]) * np.int32(w[k])
                out[m, n] = acc

    def gemm(a: NDArray[np.int8], b: NDArray[np.int8]) -> NDArray[np.int32]:
        out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
        kernel(a, b, out)
        return out

    return gemm


class OrtGemm:
    """MatMulInteger(A uint8 = a + 128, B int8 = w.T, a_zero_point 128): one session per weight matrix, the
    weight an initializer (the best case for onnxruntime: it may prepack it once)."""

    def __init__(self, threads: int) -> None:
        self.ort: Any = importlib.import_module("onnxruntime")
        self.onnx: Any = importlib.import_module("onnx")
        self.threads = threads
        self.sessions: dict[
            int, tuple[NDArray[np.int8], Any]
        ] = {}  # the weight is kept so its id stays unique

    def session(self, b: NDArray[np.int8]) -> Any:
        key = id(b)
        if key not in self.sessions or self.sessions[key][0] is not b:
            onnx, helper, numpy_helper = self.onnx, self.onnx.helper, self.onnx.numpy_helper
            n, k = b.shape
            weight = numpy_helper.from_array(np.ascontiguousarray(b.T), name="B")
            azp = numpy_helper.from_array(np.array(128, dtype=np.uint8), name="azp")
            node = helper.make_node("MatMulInteger", ["A", "B", "azp"], ["Y"])
            graph = helper.make_graph(
                [node],
                "mmi",
                [helper.make_tensor_value_info("A", onnx.TensorProto.UINT8, ["M", k])],
                [helper.make_tensor_value_info("Y", onnx.TensorProto.INT32, ["M", n])],
                initializer=[weight, azp],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
            options = self.ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            session = self.ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            self.sessions[key] = (b, session)
        return self.sessions[key][1]

    def __call__(self, a: NDArray[np.int8], b: NDArray[np.int8]) -> NDArray[np.int32]:
        a_u8 = (a.astype(np.int16) + 128).astype(np.uint8)  # exact shift; zero point 128 undoes it
        result: NDArray[np.int32] = self.session(b).run(None, {"A": a_u8})[0]
        return result


def make_torch(threads: int) -> GemmFn:
    torch: Any = importlib.import_module("torch")
    torch.set_num_threads(threads)
    probe = torch._int_mm(torch.ones((32, 64), dtype=torch.int8), torch.ones((64, 32), dtype=torch.int8))
    assert int(probe[0, 0]) == 64

    def gemm(a: NDArray[np.int8], b: NDArray[np.int8]) -> NDArray[np.int32]:
        result: NDArray[np.int32] = torch._int_mm(torch.from_numpy(a), torch.from_numpy(b).t()).numpy()
        return result

    return gemm


def load_baseline(path: Path) -> Any:
    """Another build of the extension (e.g. the .so of the previous commit, copied aside) as a module of its own:
    the candidate "baseline", for before/after comparisons in one process on the same machine state."""
    spec = importlib.util.spec_from_file_location("_native", path)  # PyInit__native: the name must match
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_candidates(
    threads: int, only: set[str] | None, report: Report, baseline: Any | None = None
) -> dict[str, GemmFn]:
    out: dict[str, GemmFn] = {}

    def want(name: str) -> bool:
        return only is None or name in only

    if want("numpy"):
        out["numpy"] = NumpyExactGemm()
        report.candidates["numpy"] = f"ok (numpy {np.__version__})"
    if want("native"):
        if native.AVAILABLE:
            native.set_num_threads(threads)
            out["native"] = native.gemm_s8s8_s32
            report.candidates["native"] = f"ok (isa {native.isa()})"
            so = Path(importlib.import_module("lpu_runtime._native").__file__ or "")
            report.footprint_mb["native"] = so.stat().st_size / 2**20
        else:
            report.candidates["native"] = f"skipped: {native.UNAVAILABLE_REASON}"
    if baseline is not None and want("baseline"):
        baseline.set_num_threads(threads)

        def baseline_gemm(a: NDArray[np.int8], b: NDArray[np.int8]) -> NDArray[np.int32]:
            result = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
            baseline.gemm_s8s8_s32(a, b, result)
            return result

        out["baseline"] = baseline_gemm
        report.candidates["baseline"] = f"ok ({baseline.__file__}, isa {baseline.isa()})"
    loaders: dict[str, tuple[Callable[[], GemmFn], tuple[str, ...]]] = {
        "numba": (lambda: make_numba(threads), ("numba", "llvmlite")),
        "onnxruntime": (lambda: OrtGemm(threads), ("onnxruntime", "onnx")),
        "torch": (lambda: make_torch(threads), ("torch",)),
    }
    probe_a = np.ones((8, 256), np.int8)
    probe_b = np.ones((16, 256), np.int8)
    for name, (load, modules) in loaders.items():
        if not want(name):
            continue
        try:
            t0 = time.perf_counter()
            fn = load()
            fn(probe_a, probe_b)  # JIT compile / session creation / first-call set-up
            report.setup_s[name] = time.perf_counter() - t0
        except Exception as exc:  # ImportError, or a backend that cannot run this op here
            report.candidates[name] = f"skipped: {type(exc).__name__}: {exc}"
            continue
        versions = []
        for module in modules:
            with contextlib.suppress(ImportError, AttributeError):
                versions.append(f"{module} {importlib.import_module(module).__version__}")
        report.candidates[name] = f"ok ({', '.join(versions)})"
        report.footprint_mb[name] = package_mb(*modules)
        out[name] = fn
    return out


# ---------------------------------------------------------------------------------------------------------------
# GEMM


def exactness_probes(fn: GemmFn) -> dict[str, bool]:
    """Worst cases where a saturating int16 step would show: extreme values in every product."""
    rng = np.random.default_rng(0)
    k = 2048
    cases = {
        "all 127 x 127": (np.full((8, k), 127, np.int8), np.full((16, k), 127, np.int8)),
        "all -127 x 127": (np.full((8, k), -127, np.int8), np.full((16, k), 127, np.int8)),
        "all 127 x -128": (np.full((8, k), 127, np.int8), np.full((16, k), -128, np.int8)),
        "random +-127": (
            (rng.integers(0, 2, (8, k)) * 254 - 127).astype(np.int8),
            (rng.integers(0, 2, (16, k)) * 254 - 127).astype(np.int8),
        ),
        "random uniform": (
            rng.integers(-127, 128, (8, k), dtype=np.int8),
            rng.integers(-128, 128, (16, k), dtype=np.int8),
        ),
    }
    out = {}
    for name, (a, b) in cases.items():
        ref = a.astype(np.int64) @ b.astype(np.int64).T
        try:
            out[name] = bool(np.array_equal(np.asarray(fn(a, b), dtype=np.int64), ref))
        except Exception:
            out[name] = False
    return out


class RoundRobin:
    """Calls fn(a, w) with the next of several copies of w each time (each call reads its weights from DRAM)."""

    def __init__(self, fn: GemmFn, a: NDArray[np.int8], copies: list[NDArray[np.int8]]) -> None:
        self.fn, self.a, self.copies, self.turn = fn, a, copies, 0

    def __call__(self) -> NDArray[np.int32]:
        self.turn += 1
        return self.fn(self.a, self.copies[self.turn % len(self.copies)])


def bench_gemm(
    candidates: dict[str, GemmFn], shapes: dict[str, tuple[int, int]], ms: tuple[int, ...], repeats: int,
    budget_s: float, report: Report,
) -> None:  # fmt: skip
    rng = np.random.default_rng(1)
    reference_fn = NumpyExactGemm()
    for shape, (n, k) in shapes.items():
        w = rng.integers(-127, 128, (n, k), dtype=np.int8)
        # At M=1 also from DRAM: copies of the matrix, 128 MiB in all (4x the L3 here), used in turn, as a decode
        # step streams every layer's weights once; the plain M=1 row reuses one matrix (cache-resident if small).
        copies = (
            [w] + [w.copy() for _ in range(max(0, -(-(128 * 2**20) // w.nbytes) - 1))] if 1 in ms else [w]
        )
        for m in ms:
            a = rng.integers(-127, 128, (m, k), dtype=np.int8)
            reference = reference_fn(a, w)
            for name, fn in candidates.items():
                variants: list[tuple[str, Callable[[], object]]] = [(shape, functools.partial(fn, a, w))]
                if m == 1 and name != "onnxruntime":  # onnxruntime prepacks each weight into its session
                    variants.append((f"{shape} DRAM", RoundRobin(fn, a, copies)))
                for label, call in variants:
                    try:
                        exact: bool | None = bool(np.array_equal(fn(a, w), reference))
                        seconds, best, calls = timeit_best(call, repeats, budget_s)
                    except Exception as exc:
                        print(f"  {name} {label} M={m}: failed: {exc}", file=sys.stderr)
                        continue
                    row = GemmResult(
                        name, label, n, k, m, seconds * 1e6, best * 1e6, n * k / seconds / 1e9,
                        2 * m * n * k / seconds / 1e9, n * k / best / 1e9, 2 * m * n * k / best / 1e9, exact, calls,
                    )  # fmt: skip
                    report.gemm.append(row)
                    print(
                        f"{name:12s} {label:31s} M={m:<4d} {row.median_us:11.1f} us {row.gb_s:6.1f} GB/s "
                        f"{row.gop_s:6.1f} GOP/s (best {row.best_us:10.1f} us {row.best_gb_s:6.1f} GB/s "
                        f"{row.best_gop_s:6.1f} GOP/s) exact={exact}",
                        flush=True,
                    )


# Matrices of one decoder layer (name in SHAPES_*, count) and the layer count, for the per-token estimate.
MODEL_LAYERS = {
    "110m": (
        [("110m.wq 768x768", 4), ("110m.w1 2048x768", 2), ("110m.w2 768x2048", 1)],
        12,
        "110m.lm_head 32000x768",
    ),
    "1.1b": (
        [
            ("1.1b.wq 2048x2048", 2),
            ("1.1b.wk 256x2048", 2),
            ("1.1b.w1 5632x2048", 2),
            ("1.1b.w2 2048x5632", 1),
        ],
        22,
        "1.1b.lm_head 32000x2048",
    ),
}


def model_estimates(report: Report, candidate: str = "native") -> list[dict[str, Any]]:
    """GEMM time of one forward step from the measured shapes: every layer matrix plus the LM head (decode at
    M=1 from DRAM, as a real step streams all weights once; prefill needs the LM head for its last row only).
    Attention, norms and Python are not included: this is the int8 GEMM's share of a step."""
    times = {(r.shape, r.m): r.median_us for r in report.gemm if r.candidate == candidate}
    best = {(r.shape, r.m): r.best_us for r in report.gemm if r.candidate == candidate}
    out = []
    for model, (layer, n_layers, head) in MODEL_LAYERS.items():
        for m in sorted({r.m for r in report.gemm}):
            suffix = " DRAM" if m == 1 else ""
            steps = []
            for table in (times, best):
                try:
                    layer_us = sum(table[(name + suffix, m)] * count for name, count in layer)
                    head_us = table[(head + suffix, 1 if m == 512 else m)]
                except KeyError:
                    break
                steps.append((layer_us * n_layers + head_us) / 1e3)
            if len(steps) != 2:
                continue
            step_ms, best_ms = steps
            out.append(
                {"model": model, "m": m, "gemm_ms_per_step": step_ms, "tokens_per_s": m / step_ms * 1e3,
                 "best_gemm_ms_per_step": best_ms, "best_tokens_per_s": m / best_ms * 1e3}
            )  # fmt: skip
            print(
                f"estimate {candidate} {model:5s} M={m:<4d} GEMMs {step_ms:9.2f} ms/step {m / step_ms * 1e3:8.1f} "
                f"tok/s (best {best_ms:9.2f} ms {m / best_ms * 1e3:8.1f} tok/s)"
            )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Attention and row kernels


def numpy_attention_loop(
    q: NDArray[np.float32], k_cache: NDArray[np.float16], v_cache: NDArray[np.float16],
    seqs: list[tuple[int, int, int, NDArray[np.int64]]],
) -> NDArray[np.float32]:  # fmt: skip
    """The emulator's former Chip.attention: per sequence, gather the fp16 cache, astype float32, attend."""
    out = np.empty_like(q)
    for row, n_rows, start, slots in seqs:
        keys = k_cache[slots].astype(np.float32)
        values = v_cache[slots].astype(np.float32)
        out[row : row + n_rows] = causal_attention(q[row : row + n_rows], keys, values, start)
    return out


def bench_attention(repeats: int, budget_s: float, report: Report, baseline: Any | None = None) -> None:
    rng = np.random.default_rng(2)
    configs = [("110m", 12, 12, 64), ("1.1b", 32, 4, 64)]
    for model, hq, hkv, d in configs:
        for case, specs in [("decode 32 seqs x ctx 512", [(511, 1)] * 32), ("prefill 512 rows", [(0, 512)])]:
            n_slots = sum(s + r for s, r in specs)
            k_cache = rng.standard_normal((n_slots, hkv, d)).astype(np.float16)
            v_cache = rng.standard_normal((n_slots, hkv, d)).astype(np.float16)
            perm = rng.permutation(n_slots).astype(np.int64)
            t = sum(r for _, r in specs)
            q = rng.standard_normal((t, hq, d)).astype(np.float32)
            seqs, rows, offsets, row, used = [], [0], [0], 0, 0
            for start, n_rows in specs:
                slots = perm[used : used + start + n_rows]
                seqs.append((row, n_rows, start, slots))
                row += n_rows
                used += start + n_rows
                rows.append(row)
                offsets.append(used)
            seq_rows, offs = np.array(rows, np.int64), np.array(offsets, np.int64)
            starts = np.array([s for s, _ in specs], np.int64)
            all_slots = np.concatenate([s[3] for s in seqs])
            out = np.empty_like(q)

            def run_native(
                q: NDArray[np.float32] = q, kc: NDArray[np.float16] = k_cache, vc: NDArray[np.float16] = v_cache,
                sr: NDArray[np.int64] = seq_rows, st: NDArray[np.int64] = starts, of: NDArray[np.int64] = offs,
                sl: NDArray[np.int64] = all_slots, out: NDArray[np.float32] = out,
            ) -> None:  # fmt: skip
                native.attention(q, kc, vc, sr, st, of, sl, out)

            run_numpy = functools.partial(numpy_attention_loop, q, k_cache, v_cache, seqs)
            ref = run_numpy()
            run_native()
            err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
            t_np, b_np, _ = timeit_best(run_numpy, repeats, budget_s)
            t_nat, b_nat, _ = timeit_best(run_native, repeats, budget_s)
            entry = {
                "model": model, "case": case, "heads": f"{hq}/{hkv}x{d}", "numpy_ms": t_np * 1e3,
                "native_ms": t_nat * 1e3, "numpy_best_ms": b_np * 1e3, "native_best_ms": b_nat * 1e3,
                "speedup": t_np / t_nat, "max_rel_err": err,
            }  # fmt: skip
            base = ""
            if baseline is not None:
                base_out = np.empty_like(q)
                run_base = functools.partial(baseline.attention, q, k_cache, v_cache, seq_rows, starts, offs,
                                             all_slots, base_out)  # fmt: skip
                run_base()
                t_base, b_base, _ = timeit_best(run_base, repeats, budget_s)
                same = bool(np.array_equal(base_out.view(np.int32), out.view(np.int32)))
                entry.update(
                    baseline_ms=t_base * 1e3, baseline_best_ms=b_base * 1e3, same_bits_as_baseline=same
                )
                base = f"  baseline {t_base * 1e3:8.2f} ms (best {b_base * 1e3:7.2f}, same bits: {same})"
            report.attention.append(entry)
            print(
                f"attention {model:5s} {case:26s} numpy {t_np * 1e3:9.2f} ms (best {b_np * 1e3:8.2f})  native "
                f"{t_nat * 1e3:8.2f} ms (best {b_nat * 1e3:7.2f})  x{t_np / t_nat:6.1f}  max rel err {err:.1e}"
                + base,
                flush=True,
            )


def _np_rmsnorm_quantize(x: NDArray[np.float32], w: NDArray[np.float32]) -> object:
    return quantize_activations(rmsnorm(x, w, 1e-5))


def _np_silu_mul_quantize(g: NDArray[np.float32], u: NDArray[np.float32]) -> object:
    return quantize_activations(silu(g) * u)


def bench_row_kernels(repeats: int, budget_s: float, report: Report) -> None:
    rng = np.random.default_rng(3)
    for m, dim, ffn in [(1, 768, 2048), (32, 2048, 5632), (512, 2048, 5632)]:
        x = rng.standard_normal((m, dim)).astype(np.float32)
        wgt = rng.standard_normal(dim).astype(np.float32)
        g = rng.standard_normal((m, ffn)).astype(np.float32)
        u = rng.standard_normal((m, ffn)).astype(np.float32)
        pairs: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            (
                "quantize_rows",
                functools.partial(quantize_activations, x),
                functools.partial(native.quantize_rows, x),
            ),
            (
                "rmsnorm_quantize",
                functools.partial(_np_rmsnorm_quantize, x, wgt),
                functools.partial(native.rmsnorm_quantize, x, wgt, 1e-5),
            ),
            (
                "silu_mul_quantize",
                functools.partial(_np_silu_mul_quantize, g, u),
                functools.partial(native.silu_mul_quantize, g, u),
            ),
        ]
        for name, f_np, f_nat in pairs:
            t_np, _ = timeit(f_np, repeats, budget_s)
            t_nat, _ = timeit(f_nat, repeats, budget_s)
            width = ffn if name.startswith("silu") else dim
            report.row_kernels.append(
                {"kernel": name, "shape": f"{m}x{width}", "numpy_us": t_np * 1e6, "native_us": t_nat * 1e6}
            )
            print(f"{name:18s} {m:4d}x{width:<5d} numpy {t_np * 1e6:9.1f} us  native {t_nat * 1e6:8.1f} us")


def bench_kv_store(repeats: int, budget_s: float, report: Report, baseline: Any | None = None) -> None:
    """kv_store of a prefill (512 rows) and of a decode step (32 rows) against numpy's fancy assignment."""
    rng = np.random.default_rng(4)
    for model, hkv, d in [("110m", 12, 64), ("1.1b", 4, 64), ("32 heads", 32, 64)]:
        for rows in (512, 32):
            k = rng.standard_normal((rows, hkv, d)).astype(np.float32)
            v = rng.standard_normal((rows, hkv, d)).astype(np.float32)
            k_cache = np.zeros((4096, hkv, d), np.float16)
            v_cache = np.zeros((4096, hkv, d), np.float16)
            slots = rng.permutation(4096)[:rows].astype(np.int64)

            def numpy_store(
                k: NDArray[np.float32] = k, v: NDArray[np.float32] = v, kc: NDArray[np.float16] = k_cache,
                vc: NDArray[np.float16] = v_cache, sl: NDArray[np.int64] = slots,
            ) -> None:  # fmt: skip
                kc[sl] = k
                vc[sl] = v

            t_np, _ = timeit(numpy_store, repeats, budget_s)
            t_nat, b_nat, _ = timeit_best(
                functools.partial(native.kv_store, k, v, k_cache, v_cache, slots), repeats, budget_s
            )
            shape = f"{rows}x{hkv}x{d}"
            entry = {"model": model, "shape": shape, "numpy_us": t_np * 1e6, "native_us": t_nat * 1e6,
                     "native_best_us": b_nat * 1e6}  # fmt: skip
            base = ""
            if baseline is not None:
                t_base, b_base, _ = timeit_best(
                    functools.partial(baseline.kv_store, k, v, k_cache, v_cache, slots), repeats, budget_s
                )
                entry.update(baseline_us=t_base * 1e6, baseline_best_us=b_base * 1e6)
                base = f"  baseline {t_base * 1e6:7.1f} us (best {b_base * 1e6:6.1f})"
            report.kv_store.append(entry)
            print(
                f"kv_store {model:8s} {shape:10s} numpy {t_np * 1e6:8.1f} us  native {t_nat * 1e6:7.1f} us "
                f"(best {b_nat * 1e6:6.1f})" + base,
                flush=True,
            )


# Matrices that read the same input: (label, K, row counts).
LINEAR_GROUPS = [
    ("110m q/k/v", 768, [768, 768, 768]),
    ("110m gate/up", 768, [2048, 2048]),
    ("1.1b q/k/v", 2048, [2048, 256, 256]),
    ("1.1b gate/up", 2048, [5632, 5632]),
]


def bench_linear_calls(repeats: int, budget_s: float, report: Report) -> None:
    """Per-call cost of linear_s8 (a tiny shape: argument checks and the Python wrapper, no pool dispatch), and
    separate linear_s8 calls against one linear_s8_multi for matrices that share their input. The shapes are
    cache-resident (one copy of each matrix), so the per-call costs show rather than DRAM."""
    rng = np.random.default_rng(5)
    x1 = rng.integers(-127, 128, (1, 64), dtype=np.int8)
    xs1 = np.ones(1, np.float32)
    w_tiny = rng.integers(-128, 128, (16, 64), dtype=np.int8)
    s_tiny = np.ones(16, np.float32)
    o_tiny = np.empty((1, 16), np.float32)
    outs3 = [np.empty((1, 16), np.float32) for _ in range(3)]

    def three_calls() -> None:
        for o in outs3:
            native.linear_s8(x1, xs1, w_tiny, s_tiny, None, o)

    tiny: list[tuple[str, Callable[[], object]]] = [
        ("linear_s8 1x64 @ 16x64, out given", functools.partial(native.linear_s8, x1, xs1, w_tiny, s_tiny, None, o_tiny)),
        ("linear_s8 1x64 @ 16x64, out allocated", functools.partial(native.linear_s8, x1, xs1, w_tiny, s_tiny)),
        ("3 x linear_s8 1x64 @ 16x64", three_calls),
        ("linear_s8_multi 1x64 @ 3 x 16x64", functools.partial(
            native.linear_s8_multi, x1, xs1, [w_tiny] * 3, [s_tiny] * 3, [None] * 3, outs3)),
    ]  # fmt: skip
    for label, fn in tiny:
        t, best = per_call(fn, 2000)
        report.linear_calls.append({"case": label, "median_us": t * 1e6, "best_us": best * 1e6})
        print(f"{label:42s} {t * 1e6:8.2f} us (best {best * 1e6:6.2f})", flush=True)
    # The pool's dispatch (publish, wake the spinning workers, join): a GEMV just big enough to use the pool,
    # timed back to back (workers spinning) with all threads and with one.
    x_k = rng.integers(-127, 128, (1, 1024), dtype=np.int8)
    w_k = rng.integers(-128, 128, (64, 1024), dtype=np.int8)
    s_k = np.ones(64, np.float32)
    o_k = np.empty((1, 64), np.float32)
    threads = native.num_threads()
    for n_threads in sorted({threads, 1}, reverse=True):
        native.set_num_threads(n_threads)
        fn = functools.partial(native.linear_s8, x_k, xs1, w_k, s_k, None, o_k)
        t, best = per_call(fn, 2000)
        label = f"linear_s8 1x1024 @ 64x1024, {n_threads} thread(s)"
        report.linear_calls.append({"case": label, "median_us": t * 1e6, "best_us": best * 1e6})
        print(f"{label:42s} {t * 1e6:8.2f} us (best {best * 1e6:6.2f})", flush=True)
    native.set_num_threads(threads)
    for label, k, rows in LINEAR_GROUPS:
        ws = [rng.integers(-128, 128, (n, k), dtype=np.int8) for n in rows]
        scales = [np.ones(n, np.float32) for n in rows]
        biases: list[NDArray[np.float32] | None] = [None] * len(rows)
        for m in (1, 32):
            x = rng.integers(-127, 128, (m, k), dtype=np.int8)
            xs = np.ones(m, np.float32)
            outs = [np.empty((m, n), np.float32) for n in rows]

            def separate(
                x: NDArray[np.int8] = x, xs: NDArray[np.float32] = xs, ws: list[NDArray[np.int8]] = ws,
                scales: list[NDArray[np.float32]] = scales, outs: list[NDArray[np.float32]] = outs,
            ) -> None:  # fmt: skip
                for w, sc, o in zip(ws, scales, outs, strict=True):
                    native.linear_s8(x, xs, w, sc, None, o)

            multi = functools.partial(native.linear_s8_multi, x, xs, ws, scales, biases, outs)
            t_sep, b_sep, _ = timeit_best(separate, repeats * 4, budget_s)
            t_multi, b_multi, _ = timeit_best(multi, repeats * 4, budget_s)
            case = f"{label} M={m} ({'+'.join(str(n) for n in rows)} x {k})"
            report.linear_calls.append(
                {"case": case, "separate_us": t_sep * 1e6, "multi_us": t_multi * 1e6,
                 "separate_best_us": b_sep * 1e6, "multi_best_us": b_multi * 1e6}
            )  # fmt: skip
            print(
                f"{case:42s} separate {t_sep * 1e6:8.1f} us (best {b_sep * 1e6:7.1f})  multi "
                f"{t_multi * 1e6:8.1f} us (best {b_multi * 1e6:7.1f})",
                flush=True,
            )


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=native.default_num_threads())
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per measurement (at most)")
    parser.add_argument(
        "--budget", type=float, default=1.5, help="seconds per measurement before fewer repeats"
    )
    parser.add_argument("--candidates", nargs="*", help="subset of numpy native numba onnxruntime torch")
    parser.add_argument("--m", type=int, nargs="*", default=list(M_VALUES), help="activation rows")
    parser.add_argument("--models", nargs="*", default=["110m", "1.1b"], choices=["110m", "1.1b"])
    parser.add_argument("--skip-gemm", action="store_true")
    parser.add_argument("--skip-attention", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--warm",
        type=float,
        default=WARM_S["default"],
        help="seconds of calls before each measurement (cold start, other pools' spinning threads)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another build of lpu_runtime/_native*.so: candidate 'baseline' (before/after)",
    )
    args = parser.parse_args(argv)

    threads = max(1, args.threads)
    WARM_S["now"] = max(0.0, args.warm)
    # OpenMP pools (torch, numba) sleep as soon as a parallel region ends instead of spinning into the next
    # candidate's measurement. Set before the candidates load their OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    report = Report(machine_info(threads), {}, {}, {}, {})
    print(json.dumps(report.machine))
    baseline = load_baseline(args.baseline) if args.baseline else None
    report.bandwidth_gb_s = memory_bandwidth(args.repeats)
    print("memory bandwidth GB/s:", {k: round(v, 1) for k, v in report.bandwidth_gb_s.items()}, flush=True)
    if not args.skip_gemm:
        candidates = load_candidates(
            threads, set(args.candidates) if args.candidates else None, report, baseline
        )
        for name, status in report.candidates.items():
            print(
                f"candidate {name}: {status}"
                + (f", set-up {report.setup_s[name]:.2f} s" if name in report.setup_s else "")
            )
        for name, fn in candidates.items():
            report.probes[name] = exactness_probes(fn)
            print(f"exactness probes {name}: {report.probes[name]}", flush=True)
        shapes = {}
        if "110m" in args.models:
            shapes.update(SHAPES_110M)
        if "1.1b" in args.models:
            shapes.update(SHAPES_1B)
        bench_gemm(candidates, shapes, tuple(args.m), args.repeats, args.budget, report)
        report.estimates = model_estimates(report)
    if not args.skip_attention and native.AVAILABLE:
        native.set_num_threads(threads)
        if baseline is not None:
            baseline.set_num_threads(threads)
        bench_attention(args.repeats, args.budget, report, baseline)
        bench_kv_store(args.repeats, args.budget, report, baseline)
        bench_row_kernels(args.repeats, args.budget, report)
        bench_linear_calls(args.repeats, args.budget, report)
    report.machine["loadavg_end"] = list(os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
