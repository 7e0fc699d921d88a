"""The demo stack's files as tests read them: the Grafana dashboard's panels and PromQL, the provisioned
datasource, the Prometheus config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lpu-serve.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
TRAFFIC_SCRIPT = DEPLOY / "traffic" / "traffic.py"


@dataclass(frozen=True)
class Query:
    panel: str
    ref_id: str
    expr: str
    datasource_uid: str | None


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows; rows themselves are left out."""
    found: list[dict[str, Any]] = []
    for panel in dash["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def queries(dash: dict[str, Any]) -> list[Query]:
    return [
        Query(panel["title"], target["refId"], target["expr"], (target.get("datasource") or {}).get("uid"))
        for panel in panels(dash)
        for target in panel.get("targets", [])
    ]


def provisioned_datasource_uids() -> set[str]:
    return {ds["uid"] for ds in load_yaml(DATASOURCES)["datasources"]}
