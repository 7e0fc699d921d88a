"""Demo traffic: several named users streaming chat completions at their own rates, so every dashboard panel
has data. It runs for --duration seconds and at most --max-requests requests (0: until stopped, as in the compose
stack, where SIGTERM from `docker compose stop` ends it cleanly); it only targets this machine or a compose
service.

Each user is one conversation at a time: send a streamed request, read it to the end (or, for a fraction of
requests, hang up after a few chunks: an abort), then wait an exponential pause of mean 1/RATE seconds. A
fraction of requests carries stop strings, so finish reasons mix `stop`, `length` and `abort`.

    python deploy/traffic/traffic.py --url http://127.0.0.1:8000 --users alice=2,bob=1,carol=0.5 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

DEFAULT_USERS = "alice=2,bob=1,carol=0.5,dave=0.25"
PROMPTS = (
    "Tell me about the LPU.",
    "Write a haiku about SRAM.",
    "Explain pipeline parallelism in one paragraph.",
    "What is a compiler-scheduled chip?",
    "Summarise the history of inference hardware.",
)
STOP_STRINGS = ["l", "b", "z", "#"]  # frequent in the demo model's noise, so these requests end with `stop`
ABORT_AFTER_CHUNKS = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class UserSpec:
    name: str
    rate: float  # requests per second, at most one in flight


@dataclass
class Tally:
    by_user: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)


def parse_users(text: str) -> list[UserSpec]:
    users = []
    for item in text.split(","):
        name, sep, rate = item.strip().partition("=")
        try:
            value = float(rate) if sep else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--users: rate of {name!r} must be a number, got {rate!r}"
            ) from None
        if not name or not value > 0:
            raise argparse.ArgumentTypeError(f"--users: each entry is NAME=RATE with RATE > 0, got {item!r}")
        users.append(UserSpec(name, value))
    return users


def check_target(url: str) -> str:
    """Only loopback addresses, `localhost`, or a bare compose service name (no dots) are allowed."""
    host = urlsplit(url).hostname or ""
    try:
        allowed = ipaddress.ip_address(host).is_loopback
    except ValueError:
        allowed = host == "localhost" or (
            host.replace("-", "").replace("_", "").isalnum() and "." not in host
        )
    if urlsplit(url).scheme not in ("http", "https") or not allowed:
        raise argparse.ArgumentTypeError(
            f"--url {url!r}: the traffic generator only targets loopback or a compose service name"
        )
    return url.rstrip("/")


async def one_request(
    client: httpx.AsyncClient,
    model: str,
    user: str,
    rng: random.Random,
    args: argparse.Namespace,
    tally: Tally,
) -> None:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": rng.randint(args.min_tokens, args.max_tokens),
        "temperature": rng.choice((0.0, 0.7, 1.0)),
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": user,
    }
    if rng.random() < args.stop_fraction:
        body["stop"] = STOP_STRINGS
    hang_up = rng.random() < args.abort_fraction
    chunks = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            tally.by_outcome[f"http_{response.status_code}"] += 1
            await response.aread()
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            chunks += 1
            if hang_up and chunks >= ABORT_AFTER_CHUNKS:
                tally.by_outcome["client_abort"] += 1
                return  # leaving the block closes the connection: the server aborts the request
            if chunk.get("usage"):
                tally.tokens[user] += int(chunk["usage"]["completion_tokens"])
            for choice in chunk.get("choices", ()):
                if choice.get("finish_reason"):
                    tally.by_outcome[choice["finish_reason"]] += 1
            if "error" in chunk:
                tally.by_outcome["stream_error"] += 1


@dataclass
class Budget:
    """What is left of the run: requests (None: no cap) and time (inf: until stopped)."""

    requests: int | None
    deadline: float

    def take(self) -> bool:
        if time.monotonic() >= self.deadline or self.requests == 0:
            return False
        if self.requests is not None:
            self.requests -= 1
        return True


async def user_loop(
    client: httpx.AsyncClient,
    model: str,
    spec: UserSpec,
    args: argparse.Namespace,
    budget: Budget,
    tally: Tally,
) -> None:
    rng = random.Random(f"{args.seed}:{spec.name}")
    while budget.take():
        tally.by_user[spec.name] += 1
        try:
            await one_request(client, model, spec.name, rng, args, tally)
        except httpx.HTTPError as exc:
            tally.by_outcome[type(exc).__name__] += 1
            await asyncio.sleep(1.0)  # the server is restarting or gone: do not spin
        pause = rng.expovariate(spec.rate)
        await asyncio.sleep(max(0.0, min(pause, budget.deadline - time.monotonic())))


async def resolve_model(client: httpx.AsyncClient, wait_s: float) -> str:
    """The first model /v1/models lists, waiting up to `wait_s` for the server to come up."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            response = await client.get("/v1/models")
            response.raise_for_status()
            model: str = response.json()["data"][0]["id"]
            return model
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


