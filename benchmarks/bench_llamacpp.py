"""Side-by-side benchmark: lpu-serve against llama.cpp's llama-server on the same GGUF files.

Both servers are started here, one at a time, on free localhost ports, with the same kernel thread count
(llama-server `-t T -tb T`; lpu-serve LPU_NUM_THREADS=T and the BLAS/OpenMP thread variables), and get
byte-identical /v1/completions requests: the same text prompt (checked: both must report the same prompt token
count), temperature 0, `ignore_eos` so every request generates exactly max_tokens tokens, `cache_prompt: false`
(llama-server's prefix reuse; lpu-serve ignores the field). Each repeat starts system A, measures, stops it, then
system B, alternating which goes first; medians over repeats, ratio = lpu-serve / llama.cpp.

Rows (select with --rows; the default is all, about 20-30 minutes on a 2-core machine):
  1  rand-110M Q8_0, 1 stream: decode tok/s (first token -> last token, client side)
  2  rand-1.1B Q8_0, 1 stream: decode tok/s
  3  rand-110M, 32 concurrent streams: aggregate tok/s (all completion tokens / burst wall time)
  4  rand-1.1B, 32 concurrent streams: aggregate tok/s and TTFT p50
  5  rand-110M, 512-token prompt: time to first token
  6  host RSS of the server's processes with rand-1.1B loaded (VmRSS after load and after the runs, VmHWM)
  7  HTTP+SSE cost: lpu-serve's 32-stream aggregate tok/s against the same engine driven in-process (no HTTP),
     and the server's event-loop lag p99 over that 32-stream run (lpu_event_loop_lag_seconds, two scrapes)
  8  rand-110M, 8 streams: the emulated LPU's aggregate tok/s (from the simulated clock) against `lpu plan`'s
     pipelined figure for the same model, chips, batch and contexts (no llama.cpp; the emulator's own check)

The models come from `bash ../shared/bench/llamacpp.sh models` (random weights, Llama 2 vocabulary).

    .venv/bin/python benchmarks/bench_llamacpp.py --json bench-llamacpp.json
    .venv/bin/python benchmarks/bench_llamacpp.py --rows 1 5 --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
PEERS_CACHE = Path(os.environ.get("LPU_PEERS_CACHE", Path.home() / ".cache" / "lpu-peers"))
BUILD_HINT = (
    "bash ../shared/bench/llamacpp.sh models   (from the repository root; about 7 minutes on 2 cores)"
)
OURS, LLAMA, ENGINE = "lpu-serve", "llama.cpp", "engine alone"
ALL_ROWS = (1, 2, 3, 4, 5, 6, 7, 8)
EMULATED_USERS = 8  # row 8's batch
# Row 8's tokens per request: the first decode round waits behind the prefill's micro-batches, a fixed offset
# the steady-state planner figure leaves out (0.11% of 16 tokens' time, 0.03% of 64, 0.006% of 256)
EMULATED_TOKENS = 128
LAG_METRIC = "lpu_event_loop_lag_seconds"
WARMUP_PROMPT_TOKENS, WARMUP_TOKENS = 8, 4  # one unmeasured request per started server

# Single-token words of the Llama 2 vocabulary with their ids ("▁the" is 278, ...). A prompt is BOS and then
# these words cycled from an offset, so its token count is known exactly, every request of a run can differ
# from the others from its second token on, and the engine-alone row can feed the very same ids.
BOS_ID = 1
WORDS: tuple[tuple[str, int], ...] = (
    ("the", 278), ("of", 310), ("and", 322), ("to", 304), ("in", 297), ("is", 338), ("was", 471),
    ("for", 363), ("on", 373), ("that", 393), ("with", 411), ("as", 408), ("by", 491), ("at", 472),
    ("from", 515), ("it", 372), ("his", 670), ("an", 385), ("are", 526), ("were", 892), ("which", 607),
    ("this", 445), ("be", 367), ("or", 470), ("has", 756), ("had", 750), ("not", 451), ("but", 541),
    ("their", 1009), ("its", 967), ("also", 884), ("first", 937), ("one", 697), ("after", 1156),
    ("new", 716), ("who", 1058), ("they", 896), ("two", 1023), ("her", 902), ("she", 1183), ("been", 1063),
    ("other", 916), ("when", 746), ("there", 727), ("all", 599), ("during", 2645), ("into", 964),
    ("school", 3762), ("time", 931), ("may", 1122), ("years", 2440), ("more", 901), ("most", 1556),
    ("only", 871), ("over", 975), ("city", 4272), ("some", 777), ("world", 3186), ("would", 723),
    ("where", 988), ("later", 2678), ("up", 701), ("such", 1316), ("used", 1304), ("many", 1784),
    ("can", 508), ("state", 2106), ("about", 1048), ("national", 4797), ("out", 714), ("known", 2998),
    ("university", 16372), ("then", 769), ("made", 1754),
)  # fmt: skip


@dataclass(frozen=True)
class Prompt:
    text: str
    token_ids: tuple[int, ...]  # BOS + one id per word: what both tokenizers must count


def make_prompt(n_tokens: int, offset: int) -> Prompt:
    """A prompt of exactly n_tokens tokens (BOS included) under the Llama 2 tokenizer."""
    picked = [WORDS[(offset + i) % len(WORDS)] for i in range(n_tokens - 1)]
    return Prompt(" ".join(w for w, _ in picked), (BOS_ID, *(i for _, i in picked)))


# ---- statistics -------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def parse_histogram(metrics_text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} of an unlabelled histogram in Prometheus' text format."""
    pattern = rf'^{re.escape(name)}_bucket\{{le="([^"]+)"\}} (\S+)$'
    return {float(le): float(v) for le, v in re.findall(pattern, metrics_text, re.MULTILINE)}


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """The q-quantile of the observations between two scrapes, interpolated linearly inside its bucket, as
    Prometheus' histogram_quantile does (the first bucket starts at 0; a quantile in +Inf is the last bound)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return math.nan
    rank = q * counts[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return bounds[-1]


# ---- one streamed request ---------------------------------------------------------------------------------


@dataclass
class StreamSample:
    ttft_s: float  # request sent -> first chunk carrying text
    decode_s: float  # first text chunk -> final chunk (the last token)
    total_s: float
    prompt_tokens: int  # as the server reports it
    completion_tokens: int
    decode_tps: float  # (completion_tokens - 1) / decode_s
    server: dict[str, Any] = field(default_factory=dict)  # usage timings / llama.cpp's `timings`


async def sse_events(url: str, path: str, body: dict[str, Any]) -> AsyncIterator[tuple[float, bytes]]:
    """POSTs `body` and yields (arrival time, data) per server-sent event, on a raw asyncio connection.

    Not httpx: at 32 streams its per-chunk Python cost was ~1.6 s of CPU per 11 s burst on a 2-core machine,
    taken from whichever server was being measured. This reads HTTP/1.1 chunked framing and SSE lines only.
    """
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"HTTP {status.decode()}: {(await reader.read(500)).decode(errors='replace')}")
        chunked = b"transfer-encoding: chunked" in head.lower()
        pending = b""
        while True:
            if chunked:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    return
                data = await reader.readexactly(size + 2)  # the chunk and its CRLF
                pending += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
                pending += data
            now = time.perf_counter()
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"data: "):
                    yield now, line[6:].rstrip(b"\r")
    finally:
        writer.close()


async def stream_completion(url: str, model: str, prompt: Prompt, max_tokens: int) -> StreamSample:
    body = {
        "model": model,
        "prompt": prompt.text,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "cache_prompt": False,  # llama-server: no prefix reuse between requests (lpu-serve has none)
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first: float | None = None
    last: float | None = None
    usage: dict[str, Any] = {}
    server: dict[str, Any] = {}
    async for now, data in sse_events(url, "/v1/completions", body):
        if data == b"[DONE]":
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"stream error: {chunk['error']}")
        for choice in chunk.get("choices") or ():
            if choice.get("text"):
                first = now if first is None else first
                last = now
            if choice.get("finish_reason"):
                last = now
        if chunk.get("usage"):
            usage = chunk["usage"]
        if chunk.get("timings"):
            server["timings"] = chunk["timings"]
        if chunk.get("x_lpu"):
            server["x_lpu"] = chunk["x_lpu"]
    done = time.perf_counter()
    if first is None or last is None or not usage:
        raise RuntimeError("the stream carried no text or no usage")
    server["usage"] = usage
    tokens = int(usage.get("completion_tokens", 0))
    decode_s = last - first
    return StreamSample(
        ttft_s=first - sent,
        decode_s=decode_s,
        total_s=done - sent,
        prompt_tokens=int(usage.get("prompt_tokens", -1)),
        completion_tokens=tokens,
        decode_tps=(tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else math.nan,
        server=server,
    )


@dataclass
class Burst:
    streams: int
    wall_s: float  # first request sent -> last stream done
    aggregate_tps: float  # completion tokens of all streams / wall
    ttft_p50_s: float
    samples: list[StreamSample]
    lag_p99_s: float = math.nan  # lpu-serve only: event-loop lag p99 over the burst
    lag_samples: float = 0.0


async def burst(url: str, model: str, prompts: Sequence[Prompt], max_tokens: int) -> Burst:
    start = time.perf_counter()
    samples = await asyncio.gather(*(stream_completion(url, model, p, max_tokens) for p in prompts))
    wall = time.perf_counter() - start
    return Burst(
        streams=len(prompts),
        wall_s=wall,
        aggregate_tps=sum(s.completion_tokens for s in samples) / wall,
        ttft_p50_s=median([s.ttft_s for s in samples]),
        samples=list(samples),
    )


# ---- processes --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_status(pid: int) -> dict[str, int]:
    """Memory of a process in bytes: VmRSS, VmHWM, RssAnon, RssFile, RssShmem from /proc/PID/status, and
    RssGguf, the resident pages of memory-mapped .gguf files (part of RssFile), from /proc/PID/smaps."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in wanted:
                out[key] = int(value.split()[0]) * 1024
    with contextlib.suppress(OSError):
        in_gguf, gguf = False, 0
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            fields = line.split()
            if fields and not fields[0].endswith(
                ":"
            ):  # a mapping's header: address perms offset dev inode path
                in_gguf = len(fields) >= 6 and fields[5].endswith(".gguf")
            elif in_gguf and fields[0] == "Rss:":
                gguf += int(fields[1]) * 1024
        out["RssGguf"] = gguf
    return out


