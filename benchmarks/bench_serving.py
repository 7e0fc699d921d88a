"""Serving benchmark: streamed chat completions through the HTTP API at several concurrency levels.

Starts `lpu serve` on a free port (unless --url points at a running server), warms up, then has N users each
send --requests-per-user streamed requests back to back. Per request it measures the time to the first content
token, the decode speed the user sees, (tokens - 1) / (last token - first token), and reads the emulated LPU's
speed from the usage chunk's `x_lpu`. Requests use temperature 0 and `ignore_eos` so every one generates
exactly --max-tokens tokens.

    python benchmarks/bench_serving.py --concurrency 1 8 --max-tokens 64 --json bench-demo.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "lpu-demo-untrained-13m"  # the embedded demo model: no download
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


@dataclass(frozen=True)
class RequestResult:
    ttft_s: float  # request sent -> first content chunk
    decode_tps: float  # (tokens - 1) / (last content chunk - first content chunk)
    completion_tokens: int
    emulated_tps: float  # from x_lpu
    total_s: float


@dataclass(frozen=True)
class Summary:
    median: float
    p90: float


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    wall_s: float
    ttft_ms: Summary
    decode_tps_per_user: Summary
    aggregate_tps: float  # completion tokens of all users / wall time of the level
    emulated_tps_per_user: Summary


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), without numpy."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> Summary:
    return Summary(median=percentile(values, 0.5), p90=percentile(values, 0.9))


def stream_body(model: str, max_tokens: int) -> dict[str, Any]:
    """A streamed greedy chat completion of exactly `max_tokens` tokens."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }


async def stream_one(client: httpx.AsyncClient, model: str, max_tokens: int, user: str) -> RequestResult:
    body = {**stream_body(model, max_tokens), "stream_options": {"include_usage": True}, "user": user}
    sent = time.perf_counter()
    first: float | None = None
    last = sent
    usage: dict[str, Any] = {}
    x_lpu: dict[str, Any] = {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread()).decode()[:500]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if chunk.get("usage"):
                usage, x_lpu = chunk["usage"], chunk.get("x_lpu") or {}
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    now = time.perf_counter()
                    first = now if first is None else first
                    last = now
    finished = time.perf_counter()
    tokens = int(usage.get("completion_tokens", 0))
    if first is None or tokens == 0:
        raise RuntimeError("the stream carried no content or no usage")
    decode_s = last - first
    return RequestResult(
        ttft_s=first - sent,
        decode_tps=(tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else math.nan,
        completion_tokens=tokens,
        emulated_tps=float(x_lpu.get("emulated_tokens_per_second", math.nan)),
        total_s=finished - sent,
    )


async def user_session(
    client: httpx.AsyncClient, model: str, max_tokens: int, n_requests: int, user: str
) -> list[RequestResult]:
    return [await stream_one(client, model, max_tokens, user) for _ in range(n_requests)]


async def run_level(url: str, model: str, concurrency: int, max_tokens: int, per_user: int) -> LevelResult:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        sessions = await asyncio.gather(
            *(user_session(client, model, max_tokens, per_user, f"bench-{i}") for i in range(concurrency))
        )
        wall = time.perf_counter() - start
    results = [r for session in sessions for r in session]
    return LevelResult(
        concurrency=concurrency,
        requests=len(results),
        wall_s=wall,
        ttft_ms=summarize([r.ttft_s * 1000 for r in results]),
        decode_tps_per_user=summarize([r.decode_tps for r in results if not math.isnan(r.decode_tps)]),
        aggregate_tps=sum(r.completion_tokens for r in results) / wall,
        emulated_tps_per_user=summarize([r.emulated_tps for r in results if not math.isnan(r.emulated_tps)]),
    )


async def warm_up(url: str, model: str, n_requests: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0)) as client:
        for _ in range(n_requests):
            await stream_one(client, model, 8, "bench-warmup")


def render_table(levels: Sequence[LevelResult]) -> str:
    header = (
        f"{'users':>5} {'reqs':>5} | {'TTFT ms':>17} | {'decode tok/s/user':>19} | {'aggregate':>9} | "
        f"{'emulated tok/s/user':>23}"
    )
    sub = (
        f"{'':>5} {'':>5} | {'median':>8} {'p90':>8} | {'median':>9} {'p90':>9} | {'tok/s':>9} | "
        f"{'median':>11} {'p90':>11}"
    )
    rows = [header, sub, "-" * len(sub)]
    for lv in levels:
        rows.append(
            f"{lv.concurrency:>5} {lv.requests:>5} | {lv.ttft_ms.median:>8.1f} {lv.ttft_ms.p90:>8.1f} | "
            f"{lv.decode_tps_per_user.median:>9.1f} {lv.decode_tps_per_user.p90:>9.1f} | "
            f"{lv.aggregate_tps:>9.1f} | "
            f"{lv.emulated_tps_per_user.median:>11.0f} {lv.emulated_tps_per_user.p90:>11.0f}"
        )
    return "\n".join(rows)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def local_server(model: str, chips: int, extra: Sequence[str], timeout_s: float) -> Iterator[tuple[str, int]]:
    """`lpu serve` in a subprocess on a free port; yields its URL and process id once /health says ok."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LPU_")}
    command = [
        sys.executable, "-m", "server", "serve", "--port", str(port), "--model", model, "--chips", str(chips),
        "--log-level", "warning", *extra,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-4000:]
                    raise SystemExit(f"server did not become healthy (exit status {process.poll()}):\n{tail}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
            yield url, process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def server_url(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url.rstrip("/")
    else:
        with local_server(args.model, args.chips, args.server_arg, args.start_timeout) as (url, _):
            yield url


def served_model(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/models", timeout=30)
    response.raise_for_status()
    card: dict[str, Any] = response.json()["data"][0]
    return card


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="benchmark a running server instead of starting one")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model to serve (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--chips", type=int, default=4, help="emulated chips of the started server (default 4)"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8], help="user counts (default 1 8)"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default 64)")
    parser.add_argument(
        "--requests-per-user", type=int, default=4, help="requests each user sends (default 4)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests first (default 2)")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for the server")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `lpu serve` argument (repeat)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    for name in ("chips", "max_tokens", "requests_per_user"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.concurrency) < 1:
        parser.error("--concurrency values must be at least 1")
    return args


async def benchmark(url: str, model: str, args: argparse.Namespace) -> list[LevelResult]:
    await warm_up(url, model, args.warmup)
    levels = []
    for concurrency in args.concurrency:
        level = await run_level(url, model, concurrency, args.max_tokens, args.requests_per_user)
        print(f"  {concurrency} user(s): {level.requests} requests in {level.wall_s:.1f} s", file=sys.stderr)
        levels.append(level)
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with server_url(args) as url:
        card = served_model(url)
        model = card["id"]
        print(f"benchmarking {model} at {url}", file=sys.stderr)
        levels = asyncio.run(benchmark(url, model, args))
    print(
        f"model {model} | chips {card.get('chips')} | pipeline stages {card.get('pipeline_stages')} | "
        f"max_tokens {args.max_tokens} | requests/user {args.requests_per_user}"
    )
    print(render_table(levels))
    if args.json:
        report = {
            "model": card,
            "config": {
                "url": args.url,
                "max_tokens": args.max_tokens,
                "requests_per_user": args.requests_per_user,
                "concurrency": args.concurrency,
                "warmup": args.warmup,
            },
            "levels": [asdict(level) for level in levels],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
