"""The images the demo stack test runs: each default (the pinned python base, prom/prometheus, grafana/grafana)
when it is present or can be pulled, else a local stand-in built from the Debian mirror apt uses. Grafana has no
Debian package: without its image the stack runs without Grafana, and the test says so."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from tests.demo.docker_engine import docker
from tests.demo.files import DEBOOTSTRAP_BASE, PROMETHEUS_DEBIAN, dockerfile_base_image_default
from tests.deploy_files import COMPOSE_FILE, DEPLOY

PULL_TIMEOUT_S = 300
DEBOOTSTRAP_TIMEOUT_S = 1200
BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class Image:
    ref: str
    how: str  # where it came from, for the test's report


def compose_default(variable: str) -> str:
    found = re.search(rf"\$\{{{variable}:-([^}}]+)\}}", COMPOSE_FILE.read_text())
    assert found is not None, variable
    return found.group(1)


def present(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False).returncode == 0


def pull(ref: str) -> str | None:
    """None once the image is here, else why it could not be pulled."""
    if present(ref):
        return None
    try:
        done = docker("pull", ref, timeout=PULL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"docker pull {ref} took more than {PULL_TIMEOUT_S} s"
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]


def base_image() -> Image:
    default = dockerfile_base_image_default()
    why = pull(default)
    if why is None:
        return Image(default, "the pinned default")
    # Named after the script's content, so a changed script builds a new base and an unchanged one is reused.
    digest = hashlib.sha256(DEBOOTSTRAP_BASE.read_bytes()).hexdigest()[:12]
    local = f"lpu-serve-base:bookworm-{digest}"
    if not present(local):
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            pytest.skip(f"{default} cannot be pulled ({why}), and building a base needs debootstrap and root")
        done = subprocess.run(
            ["bash", str(DEBOOTSTRAP_BASE), local],
            capture_output=True,
            text=True,
            timeout=DEBOOTSTRAP_TIMEOUT_S,
        )
        assert done.returncode == 0, f"{DEBOOTSTRAP_BASE.name} failed:\n{done.stdout}{done.stderr}"
    return Image(local, f"built by {DEBOOTSTRAP_BASE.name} ({default} cannot be pulled: {why})")


def prometheus_image(base: Image) -> Image:
    default = compose_default("PROMETHEUS_IMAGE")
    why = pull(default)
    if why is None:
        return Image(default, "the compose file's default")
    local = "lpu-serve-prometheus:debian"
    docker(
        "build", "--quiet", "--network", "host", "--build-arg", f"BASE_IMAGE={base.ref}", "--tag", local,
        "--file", str(PROMETHEUS_DEBIAN), str(DEPLOY / "docker"), timeout=BUILD_TIMEOUT_S,
    )  # fmt: skip
    return Image(local, f"Debian's prometheus package on {base.ref} ({default} cannot be pulled: {why})")


def grafana_image() -> tuple[Image | None, str]:
    """The Grafana image, or None and why the stack runs without it."""
    default = compose_default("GRAFANA_IMAGE")
    why = pull(default)
    if why is None:
        return Image(default, "the compose file's default"), ""
    return None, f"{default} cannot be pulled ({why}) and Grafana has no Debian package to build one from"