def descendants(pid: int) -> list[int]:
    """The process and every process it started, recursively (lpu-serve's engine process among them)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def tree_status(pid: int) -> dict[str, int]:
    """proc_status summed over the process tree: lpu-serve holds its chips in an engine process of its own.
    Shared library pages count once per process, so the sum slightly overstates; VmHWM is the sum of peaks."""
    total: dict[str, int] = {}
    for p in descendants(pid):
        for key, value in proc_status(p).items():
            total[key] = total.get(key, 0) + value
    return total


def thread_env(threads: int) -> dict[str, str]:
    """The environment both servers get: no LPU_* settings from the caller, T threads for every pool."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LPU_")}
    env["PYTHONPATH"] = str(REPO_ROOT)  # this checkout's server and lpu_runtime, whatever the venv points at
    for name in ("LPU_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    return env


class Process:
    """A child in its own session (Ctrl-C reaches only us; we stop it), its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.command, self.env, self.log_path = name, command, env, log_path
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, stdout: int | None = None) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.command)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.command, cwd=REPO_ROOT, env=self.env, stdout=stdout if stdout is not None else log,
                stderr=log, start_new_session=True,
            )  # fmt: skip

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (both servers shut down cleanly on it), SIGKILL after timeout_s; returns the exit status."""
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode


class Server(Process):
    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        super().__init__(name, command, env, log_path)
        self.url = f"http://127.0.0.1:{port}"
        self.load_s = math.nan

    def wait_healthy(self, timeout_s: float) -> None:
        started = time.monotonic()
        while True:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.popen.returncode} while starting; its log "
                    f"{self.log_path} ends:\n{self.log_tail()}"
                )
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(
                    f"{self.name} was not healthy after {timeout_s:.0f} s; log {self.log_path}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    self.load_s = time.monotonic() - started
                    return
            time.sleep(0.25)

    def model_id(self) -> str:
        response = httpx.get(f"{self.url}/v1/models", timeout=30)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])


