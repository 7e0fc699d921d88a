"""The Grafana dashboards against Grafana's own schema: @grafana/schema from npm (the TypeScript types Grafana
generates from its CUE schemas), at the version of the Grafana image the stack runs, compiled by TypeScript
(deploy/grafana/schema-check). No Python or npm package validates Grafana's provisioning YAML; those files are
checked in test_configs.py.

Needs Node and the check's npm packages (`make dashboard-check` installs them; .ci/run does): without them the
test skips, and under CI=true it fails.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy_files import COMPOSE_FILE, DASHBOARD, DEPLOY, dashboard
from tests.external_tools import require_tool
from tests.shared_models import in_ci

SCHEMA_CHECK = DEPLOY / "grafana" / "schema-check"


@dataclass(frozen=True)
class CheckRun:
    returncode: int
    output: str

    def lines_about(self, path: Path) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith(f"{path}:")]


def _installed() -> None:
    if not (SCHEMA_CHECK / "node_modules" / "@grafana" / "schema").is_dir():
        reason = f"the Grafana schema check's npm packages are not installed: run make dashboard-check ({SCHEMA_CHECK})"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def broken_dashboards(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, list[str]]:
    """Copies of the real dashboard with mistakes Grafana's schema forbids, and the text of each mistake's line.
    Two files: TypeScript reports an unknown key of an object only once the values inside it are right."""
    folder = tmp_path_factory.mktemp("dashboards")
    inside = dashboard()
    stat = next(p for p in inside["panels"] if p["type"] == "stat")
    stat["options"]["colorMode"] = "rainbow"  # not a BigValueColorMode
    timeseries = next(p for p in inside["panels"] if p["type"] == "timeseries")
    timeseries["gridPos"]["w"] = "12"  # a string where the schema has a number
    top = dashboard()
    top["refreshInterval"] = "5s"  # no such dashboard field
    broken = {folder / "inside.json": (inside, ['"colorMode": "rainbow"', '"w": "12"'])}
    broken[folder / "top.json"] = (top, ['"refreshInterval"'])
    for path, (dash, _) in broken.items():
        path.write_text(json.dumps(dash, indent=2))
    return {path: mistakes for path, (_, mistakes) in broken.items()}


@pytest.fixture(scope="module")
def check(broken_dashboards: dict[Path, list[str]]) -> CheckRun:
    """One run of the checker over the repo's dashboards and the broken copies (TypeScript starts once)."""
    _installed()
    node = require_tool("node")
    dashboards = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    done = subprocess.run(
        [node, str(SCHEMA_CHECK / "check.mjs"), *map(str, [*dashboards, *broken_dashboards])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return CheckRun(done.returncode, done.stdout + done.stderr)


def test_the_dashboards_match_grafanas_schema(check: CheckRun) -> None:
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        assert check.lines_about(path) == [], check.output
    assert re.search(r"\d+ dashboard\(s\) checked", check.output), check.output


def test_the_check_finds_each_mistake_on_its_line(
    check: CheckRun, broken_dashboards: dict[Path, list[str]]
) -> None:
    assert check.returncode == 1, check.output
    for path, mistakes in broken_dashboards.items():
        lines = path.read_text().splitlines()
        expected = sorted(next(i for i, line in enumerate(lines, 1) if m in line) for m in mistakes)
        reported = sorted(int(error.split(":")[1]) for error in check.lines_about(path))
        assert reported == expected, check.output


def test_the_schema_is_the_version_of_the_grafana_image() -> None:
    image = re.search(r"\$\{GRAFANA_IMAGE:-grafana/grafana:([0-9.]+)\}", COMPOSE_FILE.read_text())
    assert image is not None
    package = json.loads((SCHEMA_CHECK / "package.json").read_text())
    lock = json.loads((SCHEMA_CHECK / "package-lock.json").read_text())
    assert package["devDependencies"]["@grafana/schema"] == image.group(1)
    assert lock["packages"]["node_modules/@grafana/schema"]["version"] == image.group(1)
    assert DASHBOARD.parent == DEPLOY / "grafana" / "dashboards"
