"""The demo stack as the test drives it: the repo's compose file (plus the no-NAT override on an engine without a
default bridge) under a project name of its own, on free host ports, in an environment that neither a developer's
variables nor their .env can change. Containers, networks and volumes are found by compose's labels, which
docker-compose 1.29 and compose v2 both set."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.demo.docker_engine import docker
from tests.demo.files import NO_NAT_OVERRIDE
from tests.deploy_files import COMPOSE_FILE, REPO_ROOT
from tests.e2e.support import free_port
from tests.external_tools import compose_command

PROJECT = "lpu-demo-test"
# Variables a developer may have set that would change what the stack runs.
COMPOSE_ENV = ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "DOCKER_DEFAULT_PLATFORM")


def compose_cli() -> list[str]:
    """LPU_DEMO_COMPOSE (what `make demo-test` found, e.g. "docker compose"), else the plugin or docker-compose."""
    configured = os.environ.get("LPU_DEMO_COMPOSE", "").strip()
    return shlex.split(configured) if configured else compose_command()


def docker_time(stamp: str) -> float:
    """Docker's RFC 3339 timestamps (nanoseconds, Z) as seconds since the epoch."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{fraction or 0}")


@dataclass
class Stack:
    workdir: Path
    no_nat: bool
    images: dict[str, str]  # LPU_BASE_IMAGE, PROMETHEUS_IMAGE, GRAFANA_IMAGE
    ports: dict[str, int] = field(
        default_factory=lambda: {"server": free_port(), "prometheus": free_port(), "grafana": free_port()}
    )

    @property
    def command(self) -> list[str]:
        files = [COMPOSE_FILE, NO_NAT_OVERRIDE] if self.no_nat else [COMPOSE_FILE]
        env_file = self.workdir / "empty.env"
        env_file.write_text("")
        return [
            *compose_cli(), "--project-name", PROJECT, "--project-directory", str(REPO_ROOT),
            *(arg for path in files for arg in ("--file", str(path))), "--env-file", str(env_file),
        ]  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV and not k.startswith("LPU_")}
        return clean | self.images | {
            "LPU_SERVER_PORT": str(self.ports["server"]),
            "PROMETHEUS_PORT": str(self.ports["prometheus"]),
            "GRAFANA_PORT": str(self.ports["grafana"]),
        }  # fmt: skip

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        done = subprocess.run(
            [*self.command, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO_ROOT,
            timeout=timeout,
        )
        output = done.stdout + done.stderr
        assert not check or done.returncode == 0, f"compose {' '.join(args)} failed:\n{output[-6000:]}"
        return output

    def _labelled(self, kind: str, *labels: str) -> list[str]:
        filters = [
            arg
            for label in (f"com.docker.compose.project={PROJECT}", *labels)
            for arg in ("--filter", f"label={label}")
        ]
        command = ["ps", "--all", "--quiet", "--no-trunc"] if kind == "container" else [kind, "ls", "--quiet"]
        return docker(*command, *filters).stdout.split()

    def containers(self) -> list[str]:
        return self._labelled("container")

    def networks(self) -> list[str]:
        return self._labelled("network")

    def volumes(self) -> list[str]:
        return self._labelled("volume")

    def container(self, service: str) -> str:
        (found,) = self._labelled("container", f"com.docker.compose.service={service}")
        return found

    def inspect(self, service: str) -> dict[str, Any]:
        (found,) = json.loads(docker("inspect", self.container(service)).stdout)
        result: dict[str, Any] = found
        return result

    def logs(self, service: str) -> str:
        done = docker("logs", self.container(service), check=False)
        return done.stdout + done.stderr

    def healthy_at(self, service: str, timeout_s: float) -> float:
        """When the service's first health check passed (seconds since the epoch), waiting for it."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.inspect(service)["State"]
            passed = [
                check for check in (state.get("Health") or {}).get("Log") or [] if check["ExitCode"] == 0
            ]
            if passed:
                return docker_time(passed[0]["End"])
            status = (state.get("Health") or {}).get("Status")
            assert state["Running"] and status != "unhealthy", (
                f"{service} is {state['Status']} ({status}):\n{self.logs(service)[-4000:]}"
            )
            assert time.monotonic() < deadline, (
                f"{service} not healthy in {timeout_s} s:\n{self.logs(service)[-4000:]}"
            )
            time.sleep(1)