@contextlib.contextmanager
def running(server: Server, timeout_s: float) -> Iterator[Server]:
    try:
        server.start()
        server.wait_healthy(timeout_s)
        yield server
    finally:
        status = server.stop()
        if status not in (None, 0, -signal.SIGTERM):
            print(
                f"  note: {server.name} exited with status {status} (log {server.log_path})", file=sys.stderr
            )


# ---- configuration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSetup:
    key: str  # "110M" / "1.1B"
    gguf: Path
    chips: int  # lpu-serve --chips
    ctx_per_slot: int  # lpu-serve --max-model-len; llama-server -c streams x this
    streams: int  # slots: lpu-serve --max-num-seqs, llama-server -np


@dataclass(frozen=True)
class Config:
    threads: int
    repeats: int
    rows: tuple[int, ...]
    prompt_tokens: int
    long_prompt_tokens: int
    single_requests: dict[str, int]  # sequential 1-stream requests per repeat
    max_tokens_single: dict[str, int]
    max_tokens_burst: dict[str, int]
    long_prompt_requests: int
    max_tokens_long: int
    streams: int
    start_timeout_s: float
    row7_model: str  # the model whose 32-stream run row 7 compares with the engine alone


def ours_command(setup: ModelSetup, port: int) -> list[str]:
    return [
        sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--model", str(setup.gguf), "--chips", str(setup.chips), "--max-model-len", str(setup.ctx_per_slot),
        "--max-num-seqs", str(setup.streams), "--log-level", "warning",
        # llama-server queues without a bound; so does lpu-serve here, or a burst could meet its 429s
        "--max-waiting-requests", "100000", "--max-waiting-tokens", "100000000",
    ]  # fmt: skip


def llama_flags(setup: ModelSetup, threads: int) -> list[str]:
    return [
        "-t", str(threads), "-tb", str(threads), "-np", str(setup.streams),
        "-c", str(setup.streams * setup.ctx_per_slot),
        "--cache-ram", "0",  # no host-RAM prompt cache (lpu-serve has none; it would also grow the RSS)
        "--no-webui",
        "-lv", "4",  # logs its buffer sizes (model, KV, compute) for row 6; a few lines per request
    ]  # fmt: skip


def llama_command(llama_bin: Path, setup: ModelSetup, threads: int, port: int) -> list[str]:
    return [
        str(llama_bin / "llama-server"), "-m", str(setup.gguf), "--host", "127.0.0.1", "--port", str(port),
        *llama_flags(setup, threads),
    ]  # fmt: skip


# ---- one server session: every selected measurement on one model -----------------------------------------


async def same_token_ids(client: httpx.AsyncClient, prompt: Prompt) -> bool:
    """Whether llama-server's tokenizer gives the ids the engine-alone row feeds (it always gives the count)."""
    response = await client.post("/tokenize", json={"content": prompt.text, "add_special": True})
    response.raise_for_status()
    return tuple(response.json()["tokens"]) == prompt.token_ids


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    response.raise_for_status()
    return response.text


async def measure_session(
    server: Server, system: str, setup: ModelSetup, cfg: Config, wanted: set[str], repeat: int
) -> dict[str, Any]:
    """What one started server gives: warm-up, then 1-stream decode, a 32-stream burst, long-prompt TTFT."""
    result: dict[str, Any] = {"load_s": server.load_s, "memory_after_load": tree_status(server.pid)}
    model = server.model_id()
    result["model_id"] = model
    # A fresh connection per request: llama-server (cpp-httplib) may close an idle keep-alive connection just
    # as the client reuses it; localhost connects cost ~0.1 ms, the same for both systems.
    limits = httpx.Limits(max_connections=cfg.streams + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(3600.0), limits=limits) as client:
        await stream_completion(server.url, model, make_prompt(WARMUP_PROMPT_TOKENS, 1000), WARMUP_TOKENS)
        if system == LLAMA:
            result["token_ids_match"] = await same_token_ids(client, make_prompt(cfg.long_prompt_tokens, 0))
        base = repeat * 100  # each repeat's prompts differ from the last one's; both systems get the same
        if "single" in wanted:
            n = cfg.max_tokens_single[setup.key]
            result["single"] = [
                await stream_completion(server.url, model, make_prompt(cfg.prompt_tokens, base + i), n)
                for i in range(cfg.single_requests[setup.key])
            ]
        if "burst" in wanted:
            prompts = [make_prompt(cfg.prompt_tokens, base + 50 + i) for i in range(cfg.streams)]
            before = parse_histogram(await scrape(client), LAG_METRIC) if system == OURS else {}
            b = await burst(server.url, model, prompts, cfg.max_tokens_burst[setup.key])
            if system == OURS:
                after = parse_histogram(await scrape(client), LAG_METRIC)
                b.lag_p99_s = histogram_quantile(0.99, before, after)
                b.lag_samples = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
            result["burst"] = b
        if "long" in wanted:
            result["long"] = [
                await stream_completion(
                    server.url, model, make_prompt(cfg.long_prompt_tokens, base + 90 + i), cfg.max_tokens_long
                )
                for i in range(cfg.long_prompt_requests)
            ]
        if system == OURS:
            result["sram"] = sram_by_region(await scrape(client))
    result["memory_after_runs"] = tree_status(server.pid)
    if system == LLAMA:
        result["buffers"] = llama_buffers(server.log_path)
    return result


