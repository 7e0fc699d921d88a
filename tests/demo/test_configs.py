"""The demo stack's files, checked by the real tools where there are some (promtool, a compose CLI) and by
their structure otherwise: the compose file is safe by default (ports on 127.0.0.1, data in named volumes, one
image), the dashboard references only the provisioned datasource and only documented metrics, the Dockerfile
keeps its promises. Running the stack itself is tests/demo/test_stack.py (`make demo-test`)."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.demo.files import (
    BASE_IMAGE_PATTERN,
    DOCKERFILE,
    LOCK_FILE,
    NO_NAT_OVERRIDE,
    compose_base_image_default,
    dockerfile_base_image_default,
    dockerfile_steps,
    locked_versions,
    published,
    traffic_module,
    volume_mounts,
)
from tests.deploy_files import (
    COMPOSE_FILE,
    DASHBOARD,
    DEPLOY,
    PROMETHEUS_CONFIG,
    REPO_ROOT,
    dashboard,
    load_yaml,
    panels,
    provisioned_datasource_uids,
    queries,
)
from tests.external_tools import compose_command, require_tool

SERVICES = {"fetch-model", "server", "prometheus", "grafana", "traffic"}
COMPOSE_VARIABLES = (
    "LPU_BIND_ADDRESS", "LPU_SERVER_PORT", "PROMETHEUS_PORT", "GRAFANA_PORT", "LPU_MODEL", "LPU_CHIPS",
    "LPU_METRICS_MAX_USERS", "TRAFFIC_USERS", "TRAFFIC_DURATION_S", "GRAFANA_ADMIN_PASSWORD", "LPU_BASE_IMAGE",
    "PROMETHEUS_IMAGE", "GRAFANA_IMAGE",
)  # fmt: skip
IMAGE_CACHE_DIR = "/var/cache/lpu-serve"


def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(
        [require_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["server:8000"]}]  # the compose service


def _compose_config(env: dict[str, str], tmp_path: Path, *overrides: Path) -> dict[str, Any]:
    """The compose file as the compose CLI resolves it (validated against its schema) in a clean environment,
    so a developer's own variables or .env cannot change the answer."""
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES} | env
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    files = [arg for path in (COMPOSE_FILE, *overrides) for arg in ("-f", str(path))]
    command = [*compose_command(), "--project-directory", str(REPO_ROOT), *files]
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


