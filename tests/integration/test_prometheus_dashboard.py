"""A real Prometheus scrapes a live lpu-serve while the demo traffic generator streams as several users; then
every PromQL expression of the Grafana dashboard is evaluated through Prometheus' HTTP API and must return
data, and the per-user series must be exactly the users who sent traffic.

Needs Debian's `prometheus` package (`apt-get install prometheus`; .ci/run installs it): without it the test
skips, and under CI=true it fails.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy_files import PROMETHEUS_CONFIG, REPO_ROOT, TRAFFIC_SCRIPT, dashboard, load_yaml, queries
from tests.e2e.support import Server, free_port, running_server, stop_process
from tests.external_tools import require_tool

TRAFFIC_USERS = {"alice": 6.0, "bob": 3.0, "dave": 1.5}  # requests per second, one in flight each
KEYS = {"traffic": "sk-traffic-0123", "carol": "sk-carol-4567"}  # carol sends no `user`: labelled by key name
TRAFFIC_SECONDS = 6.0
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "1m"  # what `$__rate_interval` stands for here: it spans the whole run
START_TIMEOUT_S = 30.0


def prometheus_config(target: str) -> dict[str, Any]:
    """The repo's scrape config, pointed at the test's server and scraping every second."""
    config: dict[str, Any] = load_yaml(PROMETHEUS_CONFIG)
    config["global"]["scrape_interval"] = SCRAPE_INTERVAL
    config["global"]["evaluation_interval"] = SCRAPE_INTERVAL
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys = ",".join(f"{name}={key}" for name, key in KEYS.items())
    with running_server(
        tmp_path_factory.mktemp("server"),
        "lpu-demo-untrained-13m",
        # The traffic generator sends every user's requests with one key: its `user` field is a sub-label.
        ["--model", "lpu-demo-untrained-13m", "--api-keys", keys, "--metrics-request-user", "true"],
    ) as s:
        yield s


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(prometheus_config(server.base_url.removeprefix("http://"))))
    check = subprocess.run(
        [require_tool("promtool"), "check", "config", str(config_path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    url = f"http://127.0.0.1:{free_port()}"
    log_path = workdir / "prometheus.log"
    command = [
        binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not become ready; its log:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(process)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def traffic(server: Server, prometheus: str) -> str:
    """The demo's own traffic generator as three named users, plus carol identified by her key alone."""
    users = ",".join(f"{name}={rate}" for name, rate in TRAFFIC_USERS.items())
    command = [
        sys.executable, str(TRAFFIC_SCRIPT), f"--url={server.base_url}", f"--users={users}",
        f"--duration={TRAFFIC_SECONDS}", "--max-requests=200", "--max-tokens=24", "--stop-fraction=0.4",
        "--abort-fraction=0.2", f"--api-key={KEYS['traffic']}", "--wait=10",
    ]  # fmt: skip
    carol = {
        "model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
        "ignore_eos": True,
    }  # fmt: skip
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as run:
        headers = {"Authorization": f"Bearer {KEYS['carol']}"}
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions", json=carol, headers=headers, timeout=30
        )
        assert response.status_code == 200, response.text
        _one_stop_and_one_abort(server)
        out, _ = run.communicate(timeout=TRAFFIC_SECONDS + 60)
    report = out.decode(errors="replace")
    assert run.returncode == 0, report
    time.sleep(3 * _seconds(SCRAPE_INTERVAL))  # the last outputs are scraped
    return report


def _one_stop_and_one_abort(server: Server) -> None:
    """The generator's stop and abort mixes are random, and a loaded machine sends few requests in a short run:
    one request certain to end on a stop string and one stream cut by its client make every reason appear."""
    url = f"{server.base_url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEYS['traffic']}"}
    greedy = {
        "model": server.model, "messages": [{"role": "user", "content": "stop here"}], "max_tokens": 8,
        "temperature": 0, "ignore_eos": True, "user": "alice",
    }  # fmt: skip
    text = httpx.post(url, json=greedy, headers=headers, timeout=30).json()["choices"][0]["message"][
        "content"
    ]
    stopped = httpx.post(url, json={**greedy, "stop": [text[3:5]]}, headers=headers, timeout=30).json()
    assert stopped["choices"][0]["finish_reason"] == "stop", stopped
    with httpx.stream("POST", url, json={**greedy, "max_tokens": 400, "stream": True}, headers=headers) as r:
        next(r.iter_lines())  # the first chunk arrived: the request is running; now the client goes away


def _seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    assert body["data"]["resultType"] == "vector", expr
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


DASHBOARD_QUERIES = queries(dashboard())


@pytest.mark.parametrize("q", DASHBOARD_QUERIES, ids=[f"{q.panel}/{q.ref_id}" for q in DASHBOARD_QUERIES])
def test_every_dashboard_expression_returns_data(prometheus: str, traffic: str, q: Any) -> None:
    expr = q.expr.replace("$__rate_interval", RATE_INTERVAL)
    assert "$" not in expr, f"{q.panel}: a Grafana variable this test does not know: {q.expr}"
    result = query(prometheus, expr)
    assert result, f"{q.panel} ({q.expr}) returned no series; traffic:\n{traffic}"
    values = [float(series["value"][1]) for series in result]
    assert any(math.isfinite(v) for v in values), f"{q.panel} ({q.expr}) returned only {values}"


def test_per_user_series_are_exactly_the_users_who_sent_traffic(prometheus: str, traffic: str) -> None:
    expected = {*(f"traffic/{user}" for user in TRAFFIC_USERS), "carol"}
    for family in (
        "lpu_user_generation_tokens_total",
        "lpu_user_generation_tokens_per_second",
        "lpu_user_emulated_tokens_per_second",
    ):
        users = {series["metric"]["user"] for series in query(prometheus, f"group by (user) ({family})")}
        assert users == expected, (family, traffic)
    carol = query(prometheus, 'sum(lpu_user_generation_tokens_total{user="carol"})')
    assert float(carol[0]["value"][1]) == 6


def test_traffic_mixes_finish_reasons(prometheus: str, traffic: str) -> None:
    finished = {
        s["metric"]["finish_reason"]: float(s["value"][1])
        for s in query(prometheus, "sum by (finish_reason) (lpu_requests_finished_total)")
    }
    assert finished["length"] > 0 and finished["stop"] > 0 and finished["abort"] > 0, (finished, traffic)
    received = float(query(prometheus, "sum(lpu_requests_received_total)")[0]["value"][1])
    assert received == sum(finished.values()), traffic  # nothing is left in flight or counted twice


def test_the_dashboard_was_checked_whole() -> None:
    titles = {q.panel for q in DASHBOARD_QUERIES}
    for needed in (
        "Per-user decode tokens/s on the emulated LPU",
        "Time to first token",
        "SRAM use per chip",
    ):
        assert needed in titles
    assert len(DASHBOARD_QUERIES) >= 20, Path(__file__).name