def sram_by_region(metrics_text: str) -> dict[str, float]:
    """Bytes the compiler placed in emulated SRAM, by region, over all chips (host arrays hold them)."""
    totals: dict[str, float] = {}
    for region, value in re.findall(
        r'^lpu_chip_sram_used_bytes\{[^}]*region="([^"]+)"[^}]*\} (\S+)$', metrics_text, re.MULTILINE
    ):
        totals[region] = totals.get(region, 0.0) + float(value)
    return totals


def llama_buffers(log_path: Path) -> dict[str, float]:
    """llama.cpp's own account of its buffers, from its log: model (mmapped), KV cache, compute, in MiB."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    out: dict[str, float] = {}
    for label, pattern in (
        ("model", r"CPU_Mapped model buffer size =\s*([\d.]+) MiB"),
        ("model_repack", r"CPU_REPACK model buffer size =\s*([\d.]+) MiB"),
        ("kv_cache", r"CPU KV buffer size =\s*([\d.]+) MiB"),
        ("compute", r"CPU compute buffer size =\s*([\d.]+) MiB"),
        ("output", r"CPU\s+output buffer size =\s*([\d.]+) MiB"),
    ):
        values = [float(v) for v in re.findall(pattern, text)]
        if values:
            out[label] = values[-1] if label != "kv_cache" else sum(values)
    return out


# ---- the engine alone (row 7): a child process with the server's environment ------------------------------


async def _engine_alone(spec: dict[str, Any]) -> dict[str, Any]:
    """Drives AsyncEngine in-process exactly like the server does, without HTTP; public names only."""
    from lpu_runtime import AsyncEngine, EngineConfig, GenerationRequest, SamplingParams, SystemSpec

    loaded = time.perf_counter()
    engine = AsyncEngine.create(
        model=spec["model"],
        system=SystemSpec(n_chips=spec["chips"]),
        engine_config=EngineConfig(max_num_seqs=spec["streams"]),
        max_context=spec["ctx_per_slot"],
    )
    load_s = time.perf_counter() - loaded
    engine.start()

    async def one(request_id: str, ids: Sequence[int], max_tokens: int) -> tuple[float, int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        sent, first, tokens = time.perf_counter(), math.nan, 0
        async for out in engine.generate(GenerationRequest(request_id, tuple(ids), params)):
            if out.new_token_ids and tokens == 0:
                first = time.perf_counter()
            tokens += len(out.new_token_ids)
        return first - sent, tokens

    try:
        for i, ids in enumerate(spec["warmup"]):
            await one(f"warmup-{i}", ids, WARMUP_TOKENS)
        start = time.perf_counter()
        results = await asyncio.gather(
            *(one(f"r{i}", ids, spec["max_tokens"]) for i, ids in enumerate(spec["prompts"]))
        )
        wall = time.perf_counter() - start
    finally:
        engine.shutdown()
    return {
        "load_s": load_s,
        "wall_s": wall,
        "aggregate_tps": sum(t for _, t in results) / wall,
        "ttft_p50_s": median([ttft for ttft, _ in results]),
        "completion_tokens": [t for _, t in results],
    }


def _emulated_vs_planner(spec: dict[str, Any]) -> dict[str, Any]:
    """Row 8: 8 equal requests decode together on the emulated chips; the simulated clock's aggregate against
    the planner's pipelined figure summed over the same rounds (each round at its own context)."""
    from lpu_runtime.catalog import load_model
    from lpu_runtime.compiler import compile_model
    from lpu_runtime.config import EngineConfig, SystemSpec
    from lpu_runtime.engine import Engine
    from lpu_runtime.executor import PipelineExecutor
    from lpu_runtime.plan import pipelined_micro_batches, pipelined_token_cycles
    from lpu_runtime.types import EngineCoreOutput, GenerationRequest, SamplingParams

    loaded = load_model(spec["model"], max_context=spec["ctx_per_slot"])
    plan = compile_model(loaded.config, SystemSpec(spec["chips"]), EngineConfig(max_num_seqs=spec["streams"]))
    engine = Engine(plan, PipelineExecutor(plan, loaded.source), loaded.tokenizer.eos_ids)
    n_tokens, prompts = spec["max_tokens"], spec["prompts"]
    params = SamplingParams(max_tokens=n_tokens, temperature=0.0, ignore_eos=True)
    for i, ids in enumerate(prompts):
        engine.add(engine.make_sequence(GenerationRequest(f"e{i}", tuple(ids), params)))
    last: dict[str, EngineCoreOutput] = {}
    while engine.has_work():
        for out in engine.step():
            last[out.request_id] = out
    clock = plan.system.chip.clock_hz
    emulated = sum((n_tokens - 1) / (out.completion_cycles / clock) for out in last.values())
    prompt = len(prompts[0])
    # round r's token attends the prompt, the r - 1 tokens before it and itself
    cycles = sum(pipelined_token_cycles(plan, len(prompts), prompt + r) for r in range(1, n_tokens))
    planner = len(prompts) * (n_tokens - 1) / (cycles / clock)
    return {
        "emulated_aggregate_tps": emulated,
        "planner_aggregate_tps": planner,
        "stages": len(plan.stages),
        "micro_batches": len(pipelined_micro_batches(plan, len(prompts), prompt + n_tokens // 2)),
    }


def child_main(kind: str, spec_json: str) -> int:
    spec = json.loads(spec_json)
    result = asyncio.run(_engine_alone(spec)) if kind == "engine" else _emulated_vs_planner(spec)
    print(json.dumps(result))
    return 0


def run_child(kind: str, spec: dict[str, Any], cfg: Config, log_dir: Path, tag: str) -> dict[str, Any]:
    """Runs `_engine_alone` (kind "engine") or `_emulated_vs_planner` ("emulated") in a child process with the
    servers' thread environment; returns its JSON result."""
    out_path = log_dir / f"{tag}.json"
    child = Process(
        kind,
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)],
        thread_env(cfg.threads),
        log_dir / f"{tag}.log",
    )
    try:
        with out_path.open("wb") as out:
            child.start(stdout=out.fileno())
            assert child.popen is not None
            status = child.popen.wait()
    finally:
        child.stop()
    if status != 0:
        raise RuntimeError(f"the {kind} run failed (status {status}); log {child.log_path}")
    result: dict[str, Any] = json.loads(out_path.read_text().strip().splitlines()[-1])
    return result


