"""The demo stack built and run for real (`make demo-test`; not part of `make test`: about 1 minute with the images
built, 4-5 minutes on a machine's first run, which debootstraps a base image and downloads the dependencies).

A Docker engine is found or started (tests/demo/docker_engine.py); the images come from their defaults or from
local stand-ins (tests/demo/images.py); the repo's compose file is built and brought up under its own project
name on free ports. Then: the server's healthcheck passes, the model was fetched into the named cache volume and
answers, only 127.0.0.1 is published, Prometheus scrapes the server and every PromQL query of the Grafana
dashboard returns data within two minutes of the server being healthy, the traffic runs until it is stopped and
stops cleanly, and `down` leaves no container, network or anonymous volume (the named volumes stay, by design,
until the test removes them).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.demo.docker_engine import Engine, docker, ensure_engine, has_default_bridge
from tests.demo.images import base_image, grafana_image, prometheus_image
from tests.demo.stack import PROJECT, Stack, docker_time
from tests.deploy_files import PROMETHEUS_CONFIG, dashboard, load_yaml, queries

if os.environ.get("LPU_DEMO_TEST") != "1":
    pytest.skip(
        "the demo stack test builds images and runs the compose stack for several minutes: `make demo-test` "
        "runs it (LPU_DEMO_TEST=1)",
        allow_module_level=True,
    )

LPU_SERVICES = ("fetch-model", "server", "traffic")
TRAFFIC_USERS = {"alice", "bob", "carol", "dave"}  # the compose file's default TRAFFIC_USERS
CHECK_USER = "demo-test"  # the user of this test's own request
MODEL = "SmolLM2-135M-Instruct"
DASHBOARD_DEADLINE_S = 120.0  # from the server's first passing healthcheck
BUILD_TIMEOUT_S = 1800
UP_TIMEOUT_S = 900
HEALTHY_TIMEOUT_S = 300


@dataclass
class Running:
    stack: Stack
    healthy_at: float  # seconds since the epoch
    grafana_missing: str  # why Grafana is not part of the run, or ""
    volumes_before: set[str]
    report: dict[str, str]


@pytest.fixture(scope="module")
def report() -> Iterator[dict[str, str]]:
    """What the run measured, printed at the end (make demo-test runs pytest with -s)."""
    lines: dict[str, str] = {}
    yield lines
    print("\n\ndemo stack test:" + "".join(f"\n  {key}: {value}" for key, value in lines.items()))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, report: dict[str, str]) -> Iterator[Engine]:
    started = time.monotonic()
    engine = ensure_engine(tmp_path_factory.mktemp("docker"))
    report["engine"] = f"{engine.description}, ready in {time.monotonic() - started:.1f} s"
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def running(
    engine: Engine, tmp_path_factory: pytest.TempPathFactory, report: dict[str, str]
) -> Iterator[Running]:
    started = time.monotonic()
    base = base_image()
    report["base image"] = f"{base.ref}: {base.how} ({time.monotonic() - started:.0f} s)"
    prometheus = prometheus_image(base)
    report["prometheus image"] = f"{prometheus.ref}: {prometheus.how}"
    grafana, grafana_missing = grafana_image()
    report["grafana image"] = f"{grafana.ref}: {grafana.how}" if grafana else f"none: {grafana_missing}"
    no_nat = not has_default_bridge()
    images = {"LPU_BASE_IMAGE": base.ref, "PROMETHEUS_IMAGE": prometheus.ref}
    stack = Stack(
        tmp_path_factory.mktemp("compose"),
        no_nat,
        images | ({"GRAFANA_IMAGE": grafana.ref} if grafana else {}),
    )
    report["compose"] = " ".join(stack.command[: stack.command.index("--project-name")])
    report["engine network"] = (
        "no default bridge: with deploy/docker/compose.no-nat.yml" if no_nat else "default"
    )
    stack.compose("down", "--volumes", "--remove-orphans", check=False)  # what an interrupted run left
    volumes_before = set(docker("volume", "ls", "--quiet").stdout.split())
    try:
        started = time.monotonic()
        stack.compose("build", timeout=BUILD_TIMEOUT_S)
        report["build"] = f"{time.monotonic() - started:.0f} s"
        size = int(docker("image", "inspect", "--format", "{{.Size}}", "lpu-serve:local").stdout)
        report["lpu-serve:local"] = f"{size / 1e6:.0f} MB"
        services = [*LPU_SERVICES, "prometheus", *(["grafana"] if grafana else [])]
        started = time.monotonic()
        stack.compose("up", "--detach", *services, timeout=UP_TIMEOUT_S)
        healthy_at = stack.healthy_at("server", HEALTHY_TIMEOUT_S)
        server_started = docker_time(stack.inspect("server")["State"]["StartedAt"])
        report["up"] = (
            f"`up` returned in {time.monotonic() - started:.0f} s (the model fetch included); the server was "
            f"healthy {healthy_at - server_started:.1f} s after it started"
        )
        yield Running(stack, healthy_at, grafana_missing, volumes_before, report)
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", check=False)


def test_the_image_is_non_root_thread_limited_and_declares_no_volume(running: Running) -> None:
    (image,) = json_inspect("image", "lpu-serve:local")
    config = image["Config"]
    assert config["User"] == "lpu"
    assert {"OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1", "LPU_CACHE_DIR=/var/cache/lpu-serve"} <= set(
        config["Env"]
    )
    assert not config.get("Volumes"), config.get("Volumes")  # no anonymous volume per container
    assert "/health" in " ".join(config["Healthcheck"]["Test"])


def json_inspect(*args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(docker(*args[:1], "inspect", *args[1:]).stdout)
    return found


def test_one_image_runs_the_fetch_the_server_and_the_traffic(running: Running) -> None:
    (image,) = json_inspect("image", "lpu-serve:local")
    for service in LPU_SERVICES:
        assert running.stack.inspect(service)["Image"] == image["Id"], service


def test_the_model_was_fetched_into_the_named_cache_volume(running: Running) -> None:
    stack = running.stack
    fetch = stack.inspect("fetch-model")["State"]
    assert fetch["Status"] == "exited" and fetch["ExitCode"] == 0, stack.logs("fetch-model")
    assert "pipeline: 8 stages" in stack.logs("fetch-model")  # `lpu compile` placed it on the 8 chips
    for service in ("fetch-model", "server"):
        mounts = {m["Destination"]: m for m in stack.inspect(service)["Mounts"]}
        cache = mounts["/var/cache/lpu-serve"]
        assert cache["Type"] == "volume" and cache["Name"] == f"{PROJECT}_model-cache", cache
    found = docker(
        "exec", stack.container("server"), "find", "/var/cache/lpu-serve", "-name", "*.gguf", "-size", "+90M"
    ).stdout.split()
    assert len(found) == 1, found


def test_ports_are_published_on_loopback_only(running: Running) -> None:
    stack = running.stack
    for service in ("server", "prometheus", *([] if running.grafana_missing else ["grafana"])):
        bindings = [
            b for ports in stack.inspect(service)["NetworkSettings"]["Ports"].values() for b in ports or []
        ]
        assert bindings and {b["HostIp"] for b in bindings} == {"127.0.0.1"}, (service, bindings)
        assert {int(b["HostPort"]) for b in bindings} == {stack.ports[service]}
    for service in ("fetch-model", "traffic"):
        ports = stack.inspect(service)["NetworkSettings"]["Ports"] or {}
        assert not any(ports.values()), (service, ports)


def test_the_server_answers_with_the_real_model(running: Running) -> None:
    url = running.stack.url("server")
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"] == MODEL
    body = {
        "model": MODEL, "temperature": 0, "max_tokens": 16, "user": CHECK_USER,
        "messages": [{"role": "user", "content": "What is the capital of Japan?"}],
    }  # fmt: skip
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert "Tokyo" in response.json()["choices"][0]["message"]["content"], response.text


def prometheus_query(running: Running, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{running.stack.url('prometheus')}/api/v1/query", params={"query": expr}, timeout=10
    )
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_the_server(running: Running) -> None:
    deadline = time.monotonic() + 60
    while True:
        targets = httpx.get(f"{running.stack.url('prometheus')}/api/v1/targets", timeout=10).json()
        (target,) = [t for t in targets["data"]["activeTargets"] if t["labels"]["job"] == "lpu-serve"]
        if target["health"] == "up":
            break
        assert time.monotonic() < deadline, target
        time.sleep(2)
    assert target["scrapeUrl"] == "http://server:8000/metrics"  # the compose service, on the stack's network
    (up,) = prometheus_query(running, 'up{job="lpu-serve"}')
    assert up["value"][1] == "1"
    (info,) = prometheus_query(running, "lpu_build_info")
    assert info["metric"]["served_model_name"] == MODEL and info["metric"]["chips"] == "8"


def _rate_interval() -> str:
    """What Grafana substitutes for $__rate_interval on this dashboard: four scrape intervals (the datasource's
    timeInterval equals the scrape interval), which exceeds $__interval plus one scrape at its default range."""
    scrape = load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    return f"{4 * int(scrape.removesuffix('s'))}s"


def test_every_dashboard_query_returns_data_within_two_minutes(running: Running) -> None:
    pending = {
        (q.panel, q.expr): q.expr.replace("$__rate_interval", _rate_interval()) for q in queries(dashboard())
    }
    assert all("$" not in expr for expr in pending.values()), pending
    deadline = running.healthy_at + DASHBOARD_DEADLINE_S
    while pending:
        for key, expr in list(pending.items()):
            values = [float(series["value"][1]) for series in prometheus_query(running, expr)]
            if any(math.isfinite(v) for v in values):
                del pending[key]
        if not pending or time.time() > deadline:
            break
        time.sleep(5)
    elapsed = time.time() - running.healthy_at
    assert not pending, f"no data {elapsed:.0f} s after healthy: {sorted(pending)}"
    running.report["dashboard"] = (
        f"all {len(queries(dashboard()))} queries returned data {elapsed:.0f} s after the server was healthy"
    )


def test_every_traffic_user_is_on_the_dashboard(running: Running) -> None:
    series = prometheus_query(running, "sum by (user) (lpu_user_generation_tokens_total)")
    tokens = {s["metric"]["user"]: float(s["value"][1]) for s in series}
    assert TRAFFIC_USERS <= set(tokens) <= TRAFFIC_USERS | {CHECK_USER}, tokens
    assert all(tokens[user] > 0 for user in TRAFFIC_USERS), tokens
    finished = prometheus_query(running, "sum by (finish_reason) (lpu_requests_finished_total)")
    reasons = {s["metric"]["finish_reason"]: float(s["value"][1]) for s in finished}
    running.report["traffic so far"] = f"{sum(tokens.values()):.0f} tokens; finished " + ", ".join(
        f"{k} {v:.0f}" for k, v in sorted(reasons.items())
    )
    assert reasons.get("length", 0) > 0, reasons


def test_grafana_serves_the_provisioned_dashboard(running: Running) -> None:
    if running.grafana_missing:
        pytest.skip(f"Grafana not run: {running.grafana_missing}")
    url = running.stack.url("grafana")
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/api/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, running.stack.logs("grafana")[-4000:]
        time.sleep(2)
    expected = dashboard()
    found = httpx.get(f"{url}/api/dashboards/uid/{expected['uid']}", timeout=10)  # as the anonymous viewer
    assert found.status_code == 200, found.text
    assert found.json()["dashboard"]["title"] == expected["title"]
    assert len(found.json()["dashboard"]["panels"]) == len(expected["panels"])
    query = {
        "queries": [{"refId": "A", "datasource": {"uid": "lpu-prometheus"}, "expr": 'up{job="lpu-serve"}'}],
        "from": "now-5m", "to": "now",
    }  # fmt: skip
    data = httpx.post(f"{url}/api/ds/query", json=query, timeout=30)  # through Grafana's datasource proxy
    assert data.status_code == 200 and data.json()["results"]["A"]["frames"], data.text
    errors = [line for line in running.stack.logs("grafana").splitlines() if "level=error" in line]
    assert not [line for line in errors if "provisioning" in line], errors


def test_traffic_runs_until_stopped_and_stops_cleanly(running: Running) -> None:
    stack = running.stack
    container = stack.inspect("traffic")
    state = container["State"]
    assert state["Running"] and container["RestartCount"] == 0, stack.logs("traffic")
    running_for = time.time() - docker_time(state["StartedAt"])
    started = time.monotonic()
    stack.compose("stop", "traffic")
    stopped_in = time.monotonic() - started
    state = stack.inspect("traffic")["State"]
    log = stack.logs("traffic")
    assert state["ExitCode"] == 0 and "SIGTERM, stopping" in log, log
    assert stopped_in < 10, f"stop took {stopped_in:.1f} s: the traffic did not end on SIGTERM"
    assert all(f"{user}:" in log for user in TRAFFIC_USERS), log  # the tally is printed on the way out
    running.report["traffic"] = (
        f"ran {running_for:.0f} s until stopped; stopped in {stopped_in:.1f} s, exit 0"
    )


def test_down_leaves_no_container_network_or_anonymous_volume(running: Running) -> None:
    stack = running.stack
    started = time.monotonic()
    stack.compose("down", timeout=300)
    running.report["down"] = f"{time.monotonic() - started:.1f} s"
    assert stack.containers() == [] and stack.networks() == []
    new = set(docker("volume", "ls", "--quiet").stdout.split()) - running.volumes_before
    named = {f"{PROJECT}_model-cache", f"{PROJECT}_prometheus-data"}
    assert named <= new <= named | {f"{PROJECT}_grafana-data"}, new  # anything else is an anonymous volume
    assert set(stack.volumes()) == new
    # The model outlives the containers: the next `up` finds it without the network.
    found = docker(
        "run", "--rm", "--network", "none", "--volume", f"{PROJECT}_model-cache:/cache", "lpu-serve:local",
        "find", "/cache", "-name", "*.gguf",
    ).stdout.split()  # fmt: skip
    assert len(found) == 1, found
