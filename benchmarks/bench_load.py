"""Load benchmark: a burst of concurrent streams, or a soak, and what became of every request.

Starts `lpu serve` on a free port (unless --url points at a running server). A burst level sends N streamed chat
completions at once and sorts each outcome:

- completed: a finish_reason chunk, then `data: [DONE]`
- errored: an error event, then `data: [DONE]` (the request failed, cleanly)
- rejected: HTTP 429; `no Retry-After` counts the rejections that lacked the header
- refused: another HTTP error status (a 503 while draining, say)
- lost: everything else: the connection dropped, the stream ended without [DONE], the client timed out

TTFT is request sent -> first content chunk, over the accepted requests. `--soak SECONDS` instead keeps N
clients sending back to back (a rejected one sleeps its Retry-After) and samples the server's resident memory
(its process and the engine process) every 10 s; growth is the last sample against the one at a tenth of the run.

    python benchmarks/bench_load.py --streams 256 1000 --model ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf --chips 8
    python benchmarks/bench_load.py --soak 600 --streams 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_serving import DEFAULT_MODEL, local_server, percentile, served_model, stream_body

RSS_SAMPLE_S = 10.0
OUTCOMES = ("completed", "errored", "rejected", "refused", "lost")


@dataclass(frozen=True)
class Outcome:
    kind: str  # one of OUTCOMES
    ttft_s: float | None = None  # accepted requests that streamed content
    retry_after: str | None = None  # a rejection's Retry-After header


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    def count(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)

    @property
    def accepted(self) -> int:
        return sum(1 for o in self.outcomes if o.kind in ("completed", "errored", "lost"))

    @property
    def rejected_without_retry_after(self) -> int:
        return sum(1 for o in self.outcomes if o.kind == "rejected" and not o.retry_after)

    def ttft_ms(self, q: float) -> float:
        return percentile([o.ttft_s * 1000 for o in self.outcomes if o.ttft_s is not None], q)


async def stream_one(client: httpx.AsyncClient, model: str, max_tokens: int) -> Outcome:
    body = stream_body(model, max_tokens)
    sent = time.perf_counter()
    first: float | None = None
    ended = errored = done = False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code == 429:
                return Outcome("rejected", retry_after=response.headers.get("retry-after"))
            if response.status_code != 200:
                return Outcome("refused")
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line.removeprefix("data: "))
                errored = errored or "error" in chunk
                for choice in chunk.get("choices", ()):
                    if choice["delta"].get("content") and first is None:
                        first = time.perf_counter()
                    ended = ended or choice.get("finish_reason") is not None
    except httpx.HTTPError:
        done = False
    ttft = None if first is None else first - sent
    if done and ended:
        return Outcome("completed", ttft)
    if done and errored:
        return Outcome("errored", ttft)
    return Outcome("lost", ttft)


def client_for(url: str, streams: int, timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=streams + 8)
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s), limits=limits)


async def burst(url: str, model: str, streams: int, max_tokens: int, timeout_s: float) -> Tally:
    async with client_for(url, streams, timeout_s) as client:
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(stream_one(client, model, max_tokens) for _ in range(streams)))
        return Tally(list(outcomes), time.perf_counter() - start)


def resident_bytes(pid: int) -> int:
    """VmRSS of the process and its children (the engine process, multiprocessing's tracker), from /proc."""
    total = 0
    # A child belongs to the thread that started it: the engine process to the one that built the engine.
    children = [
        int(c)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]
    for p in [pid, *children]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


async def soak(
    url: str, model: str, streams: int, max_tokens: int, timeout_s: float, seconds: float, pid: int | None
) -> tuple[Tally, list[int]]:
    tally = Tally()
    rss: list[int] = []
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            outcome = await stream_one(client, model, max_tokens)
            tally.outcomes.append(outcome)
            if outcome.kind == "rejected":
                await asyncio.sleep(float(outcome.retry_after or 1))

    async def sampler() -> None:
        while pid is not None and time.monotonic() < deadline:
            rss.append(resident_bytes(pid))
            await asyncio.sleep(RSS_SAMPLE_S)

    async with client_for(url, streams, timeout_s) as client:
        start = time.perf_counter()
        await asyncio.gather(sampler(), *(worker(client) for _ in range(streams)))
        tally.wall_s = time.perf_counter() - start
    return tally, rss


def render(rows: Sequence[tuple[str, Tally]]) -> str:
    header = (
        f"{'run':>10} | {'sent':>5} {'accepted':>8} {'completed':>9} {'errored':>7} {'rejected':>8} "
        f"{'no Retry-After':>14} {'refused':>7} {'lost':>5} | {'TTFT ms p50':>11} {'p90':>8} {'p99':>8} | {'wall s':>6}"
    )
    lines = [header, "-" * len(header)]
    for name, t in rows:
        c = t.count()
        lines.append(
            f"{name:>10} | {len(t.outcomes):>5} {t.accepted:>8} {c['completed']:>9} {c['errored']:>7} "
            f"{c['rejected']:>8} {t.rejected_without_retry_after:>14} {c['refused']:>7} {c['lost']:>5} | "
            f"{t.ttft_ms(0.5):>11.0f} {t.ttft_ms(0.9):>8.0f} {t.ttft_ms(0.99):>8.0f} | {t.wall_s:>6.1f}"
        )
    return "\n".join(lines)


@contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[str, int | None]]:
    if args.url:
        yield args.url.rstrip("/"), args.pid
    else:
        with local_server(args.model, args.chips, args.server_arg, args.start_timeout) as (url, pid):
            yield url, pid


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="load a running server instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for --soak's RSS")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model to serve (default {DEFAULT_MODEL})")
    parser.add_argument("--chips", type=int, default=8, help="emulated chips (default 8)")
    parser.add_argument(
        "--streams", type=int, nargs="+", default=[256], help="concurrent streams per run (default 256)"
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default 32)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="client timeout per request, s (default 600)"
    )
    parser.add_argument("--soak", type=float, help="run this many seconds back to back instead of bursts")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for the server")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `lpu serve` argument (repeat)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with target(args) as (url, pid):
        model = served_model(url)["id"]
        print(f"loading {model} at {url}", file=sys.stderr)
        if args.soak:
            tally, rss = asyncio.run(
                soak(url, model, args.streams[0], args.max_tokens, args.timeout, args.soak, pid)
            )
            print(render([(f"soak {args.streams[0]}", tally)]))
            if len(rss) >= 2:
                base = rss[len(rss) // 10]
                print(
                    f"RSS MB: first {rss[0] / 2**20:.0f}, at a tenth {base / 2**20:.0f}, last "
                    f"{rss[-1] / 2**20:.0f}, max {max(rss) / 2**20:.0f}; growth {100 * (rss[-1] / base - 1):+.1f}%"
                )
            return 0
        rows = []
        for streams in args.streams:
            rows.append(
                (str(streams), asyncio.run(burst(url, model, streams, args.max_tokens, args.timeout)))
            )
            print(f"  {streams} streams done", file=sys.stderr)
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