def run_engine_alone(setup: ModelSetup, cfg: Config, repeat: int, log_dir: Path, tag: str) -> dict[str, Any]:
    base = repeat * 100
    spec = {
        "model": str(setup.gguf),
        "chips": setup.chips,
        "ctx_per_slot": setup.ctx_per_slot,
        "streams": setup.streams,
        "max_tokens": cfg.max_tokens_burst[setup.key],
        "warmup": [list(make_prompt(WARMUP_PROMPT_TOKENS, 1000).token_ids)],
        "prompts": [
            list(make_prompt(cfg.prompt_tokens, base + 50 + i).token_ids) for i in range(cfg.streams)
        ],
    }
    return run_child("engine", spec, cfg, log_dir, tag)


def run_emulated(setup: ModelSetup, cfg: Config, log_dir: Path) -> dict[str, Any]:
    spec = {
        "model": str(setup.gguf),
        "chips": setup.chips,
        "ctx_per_slot": setup.ctx_per_slot,
        "streams": setup.streams,
        "max_tokens": EMULATED_TOKENS,
        "prompts": [list(make_prompt(cfg.prompt_tokens, 300 + i).token_ids) for i in range(EMULATED_USERS)],
    }
    return run_child("emulated", spec, cfg, log_dir, f"{setup.key}-emulated")


# ---- the report -------------------------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def gib(nbytes: float) -> str:
    return "n/a" if math.isnan(nbytes) else f"{nbytes / 2**30:.2f} GiB"


def ratio_cell(ours: float, theirs: float, goal: str) -> tuple[float, str]:
    if math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return math.nan, "n/a"
    r = ours / theirs
    op, target = goal.split()
    met = r >= float(target.rstrip("x")) if op == ">=" else r <= float(target.rstrip("x"))
    return r, f"{r:.2f}x {'(met)' if met else '(missed)'}"


@dataclass
class Row:
    row: str
    ours: str
    llama: str
    ratio: str
    goal: str
    values: dict[str, float] = field(default_factory=dict)


def compare_row(label: str, ours: float, theirs: float, goal: str, unit: str, digits: int = 1) -> Row:
    r, cell = ratio_cell(ours, theirs, goal)
    return Row(
        label, f"{fmt(ours, digits)} {unit}", f"{fmt(theirs, digits)} {unit}", cell, goal,
        {"ours": ours, "llama_cpp": theirs, "ratio": r},
    )  # fmt: skip


def collect(sessions: list[dict[str, Any]], system: str, model: str, key: str) -> list[Any]:
    return [s[key] for s in sessions if s["system"] == system and s["model"] == model and key in s]


def build_rows(
    sessions: list[dict[str, Any]],
    engine_runs: list[dict[str, Any]],
    emulated: dict[str, Any] | None,
    cfg: Config,
) -> list[Row]:
    rows: list[Row] = []

    def single_tps(system: str, model: str) -> float:
        return median([x.decode_tps for group in collect(sessions, system, model, "single") for x in group])

    def burst_value(system: str, model: str, attr: str) -> float:
        return median([float(getattr(b, attr)) for b in collect(sessions, system, model, "burst")])

    def long_ttft(system: str, model: str) -> float:
        return median([x.ttft_s for group in collect(sessions, system, model, "long") for x in group])

    def rss(system: str, model: str, when: str, key: str) -> float:
        return median([float(m.get(key, math.nan)) for m in collect(sessions, system, model, when)])

    n1, n2 = cfg.max_tokens_single["110M"], cfg.max_tokens_single["1.1B"]
    if 1 in cfg.rows:
        rows.append(compare_row(
            f"1. 110M Q8_0, 1 stream: decode tok/s ({n1} tokens)",
            single_tps(OURS, "110M"), single_tps(LLAMA, "110M"), ">= 1.0x", "tok/s",
        ))  # fmt: skip
    if 2 in cfg.rows:
        rows.append(compare_row(
            f"2. 1.1B Q8_0, 1 stream: decode tok/s ({n2} tokens)",
            single_tps(OURS, "1.1B"), single_tps(LLAMA, "1.1B"), ">= 1.0x", "tok/s",
        ))  # fmt: skip
    s = cfg.streams
    if 3 in cfg.rows:
        rows.append(compare_row(
            f"3. 110M, {s} streams: aggregate tok/s ({cfg.max_tokens_burst['110M']} tokens each)",
            burst_value(OURS, "110M", "aggregate_tps"), burst_value(LLAMA, "110M", "aggregate_tps"),
            ">= 3x", "tok/s",
        ))  # fmt: skip
    if 4 in cfg.rows:
        rows.append(compare_row(
            f"4. 1.1B, {s} streams: aggregate tok/s ({cfg.max_tokens_burst['1.1B']} tokens each)",
            burst_value(OURS, "1.1B", "aggregate_tps"), burst_value(LLAMA, "1.1B", "aggregate_tps"),
            ">= 5x", "tok/s",
        ))  # fmt: skip
        rows.append(compare_row(
            f"4. 1.1B, {s} streams: TTFT p50",
            burst_value(OURS, "1.1B", "ttft_p50_s") * 1000, burst_value(LLAMA, "1.1B", "ttft_p50_s") * 1000,
            "<= 0.2x", "ms", 0,
        ))  # fmt: skip
    if 5 in cfg.rows:
        rows.append(compare_row(
            f"5. 110M, {cfg.long_prompt_tokens}-token prompt: TTFT",
            long_ttft(OURS, "110M") * 1000, long_ttft(LLAMA, "110M") * 1000, "<= 0.5x", "ms", 0,
        ))  # fmt: skip
    if 6 in cfg.rows:
        ours_rss = rss(OURS, "1.1B", "memory_after_runs", "VmRSS")
        llama_rss = rss(LLAMA, "1.1B", "memory_after_runs", "VmRSS")
        r, cell = ratio_cell(ours_rss, llama_rss, "<= 1.5x")
        rows.append(Row(
            "6. 1.1B loaded: host RSS after the runs (VmRSS)", gib(ours_rss), gib(llama_rss), cell, "<= 1.5x",
            {"ours": ours_rss, "llama_cpp": llama_rss, "ratio": r},
        ))  # fmt: skip
    if 7 in cfg.rows:
        model = cfg.row7_model
        http = burst_value(OURS, model, "aggregate_tps")
        alone = median([e["aggregate_tps"] for e in engine_runs])
        slowdown = 1 - http / alone if alone and not math.isnan(alone) else math.nan
        met = "(met)" if slowdown < 0.05 else "(missed)"
        rows.append(Row(
            f"7. {model}, {s} streams: HTTP+SSE slowdown of aggregate tok/s vs the engine alone",
            f"{fmt(slowdown * 100)}% ({fmt(http)} vs {fmt(alone)} tok/s)", "-",
            "n/a" if math.isnan(slowdown) else met, "< 5%",
            {"slowdown": slowdown, "http_tps": http, "engine_alone_tps": alone},
        ))  # fmt: skip
        lag = burst_value(OURS, model, "lag_p99_s") * 1000
        rows.append(Row(
            f"7. {model}, {s} streams: event-loop lag p99 during the run", f"{fmt(lag, 2)} ms", "-",
            "n/a" if math.isnan(lag) else ("(met)" if lag < 10 else "(missed)"), "< 10 ms", {"lag_p99_ms": lag},
        ))  # fmt: skip
    if emulated is not None:
        ours, planner = emulated["emulated_aggregate_tps"], emulated["planner_aggregate_tps"]
        r = ours / planner
        rows.append(Row(
            f"8. 110M on {emulated['stages']} stages, {EMULATED_USERS} streams: emulated aggregate tok/s vs "
            f"`lpu plan`'s pipelined figure ({emulated['micro_batches']} micro-batches in flight)",
            f"{fmt(ours)} tok/s", f"planner {fmt(planner)} tok/s", f"{r:.4f}x {'(met)' if abs(r - 1) < 1e-3 else '(missed)'}",
            "equal", {"ours": ours, "planner": planner, "ratio": r},
        ))  # fmt: skip
    return rows