async def run(args: argparse.Namespace) -> Tally:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    tally = Tally()
    limits = httpx.Limits(max_connections=len(args.users) + 2)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=httpx.Timeout(120.0), limits=limits
    ) as client:
        model = args.model or await resolve_model(client, args.wait)
        budget = Budget(
            requests=args.max_requests or None,
            deadline=time.monotonic() + args.duration if args.duration else math.inf,
        )
        users = asyncio.gather(*(user_loop(client, model, u, args, budget, tally) for u in args.users))
        await until_signalled(users)
    return tally


async def until_signalled(work: asyncio.Future[list[None]]) -> None:
    """Awaits `work`; SIGTERM (`docker stop`) or SIGINT cancels it instead, which closes the open streams (the
    server aborts those requests), so the tally is still printed and the exit is clean, not a kill."""
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        received.append(sig)
        work.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        await work
    except asyncio.CancelledError:
        if not received:
            raise  # cancelled from outside, not by a signal
        print(f"traffic: {received[0].name}, stopping", flush=True)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--url",
        type=check_target,
        default="http://127.0.0.1:8000",
        help="the server (loopback or compose service)",
    )
    p.add_argument("--model", default=None, help="model id (default: the first /v1/models lists)")
    p.add_argument(
        "--users",
        type=parse_users,
        default=parse_users(DEFAULT_USERS),
        help=f"NAME=REQUESTS_PER_SECOND,... (default {DEFAULT_USERS})",
    )
    p.add_argument(
        "--duration", type=float, default=60.0, help="seconds to run, 0: until stopped (default 60)"
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=10_000,
        help="requests in total, all users, 0: no cap (default 10000)",
    )
    p.add_argument("--min-tokens", type=int, default=8, help="smallest max_tokens drawn (default 8)")
    p.add_argument("--max-tokens", type=int, default=64, help="largest max_tokens drawn (default 64)")
    p.add_argument(
        "--stop-fraction", type=float, default=0.3, help="requests carrying stop strings (default 0.3)"
    )
    p.add_argument("--abort-fraction", type=float, default=0.05, help="requests hung up early (default 0.05)")
    p.add_argument("--api-key", default=None, help="bearer key, if the server requires one")
    p.add_argument(
        "--wait", type=float, default=120.0, help="seconds to wait for the server to come up (default 120)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the users' random choices (default 0)")
    args = p.parse_args(argv)
    if not 1 <= args.min_tokens <= args.max_tokens:
        p.error("need 1 <= --min-tokens <= --max-tokens")
    if not 0 <= args.duration < math.inf or args.max_requests < 0:
        p.error("--duration and --max-requests must be 0 (no limit) or positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"traffic -> {args.url}: {', '.join(f'{u.name} {u.rate:g}/s' for u in args.users)}", flush=True)
    tally = asyncio.run(run(args))
    for user in args.users:
        print(f"{user.name:>12}: {tally.by_user[user.name]:5d} requests, {tally.tokens[user.name]:7d} tokens")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.by_outcome.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
