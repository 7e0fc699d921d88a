"""A Docker engine for the demo stack test: the one already answering, else one the test starts itself.

The engine it starts is Debian's `dockerd` with the flags that work in a sandbox without its own network setup
(no iptables rules, no default bridge); the compose stack's own bridge network still works there, but nothing on it
reaches the internet, which deploy/docker/compose.no-nat.yml accounts for. Where no engine can be had (no dockerd,
not root, or it does not come up), the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.support import stop_process

DOCKERD_ARGS = ("--iptables=false", "--bridge=none", "--storage-driver=overlay2")
START_TIMEOUT_S = 60.0


@dataclass
class Engine:
    process: subprocess.Popen[bytes] | None  # the dockerd this test started; None: it was already running
    log: Path | None

    @property
    def description(self) -> str:
        if self.process is None:
            return "the running Docker engine"
        return f"dockerd {' '.join(DOCKERD_ARGS)} started by the test (log {self.log})"

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=60)


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`docker ARGS`; with check, a failure is an assertion naming the command and its output."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done


def _answers() -> bool:
    try:
        return docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def has_default_bridge() -> bool:
    """False for an engine started with --bridge=none, whose containers have no route out."""
    return docker("network", "inspect", "bridge", check=False).returncode == 0


def ensure_engine(workdir: Path) -> Engine:
    if shutil.which("docker") is None:
        pytest.skip("no docker client on PATH: apt-get install docker.io (.ci/run does)")
    if _answers():
        return Engine(None, None)
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.skip("no Docker engine answers and dockerd is not installed: apt-get install docker.io")
    if os.geteuid() != 0:
        pytest.skip("no Docker engine answers, and starting dockerd needs root")
    log = workdir / "dockerd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [dockerd, *DOCKERD_ARGS], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    engine = Engine(process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers():
        if process.poll() is not None or time.monotonic() > deadline:
            engine.stop()
            pytest.skip(f"dockerd {' '.join(DOCKERD_ARGS)} did not start here:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return engine