def render_table(rows: Sequence[Row]) -> str:
    lines = ["| row | lpu-serve | llama.cpp | ratio | goal |", "|---|---:|---:|---:|---|"]
    lines += [f"| {r.row} | {r.ours} | {r.llama} | {r.ratio} | {r.goal} |" for r in rows]
    return "\n".join(lines)


def memory_notes(sessions: list[dict[str, Any]]) -> list[str]:
    """What each server's RSS with the 1.1B model consists of (medians over its sessions)."""
    notes = []
    for system in (OURS, LLAMA):
        group = [s for s in sessions if s["system"] == system and s["model"] == "1.1B"]
        if not group:
            continue

        def med(when: str, key: str, group: list[dict[str, Any]] = group) -> str:
            return gib(median([float(s[when].get(key, math.nan)) for s in group]))

        after = "memory_after_runs"
        line = (
            f"  {system}: VmRSS after load {med('memory_after_load', 'VmRSS')}, after the runs "
            f"{med(after, 'VmRSS')} = anonymous {med(after, 'RssAnon')} + file-backed {med(after, 'RssFile')} "
            f"(of which the memory-mapped GGUF {med(after, 'RssGguf')}, the rest shared libraries); "
            f"peak VmHWM {med(after, 'VmHWM')}"
        )
        if system == OURS and group[-1].get("sram"):
            line += (
                ". Emulated SRAM, allocated as host numpy arrays: "
                + ", ".join(f"{k} {gib(v)}" for k, v in group[-1]["sram"].items())
                + " (int8 weights with their scales, the fp16 KV reservation whose pages become resident as "
                "they are written, activation buffers); the rest of the anonymous memory is Python, numpy and "
                "per-step temporaries"
            )
        if system == LLAMA and group[-1].get("buffers"):
            line += (
                ". llama.cpp's buffers: "
                + ", ".join(f"{k} {v:,.0f} MiB" for k, v in group[-1]["buffers"].items())
                + " (model = the mmapped GGUF's weights; KV and compute are anonymous)"
            )
        notes.append(line)
    for s in sessions:
        burst_run = s.get("burst")
        if s["system"] == OURS and burst_run is not None:
            notes.append(
                f"  event-loop lag p99, lpu-serve {s['model']} repeat {s['repeat'] + 1}, {burst_run.streams}-stream "
                f"burst: {fmt(burst_run.lag_p99_s * 1000, 2)} ms over {burst_run.lag_samples:.0f} samples"
            )
    return notes


def load_average() -> float:
    return os.getloadavg()[0]


# ---- orchestration ----------------------------------------------------------------------------------------


def find_llama_bin(given: Path | None) -> Path | None:
    candidates = [given] if given else []
    if os.environ.get("LLAMA_BIN"):
        candidates.append(Path(os.environ["LLAMA_BIN"]))
    candidates += sorted(PEERS_CACHE.glob("llama.cpp-*/build/bin"), reverse=True)
    return next((c for c in candidates if c and (c / "llama-server").is_file()), None)


