"""The running server the e2e tests share, and helpers that read it over HTTP only."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
CHIPS = 4
METRICS_MAX_USERS = 6  # small, so the bounding test can overflow it with a few requests


class Color(StrEnum):
    red = "red"
    green = "green"


class Pick(BaseModel):
    """The structured output the e2e tests ask for (chat.completions.parse, instructor, LangChain)."""

    # additionalProperties false: a non-strict schema lets the noise model invent properties until max_tokens
    model_config = ConfigDict(extra="forbid")
    color: Color
    count: int = Field(ge=0, le=99)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True)
class Server:
    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    log_path: Path
    chips: int = CHIPS
    metrics_max_users: int = METRICS_MAX_USERS

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def scrape(self) -> Samples:
        """Every sample of /metrics, keyed by (sample name, labels)."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=10).text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def wait_until_idle(self, timeout_s: float = 10.0) -> float:
        """Seconds until /health reports nothing running or waiting; fails the test at the timeout."""
        start = time.monotonic()
        health: dict[str, object] = {}
        while time.monotonic() - start < timeout_s:
            health = httpx.get(f"{self.base_url}/health", timeout=5).json()
            if health["running"] == 0 and health["waiting"] == 0:
                return time.monotonic() - start
            time.sleep(0.05)
        pytest.fail(f"engine still busy {timeout_s} s later: {health}")


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


KERNEL_ENV = ("LPU_KERNELS", "LPU_NUM_THREADS")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"server exited with status {server.process.returncode}; its log:\n{server.log_tail()}"
            )
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not healthy after {START_TIMEOUT_S:.0f} s; its log:\n{server.log_tail()}")


@contextmanager
def running_server(
    log_dir: Path, model: str, extra_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """`python -m server serve` on a free port until the block ends; fails the test if it will not start
    or will not stop on SIGTERM, with the server's log in the message."""
    port = free_port()
    log_path = log_dir / "server.log"
    # The flags below are the server's config; only the kernel choice passes through (LPU_KERNELS=numpy runs
    # the whole suite on the reference kernels), and what the test itself sets.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LPU_") or k in KERNEL_ENV}
    env.update(extra_env or {})
    command = [
        sys.executable, "-m", "server", "serve", "--port", str(port), "--chips", str(CHIPS),
        "--log-level", "info", *extra_args,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", model, process, log_path)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        if not stop_process(process):
            pytest.fail(f"server ignored SIGTERM for 20 s; its log:\n{server.log_tail()}")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 20) -> bool:
    """SIGTERM, then SIGKILL after `timeout_s`; True when the process stopped on SIGTERM."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


def engine_pid(server: Server) -> int:
    """The server's engine process: its child that multiprocessing spawned."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == server.process.pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    pytest.fail(f"server {server.process.pid} has no engine process")


@dataclass
class Streamed:
    """What one streamed request got: its status and headers, its events (parsed JSON), and whether the
    stream ended with `data: [DONE]`."""

    status: int
    headers: httpx.Headers
    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    body: dict[str, Any] | None = None  # the JSON body of a non-200 answer

    @property
    def finish_reason(self) -> str | None:
        reasons = [c.get("finish_reason") for e in self.events for c in e.get("choices", ())]
        return next((r for r in reasons if r), None)

    @property
    def error(self) -> dict[str, Any] | None:
        return next((e["error"] for e in self.events if "error" in e), None)


async def stream_chat(
    client: httpx.AsyncClient, body: dict[str, Any], on_first: asyncio.Event | None = None
) -> Streamed:
    """POSTs a streamed chat completion and reads it to its end; `on_first` is set at the first event."""
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        result = Streamed(response.status_code, response.headers)
        if response.status_code != 200:
            result.body = json.loads(await response.aread())
            return result
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                result.done = True
                break
            result.events.append(json.loads(line.removeprefix("data: ")))
            if on_first is not None:
                on_first.set()
    return result
