"""Programs from outside the Python environment that some tests drive (Prometheus, promtool, a compose
validator, Node for the Grafana schema check). Like test data, a missing one skips the test with how to get it,
except under CI (`CI=true`), where .ci/run installs them and absence is a failure."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.shared_models import in_ci

HOW_TO_GET = {
    "prometheus": "install Debian's 'prometheus' package (apt-get install prometheus; .ci/run does this)",
    "promtool": "install Debian's 'prometheus' package, which ships promtool (apt-get install prometheus)",
    "docker-compose": (
        "install a compose CLI: Debian's 'docker-compose' package (apt-get install docker-compose; .ci/run "
        "does this) or Docker's compose plugin"
    ),
    "node": "install Node.js (apt-get install nodejs npm; .ci/run does this), then make dashboard-check",
}


def require_tool(name: str) -> str:
    """The path of an executable on PATH, or a skip (a failure under CI) saying how to get it."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not on PATH: {HOW_TO_GET.get(name, 'install it')}"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def compose_command() -> list[str]:
    """`docker compose` when Docker's plugin is there, else the standalone `docker-compose`."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    return [require_tool("docker-compose")]