def find_models_dir(given: Path | None) -> Path:
    if given:
        return given
    return Path(os.environ.get("LLAMA_MODELS", PEERS_CACHE / "models"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=list(ALL_ROWS),
        choices=ALL_ROWS,
        help="rows to run (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="A/B repeats per model (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="kernel threads of both servers (default: the number of cores)",
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=32,
        help="prompt tokens (BOS included) of the decode and 32-stream rows (default 32)",
    )
    per_model = (
        # flag stem, 110M default, 1.1B default, help
        ("max-tokens", 64, 16, "tokens per 1-stream request (rows 1, 2)"),
        ("single-requests", 2, 1, "sequential 1-stream requests per repeat (rows 1, 2)"),
        ("burst-tokens", 32, 16, "tokens per stream of the 32-stream burst (rows 3, 4, 7)"),
        ("chips", 7, 12, "lpu-serve --chips: the fewest whose KV holds streams x context"),
        ("ctx", 1024, 1024, "context per slot: lpu-serve --max-model-len, llama-server -c streams x it "
         "(110M: its own; 1.1B: 32 x 2048 does not fit the emulated KV)"),
    )  # fmt: skip
    for stem, small, large, text in per_model:
        for suffix, default in (("110m", small), ("1b", large)):
            parser.add_argument(
                f"--{stem}-{suffix}", type=int, default=default, metavar="N",
                help=f"{'110M' if suffix == '110m' else '1.1B'}: {text} (default {default})",
            )  # fmt: skip
    parser.add_argument(
        "--long-prompt-tokens", type=int, default=512, help="row 5 prompt tokens, BOS included (default 512)"
    )
    parser.add_argument(
        "--long-prompt-requests", type=int, default=2, help="row 5 requests per repeat (default 2)"
    )
    parser.add_argument(
        "--streams", type=int, default=32, help="concurrent streams of rows 3, 4, 7 (default 32)"
    )
    parser.add_argument(
        "--row7-model",
        choices=("110M", "1.1B"),
        default="110M",
        help="model of row 7's HTTP vs engine-alone comparison (default 110M)",
    )
    parser.add_argument(
        "--llama-bin", type=Path, help="directory with llama-server (default: the llamacpp.sh cache)"
    )
    parser.add_argument(
        "--models-dir", type=Path, help="directory with rand-110M-q8_0.gguf and rand-1.1B-q8_0.gguf"
    )
    parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for a server")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs even on success")
    parser.add_argument("--json", type=Path, help="also write everything (raw samples too) to this file")
    parser.add_argument(
        "--child", nargs=2, metavar=("KIND", "SPEC_JSON"), help=argparse.SUPPRESS
    )  # the row-7 and row-8 children
    args = parser.parse_args(argv)
    for name, value in vars(args).items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.prompt_tokens, args.long_prompt_tokens) < 2:
        parser.error("prompts need at least 2 tokens (BOS and a word)")
    return args


def plan_sessions(cfg: Config) -> dict[str, set[str]]:
    """Which measurements each model's sessions take, from the selected rows."""
    plan: dict[str, set[str]] = {"110M": set(), "1.1B": set()}
    row_parts = {1: ("110M", "single"), 2: ("1.1B", "single"), 3: ("110M", "burst"), 4: ("1.1B", "burst"),
                 5: ("110M", "long"), 7: (cfg.row7_model, "burst")}  # fmt: skip
    for row in cfg.rows:
        if row in row_parts:
            model, part = row_parts[row]
            plan[model].add(part)
    if 6 in cfg.rows and not plan["1.1B"]:
        plan["1.1B"].add("load-only")
    return {model: parts for model, parts in plan.items() if parts}


