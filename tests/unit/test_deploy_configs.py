"""The demo stack's files, checked by the real tools where there are some (promtool, a compose CLI) and by
their structure where there are none here (no Grafana, no Docker engine): the dashboard references only the
provisioned datasource and only documented metrics; the Dockerfile keeps its promises."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy_files import (
    COMPOSE_FILE,
    DASHBOARD,
    DEPLOY,
    PROMETHEUS_CONFIG,
    REPO_ROOT,
    TRAFFIC_SCRIPT,
    dashboard,
    load_yaml,
    panels,
    provisioned_datasource_uids,
    queries,
)
from tests.external_tools import compose_command, require_tool

SERVICES = {"server", "prometheus", "grafana", "traffic"}
COMPOSE_VARIABLES = (
    "LPU_SERVER_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT", "LPU_MODEL", "LPU_CHIPS", "LPU_METRICS_MAX_USERS",
    "TRAFFIC_USERS", "TRAFFIC_DURATION_S", "GRAFANA_ADMIN_PASSWORD",
)  # fmt: skip


def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(
        [require_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["server:8000"]}]  # the compose service


def _compose_config(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """The compose file as the compose CLI resolves it (validated against its schema) in a clean environment,
    so a developer's own variables or .env cannot change the answer."""
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES} | env
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    command = [*compose_command(), "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE)]
    result = subprocess.run(
        [*command, "--env-file", str(empty_env_file), "config"],
        capture_output=True,
        text=True,
        env=clean,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def _published(service: dict[str, Any]) -> set[tuple[str, str]]:
    return {(str(p["published"]), str(p["target"])) for p in service.get("ports", [])}


def test_compose_file_is_valid_and_works_without_an_env_file(tmp_path: Path) -> None:
    config = _compose_config({}, tmp_path)
    services = config["services"]
    assert set(services) == SERVICES
    assert _published(services["server"]) == {("8000", "8000")}
    assert _published(services["prometheus"]) == {("9090", "9090")}
    assert _published(services["grafana"]) == {("3000", "3000")}
    assert services["server"]["environment"]["LPU_MODEL"] == "lpu-demo-untrained-13m"
    assert services["traffic"]["depends_on"]["server"]["condition"] == "service_healthy"
    grafana = services["grafana"]["environment"]
    assert (
        grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    )
    home = grafana["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"/etc/grafana/dashboards/{DASHBOARD.name}"
    for service in services.values():  # every file the stack mounts is in the repo
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert Path(source).exists(), source


def test_ports_and_model_come_from_the_environment(tmp_path: Path) -> None:
    env = {"LPU_SERVER_PORT": "18000", "GRAFANA_PORT": "13000", "PROMETHEUS_PORT": "19090", "LPU_CHIPS": "8"}
    env["LPU_MODEL"] = "llama-2-7b"
    services = _compose_config(env, tmp_path)["services"]
    assert _published(services["server"]) == {("18000", "8000")}
    assert _published(services["grafana"]) == {("13000", "3000")}
    assert _published(services["prometheus"]) == {("19090", "9090")}
    assert services["server"]["environment"]["LPU_MODEL"] == "llama-2-7b"
    assert services["server"]["environment"]["LPU_CHIPS"] == "8"


def test_env_example_names_exactly_the_variables_compose_reads() -> None:
    example = (REPO_ROOT / ".env.example").read_text()
    names = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    used = set(re.findall(r"\$\{([A-Z_]+):-", COMPOSE_FILE.read_text()))
    assert names == used == set(COMPOSE_VARIABLES)


def test_dashboard_references_only_the_provisioned_datasource() -> None:
    uids = provisioned_datasource_uids()
    assert uids == {"lpu-prometheus"}
    dash = dashboard()
    for panel in panels(dash):
        assert panel["datasource"] == {"type": "prometheus", "uid": "lpu-prometheus"}, panel["title"]
    qs = queries(dash)
    assert qs and all(q.datasource_uid in uids for q in qs)
    text = DASHBOARD.read_text()
    assert set(re.findall(r'"uid": "([^"]+)"', text)) == uids | {dash["uid"]}
    assert "${DS_" not in text  # no import-time datasource inputs: provisioning cannot fill them


def test_dashboard_layout_has_no_overlaps_and_unique_ids() -> None:
    dash = dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    assert dash["refresh"] and dash["time"]["from"].startswith("now-")


def _documented_metrics() -> set[str]:
    return set(re.findall(r"`(lpu_[a-z0-9_]+)`", (REPO_ROOT / "docs" / "metrics.md").read_text()))


def test_dashboard_uses_only_documented_metrics() -> None:
    documented = _documented_metrics()
    used = {name for q in queries(dashboard()) for name in re.findall(r"\blpu_[a-z0-9_]+", q.expr)}
    assert used, "the dashboard queries no lpu_ metric"
    for name in used:
        base = name.removesuffix("_bucket")
        assert base in documented, f"{name} is queried by the dashboard but not in docs/metrics.md"


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    exprs = " ".join(q.expr for q in queries(dashboard()))
    for metric in (
        "lpu_user_generation_tokens_per_second", "lpu_user_emulated_tokens_per_second",
        "lpu_generation_tokens_total", "lpu_time_to_first_token_seconds_bucket",
        "lpu_inter_token_latency_seconds_bucket", "lpu_requests_running", "lpu_requests_waiting",
        "lpu_requests_finished_total", "lpu_chip_sram_used_bytes", "lpu_kv_cache_usage_ratio",
        "lpu_pipeline_stage_busy_cycles_total",
    ):  # fmt: skip
        assert metric in exprs, metric


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    (provider,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "lpu-serve.yml")["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    (datasource,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    scrape = load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape  # $__rate_interval is computed from it


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_is_slim_non_root_cached_and_health_checked() -> None:
    steps = _dockerfile()
    kinds = [kind for kind, _ in steps]
    assert re.fullmatch(r"python:3\.11-slim\S*", steps[0][1])
    user = [args for kind, args in steps if kind == "USER"]
    assert user and user[-1] not in ("root", "0")
    copies = [args for kind, args in steps if kind == "COPY"]
    assert copies[0].split() == ["pyproject.toml", "./"]  # dependencies install before any source arrives
    first_source = kinds.index("COPY", kinds.index("COPY") + 1)
    assert any(kind == "RUN" and "pip install -r" in args for kind, args in steps[:first_source])
    (health,) = [args for kind, args in steps if kind == "HEALTHCHECK"]
    start = re.search(r"--start-period=(\d+)s", health)
    assert start and int(start.group(1)) >= 60 and "/health" in health
    assert steps[-1] == ("CMD", '["lpu", "serve"]')
    env = " ".join(args for kind, args in steps if kind == "ENV")
    assert "LPU_HOST=0.0.0.0" in env  # reachable through -p 8000:8000


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for kind, args in _dockerfile():
        if kind == "COPY":
            source = args.split()[0].rstrip("/")
            assert source in allowed, f"COPY {source} is excluded by .dockerignore"


def test_the_dependency_layer_command_reads_pyproject() -> None:
    """The RUN step that turns pyproject.toml into requirements, run here on the real file."""
    run = next(args for kind, args in _dockerfile() if kind == "RUN" and "tomllib" in args)
    script = re.search(r'python -c "(.*?)" >', run)
    assert script is not None
    code = script.group(1).replace("\\n", "\n").replace("\n", "\\n")  # as the shell hands it to Python
    out = subprocess.run(["python3", "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    requirements = out.stdout.split()
    assert any(r.startswith("fastapi") for r in requirements) and any(
        r.startswith("httpx") for r in requirements
    )


def _traffic_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lpu_demo_traffic", TRAFFIC_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "http://server:8000"]
)
def test_traffic_targets_loopback_or_a_compose_service(url: str) -> None:
    assert _traffic_module().check_target(url) == url


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5:8000", "http://192.168.1.2", "https://api.example.com", "ftp://127.0.0.1"]
)
def test_traffic_refuses_any_other_target(url: str) -> None:
    traffic = _traffic_module()
    with pytest.raises(Exception, match="only targets loopback"):
        traffic.check_target(url)


def test_traffic_users_parse_with_rates() -> None:
    users = _traffic_module().parse_users("alice=2, bob=0.5,carol")
    assert [(u.name, u.rate) for u in users] == [("alice", 2.0), ("bob", 0.5), ("carol", 1.0)]
