"""The demo stack's build files as tests read them (the compose file and the dashboard are in
tests/deploy_files.py), and the two forms compose CLIs print a resolved service in: docker-compose 1.29 writes
ports and volumes as short strings, compose v2 as mappings."""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType
from typing import Any

from tests.deploy_files import COMPOSE_FILE, DEPLOY, REPO_ROOT, TRAFFIC_SCRIPT

DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCK_FILE = DEPLOY / "docker" / "requirements.lock"
NO_NAT_OVERRIDE = DEPLOY / "docker" / "compose.no-nat.yml"
DEBOOTSTRAP_BASE = DEPLOY / "docker" / "debootstrap-base.sh"
PROMETHEUS_DEBIAN = DEPLOY / "docker" / "prometheus-debian.Dockerfile"
# A python image pinned by version and by digest.
BASE_IMAGE_PATTERN = r"python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}"


def dockerfile_steps() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined, comments and blank lines left out."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile_base_image_default() -> str:
    (default,) = [
        args.split("=", 1)[1] for kind, args in dockerfile_steps() if kind == "ARG" and "BASE_IMAGE=" in args
    ]
    return default


def compose_base_image_default() -> str:
    defaults: list[str] = re.findall(r"\$\{LPU_BASE_IMAGE:-([^}]+)\}", COMPOSE_FILE.read_text())
    (default,) = set(defaults)
    return default


def locked_versions() -> dict[str, str]:
    """Normalised project name -> the version the lock pins."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", LOCK_FILE.read_text(), re.MULTILINE)
    return {name.lower().replace("_", "-").replace(".", "-"): version for name, version in pins}


def published(service: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(host address, host port, container port) of every published port."""
    found = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.add((port.get("host_ip", ""), str(port["published"]), str(port["target"])))
        else:  # "127.0.0.1:8000:8000/tcp"
            *host, published_port, target = str(port).split("/")[0].rsplit(":", 2)
            found.add((host[0] if host else "", published_port, target))
    return found


def volume_mounts(service: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(kind, source, target) of every mount: kind "bind" or "volume"; an anonymous volume has no source."""
    found = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.add((volume["type"], volume.get("source", ""), volume["target"]))
        else:  # "model-cache:/var/cache/lpu-serve:rw", "/repo/deploy/x:/etc/x:ro" or "/anonymous"
            parts = str(volume).split(":")
            if len(parts) == 1:
                found.add(("volume", "", parts[0]))
            else:
                kind = "bind" if parts[0].startswith(("/", ".")) else "volume"
                found.add((kind, parts[0], parts[1]))
    return found


def traffic_module() -> ModuleType:
    """deploy/traffic/traffic.py, which is a script, not a package module."""
    name = "lpu_demo_traffic"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TRAFFIC_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module