def test_compose_file_is_valid_and_safe_without_an_env_file(tmp_path: Path) -> None:
    services = _compose_config({}, tmp_path)["services"]
    assert set(services) == SERVICES
    # Published on loopback only: the API has no key and Grafana's admin password is a default.
    assert published(services["server"]) == {("127.0.0.1", "8000", "8000")}
    assert published(services["prometheus"]) == {("127.0.0.1", "9090", "9090")}
    assert published(services["grafana"]) == {("127.0.0.1", "3000", "3000")}
    for name in ("fetch-model", "traffic"):
        assert not published(services[name]), name
    assert services["server"]["environment"]["LPU_MODEL"] == "SmolLM2-135M-Instruct"
    assert services["fetch-model"]["environment"] == {
        k: services["server"]["environment"][k] for k in ("LPU_MODEL", "LPU_CHIPS")
    }  # the fetch checks the model the server serves, on the same chips
    assert services["server"]["depends_on"]["fetch-model"]["condition"] == "service_completed_successfully"
    assert services["traffic"]["depends_on"]["server"]["condition"] == "service_healthy"
    grafana = services["grafana"]["environment"]
    assert (
        grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    )
    home = grafana["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"/etc/grafana/dashboards/{DASHBOARD.name}"


def test_ports_bind_address_and_model_come_from_the_environment(tmp_path: Path) -> None:
    env = {"LPU_SERVER_PORT": "18000", "GRAFANA_PORT": "13000", "PROMETHEUS_PORT": "19090", "LPU_CHIPS": "4"}
    env |= {"LPU_MODEL": "lpu-demo-untrained-13m", "LPU_BIND_ADDRESS": "0.0.0.0"}
    services = _compose_config(env, tmp_path)["services"]
    assert published(services["server"]) == {("0.0.0.0", "18000", "8000")}
    assert published(services["grafana"]) == {("0.0.0.0", "13000", "3000")}
    assert published(services["prometheus"]) == {("0.0.0.0", "19090", "9090")}
    for name in ("server", "fetch-model"):
        assert services[name]["environment"]["LPU_MODEL"] == "lpu-demo-untrained-13m"
        assert services[name]["environment"]["LPU_CHIPS"] == "4"


def test_data_lives_in_named_volumes_and_every_bind_mount_is_in_the_repo(tmp_path: Path) -> None:
    config = _compose_config({}, tmp_path)
    services = config["services"]
    assert set(config["volumes"]) == {"model-cache", "prometheus-data", "grafana-data"}
    for name in ("fetch-model", "server"):
        assert ("volume", "model-cache", IMAGE_CACHE_DIR) in volume_mounts(services[name]), name
    prometheus = services["prometheus"]
    assert ("volume", "prometheus-data", "/prometheus") in volume_mounts(prometheus)
    assert "--storage.tsdb.path=/prometheus" in prometheus["command"]
    # The images' own VOLUME paths (Prometheus' /prometheus, Grafana's /var/lib/grafana) are covered by named
    # volumes, so no anonymous volume is created, and none is left dangling by `down`.
    assert ("volume", "grafana-data", "/var/lib/grafana") in volume_mounts(services["grafana"])
    for name, service in services.items():
        for kind, source, target in volume_mounts(service):
            assert kind in ("bind", "volume") and source, (name, target)  # an anonymous volume has no source
            if kind == "bind":
                assert Path(source).exists() and Path(source).is_relative_to(REPO_ROOT), (name, source)
            else:
                assert source in config["volumes"], (name, source)


def test_grafana_mounts_only_the_provisioning_folders_the_repo_has(tmp_path: Path) -> None:
    """Mounting all of /etc/grafana/provisioning would hide the image's own plugins/ and alerting/ folders."""
    grafana = _compose_config({}, tmp_path)["services"]["grafana"]
    targets = {target: source for kind, source, target in volume_mounts(grafana) if kind == "bind"}
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert "/etc/grafana/provisioning" not in targets
    mounted = {t.removeprefix("/etc/grafana/provisioning/") for t in targets if "/provisioning/" in t}
    assert mounted == {p.name for p in provisioning.iterdir() if p.is_dir()} == {"dashboards", "datasources"}
    for folder in mounted:
        assert Path(targets[f"/etc/grafana/provisioning/{folder}"]) == provisioning / folder


def test_one_service_builds_the_one_image_the_others_run(tmp_path: Path) -> None:
    services = _compose_config({}, tmp_path)["services"]
    builders = {name for name, service in services.items() if "build" in service}
    assert builders == {"fetch-model"}
    image = services["fetch-model"]["image"]
    assert {services[name]["image"] for name in ("server", "traffic")} == {image}
    assert services["fetch-model"]["command"] == ["lpu", "compile"]  # fetches the model, checks it fits


def test_base_image_is_pinned_and_the_same_in_compose_and_dockerfile(tmp_path: Path) -> None:
    default = dockerfile_base_image_default()
    assert re.fullmatch(BASE_IMAGE_PATTERN, default), default  # a version and a digest
    assert compose_base_image_default() == default
    build = _compose_config({}, tmp_path)["services"]["fetch-model"]["build"]
    assert build["args"]["BASE_IMAGE"] == default
    local = _compose_config({"LPU_BASE_IMAGE": "lpu-serve-base:bookworm"}, tmp_path)
    assert local["services"]["fetch-model"]["build"]["args"]["BASE_IMAGE"] == "lpu-serve-base:bookworm"


def test_traffic_runs_until_stopped(tmp_path: Path) -> None:
    traffic = _compose_config({}, tmp_path)["services"]["traffic"]
    command = traffic["command"]
    assert command[:2] == ["python", "deploy/traffic/traffic.py"]
    args = traffic_module().parse_args(command[2:])
    assert args.duration == 0 and args.max_requests == 0 and args.url == "http://server:8000"
    assert traffic["restart"] == "unless-stopped"


def test_the_no_nat_override_moves_only_the_build_and_the_fetch_to_the_host_network(tmp_path: Path) -> None:
    plain = _compose_config({}, tmp_path)["services"]
    services = _compose_config({}, tmp_path, NO_NAT_OVERRIDE)["services"]
    assert services["fetch-model"]["network_mode"] == "host"
    assert services["fetch-model"]["build"]["network"] == "host"
    for name in SERVICES - {"fetch-model"}:
        assert "network_mode" not in services[name], name
        assert published(services[name]) == published(plain[name]), name  # still on 127.0.0.1


def test_env_example_names_exactly_the_variables_compose_reads() -> None:
    example = (REPO_ROOT / ".env.example").read_text()
    names = dict(re.findall(r"^([A-Z_]+)=(.*)$", example, re.MULTILINE))
    text = COMPOSE_FILE.read_text()
    defaults = dict(re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", text))
    assert set(names) == set(defaults) == set(COMPOSE_VARIABLES)
    assert names == defaults  # the example shows the defaults, so copying it changes nothing


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


def test_dockerfile_is_pinned_non_root_cached_thread_limited_and_health_checked() -> None:
    steps = dockerfile_steps()
    froms = [args for kind, args in steps if kind == "FROM"]
    assert froms[0] == "${BASE_IMAGE} AS deps" and froms[-1] == "${BASE_IMAGE}"  # the image is on the base
    user = [args for kind, args in steps if kind == "USER"]
    assert user and user[-1] not in ("root", "0")
    copies = [args for kind, args in steps if kind == "COPY"]
    assert copies[0].split() == [LOCK_FILE.relative_to(REPO_ROOT).as_posix(), "/tmp/requirements.lock"]
    first_source = [kind for kind, _ in steps].index("COPY", 1 + [kind for kind, _ in steps].index("COPY"))
    install = [args for kind, args in steps[:first_source] if kind == "RUN" and "pip install" in args]
    assert install and "--require-hashes" in install[0]  # dependencies install before any source arrives
    (health,) = [args for kind, args in steps if kind == "HEALTHCHECK"]
    start = re.search(r"--start-period=(\d+)s", health)
    assert start and int(start.group(1)) >= 60 and "/health" in health
    assert steps[-1] == ("CMD", '["lpu", "serve"]')
    env = " ".join(args for kind, args in steps if kind == "ENV")
    assert "LPU_HOST=0.0.0.0" in env  # reachable through -p 127.0.0.1:8000:8000
    assert "OPENBLAS_NUM_THREADS=1" in env and "OMP_NUM_THREADS=1" in env
    assert f"LPU_CACHE_DIR={IMAGE_CACHE_DIR}" in env  # where compose mounts the model-cache volume
    assert "VOLUME" not in {kind for kind, _ in steps}  # it would leave anonymous volumes behind
    assert not any(line.startswith("# syntax=") for line in DOCKERFILE.read_text().splitlines())


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for kind, args in dockerfile_steps():
        if kind == "COPY" and not args.startswith("--from="):
            for source in args.split()[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"


def test_the_lock_pins_every_dependency_pyproject_declares() -> None:
    """deploy/docker/requirements.lock (make demo-lock) against pyproject.toml: every runtime, `demo` and build
    requirement is pinned at a version its specifier accepts, with hashes."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    declared = [
        *project["dependencies"],
        *project["optional-dependencies"]["demo"],
        *pyproject["build-system"]["requires"],
    ]
    pinned = locked_versions()
    for text in declared:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{text} is not in {LOCK_FILE.name}: run make demo-lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (text, pinned[name])
    assert LOCK_FILE.read_text().count("--hash=sha256:") >= len(pinned)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "http://server:8000"]
)
def test_traffic_targets_loopback_or_a_compose_service(url: str) -> None:
    assert traffic_module().check_target(url) == url


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5:8000", "http://192.168.1.2", "https://api.example.com", "ftp://127.0.0.1"]
)
def test_traffic_refuses_any_other_target(url: str) -> None:
    traffic = traffic_module()
    with pytest.raises(Exception, match="only targets loopback"):
        traffic.check_target(url)


def test_traffic_users_parse_with_rates() -> None:
    users = traffic_module().parse_users("alice=2, bob=0.5,carol")
    assert [(u.name, u.rate) for u in users] == [("alice", 2.0), ("bob", 0.5), ("carol", 1.0)]


def test_traffic_budget_counts_requests_and_zero_means_no_limit() -> None:
    traffic = traffic_module()
    capped = traffic.Budget(requests=2, deadline=float("inf"))
    assert [capped.take() for _ in range(3)] == [True, True, False]
    endless = traffic.Budget(requests=None, deadline=float("inf"))
    assert all(endless.take() for _ in range(1000))
    assert not traffic.Budget(requests=None, deadline=0.0).take()  # the deadline passed
    with pytest.raises(SystemExit):
        traffic.parse_args(["--duration=-1"])