def serialise(obj: Any) -> Any:
    if isinstance(obj, StreamSample | Burst):
        return serialise(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): serialise(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [serialise(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def check_counts(sessions: list[dict[str, Any]], cfg: Config) -> list[str]:
    """Both servers must have seen the same prompt token counts and generated exactly max_tokens."""
    problems = []
    for s in sessions:
        samples: list[tuple[str, StreamSample, int, int]] = []
        for part, prompt_n, gen_n in (
            ("single", cfg.prompt_tokens, cfg.max_tokens_single[s["model"]]),
            ("long", cfg.long_prompt_tokens, cfg.max_tokens_long),
        ):
            samples += [(part, x, prompt_n, gen_n) for x in s.get(part, [])]
        if "burst" in s:
            samples += [
                ("burst", x, cfg.prompt_tokens, cfg.max_tokens_burst[s["model"]]) for x in s["burst"].samples
            ]
        for part, x, prompt_n, gen_n in samples:
            if x.prompt_tokens != prompt_n or x.completion_tokens != gen_n:
                problems.append(
                    f"{s['system']} {s['model']} {part}: reported {x.prompt_tokens} prompt / "
                    f"{x.completion_tokens} completion tokens, expected {prompt_n} / {gen_n}"
                )
    return problems


def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    llama_bin = find_llama_bin(args.llama_bin)
    models_dir = find_models_dir(args.models_dir)
    ggufs = {"110M": models_dir / "rand-110M-q8_0.gguf", "1.1B": models_dir / "rand-1.1B-q8_0.gguf"}
    cfg = Config(
        threads=args.threads, repeats=args.repeats, rows=tuple(sorted(set(args.rows))),
        prompt_tokens=args.prompt_tokens, long_prompt_tokens=args.long_prompt_tokens,
        single_requests={"110M": args.single_requests_110m, "1.1B": args.single_requests_1b},
        max_tokens_single={"110M": args.max_tokens_110m, "1.1B": args.max_tokens_1b},
        max_tokens_burst={"110M": args.burst_tokens_110m, "1.1B": args.burst_tokens_1b},
        long_prompt_requests=args.long_prompt_requests, max_tokens_long=2, streams=args.streams,
        start_timeout_s=args.start_timeout, row7_model=args.row7_model,
    )  # fmt: skip
    setups = {
        "110M": ModelSetup("110M", ggufs["110M"], args.chips_110m, args.ctx_110m, args.streams),
        "1.1B": ModelSetup("1.1B", ggufs["1.1B"], args.chips_1b, args.ctx_1b, args.streams),
    }
    plan = plan_sessions(cfg)
    missing = [str(ggufs[m]) for m in plan if not ggufs[m].is_file()]
    if llama_bin is None or missing:
        what = "llama-server is not built" if llama_bin is None else f"missing models: {', '.join(missing)}"
        raise SystemExit(f"{what}. Build llama.cpp and write the models with:\n  {BUILD_HINT}")
    for key, setup in setups.items():
        if (
            key in plan
            and setup.ctx_per_slot < cfg.long_prompt_tokens + cfg.max_tokens_long
            and "long" in plan[key]
        ):
            raise SystemExit(f"--ctx for {key} must hold the {cfg.long_prompt_tokens}-token prompt")

    print(f"logs: {log_dir}", file=sys.stderr)
    load_before = load_average()
    if load_before > 1.0:
        print(f"warning: load average {load_before:.2f} > 1: the figures will be noisy", file=sys.stderr)
    sessions: list[dict[str, Any]] = []
    engine_runs: list[dict[str, Any]] = []
    started = time.monotonic()
    for key, parts in plan.items():
        setup = setups[key]
        for repeat in range(cfg.repeats):
            # A and B alternate which goes first; the engine-alone run sits next to lpu-serve's, so the two
            # figures row 7 compares are taken as close in time as possible.
            order: list[str] = [OURS, LLAMA] if repeat % 2 == 0 else [LLAMA, OURS]
            if 7 in cfg.rows and key == cfg.row7_model:
                order = [ENGINE, *order] if repeat % 2 == 0 else [*order, ENGINE]
            for system in order:
                progress = f"[{time.monotonic() - started:6.0f} s] {key} repeat {repeat + 1}/{cfg.repeats}"
                print(f"{progress}: {system} (load {load_average():.2f})", file=sys.stderr)
                if system == ENGINE:
                    engine_runs.append(
                        run_engine_alone(setup, cfg, repeat, log_dir, f"{key}-r{repeat}-engine")
                    )
                    continue
                port = free_port()
                tag = f"{key}-r{repeat}-{'lpu' if system == OURS else 'llama'}"
                command = (
                    ours_command(setup, port) if system == OURS
                    else llama_command(llama_bin, setup, cfg.threads, port)
                )  # fmt: skip
                server = Server(system, command, thread_env(cfg.threads), log_dir / f"{tag}.log", port)
                t0 = time.monotonic()
                with running(server, cfg.start_timeout_s):
                    session = asyncio.run(measure_session(server, system, setup, cfg, parts, repeat))
                session.update(
                    system=system, model=key, repeat=repeat, command=command, seconds=time.monotonic() - t0
                )
                sessions.append(session)
    emulated = None
    if 8 in cfg.rows:
        print(f"[{time.monotonic() - started:6.0f} s] 110M: emulated vs planner", file=sys.stderr)
        emulated = run_emulated(setups["110M"], cfg, log_dir)
    rows = build_rows(sessions, engine_runs, emulated, cfg)
    problems = check_counts(sessions, cfg)
    return {
        "config": asdict(cfg),
        "setups": {k: asdict(v) for k, v in setups.items() if k in plan},
        "llama_bin": llama_bin,
        "commands": {s["system"] + " " + s["model"]: s["command"] for s in sessions},
        "load_average": {"before": load_before, "after": load_average()},
        "cpu_count": os.cpu_count(),
        "wall_s": time.monotonic() - started,
        "rows": [asdict(r) for r in rows],
        "table": render_table(rows),
        "memory_notes": memory_notes(sessions),
        "count_problems": problems,
        "sessions": sessions,
        "engine_alone": engine_runs,
        "emulated_vs_planner": emulated,
    }


def describe(report: dict[str, Any], out: TextIO) -> None:
    cfg = report["config"]
    print(report["table"], file=out)
    print(file=out)
    print(f"threads: {cfg['threads']} for both (llama-server -t/-tb; lpu-serve LPU_NUM_THREADS, "
          "OPENBLAS/OMP/MKL_NUM_THREADS)", file=out)  # fmt: skip
    print(f"repeats: {cfg['repeats']} per system, alternating which starts first; medians; prompts "
          f"{cfg['prompt_tokens']} tokens (BOS included), temperature 0, ignore_eos", file=out)  # fmt: skip
    for key, setup in report["setups"].items():
        slots, ctx = setup["streams"], setup["ctx_per_slot"]
        print(
            f"{key}: {setup['gguf']}\n"
            f"  lpu-serve: --chips {setup['chips']} --max-model-len {ctx} --max-num-seqs {slots} "
            f"(KV reserved for {slots} x {ctx} = {slots * ctx:,} tokens, fp16, in emulated SRAM)\n"
            f"  llama-server: {' '.join(llama_flags(ModelSetup(key, Path(), setup['chips'], ctx, slots), cfg['threads']))}"
            f" (KV for {slots} slots x {ctx} = {slots * ctx:,} tokens, f16)",
            file=out,
        )
    for note in report["memory_notes"]:
        print(note, file=out)
    load = report["load_average"]
    print(f"load average (1 min): {load['before']:.2f} before, {load['after']:.2f} after; "
          f"{report['cpu_count']} cores; {report['wall_s'] / 60:.1f} min", file=out)  # fmt: skip
    for problem in report["count_problems"]:
        print(f"WARNING: {problem}", file=out)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(*args.child)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops the servers as Ctrl-C does
    log_dir = Path(tempfile.mkdtemp(prefix="bench-llamacpp-"))
    keep = args.keep_logs
    try:
        report = run(args, log_dir)
    except KeyboardInterrupt:
        print(f"\ninterrupted; servers stopped; logs kept in {log_dir}", file=sys.stderr)
        return 130
    except SystemExit as exc:
        shutil.rmtree(log_dir, ignore_errors=True)
        print(exc.code, file=sys.stderr)
        return 2
    except BaseException as exc:
        print(f"\nfailed: {type(exc).__name__}: {exc}\nlogs kept in {log_dir}", file=sys.stderr)
        raise
    describe(report, sys.stdout)
    if args.json:
        args.json.write_text(json.dumps(serialise(report), indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if report["count_problems"]:
        keep = True
    if keep:
        print(f"logs kept in {log_dir}", file=sys.stderr)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if report["count_problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
