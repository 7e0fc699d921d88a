"""Where the real test data lives (`LPU_TEST_MODELS`, default `../shared/models` beside the project).

Tests that need it skip with the reason when it is absent, except under CI (`CI=true`), where absence is a
failure: a CI run that silently skipped the real-model tests would prove nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def models_dir() -> Path:
    configured = os.environ.get("LPU_TEST_MODELS")
    return Path(configured) if configured else PROJECT_ROOT.parent / "shared" / "models"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_reason(path: Path) -> str:
    return f"test data {path} is absent: set LPU_TEST_MODELS to the shared/models folder (see README)"


def require(relative: str) -> Path:
    """The path of a file or folder of test data, or a skip (a failure under CI) when it is absent."""
    path = models_dir() / relative
    if not path.exists():
        if in_ci():
            pytest.fail(missing_reason(path))
        pytest.skip(missing_reason(path))
    return path


def params_for(relative: str, pattern: str) -> list[object]:
    """pytest params, one per file matching `pattern` in a test-data folder; one skip (or, under CI, one
    failing param) when the folder is absent."""
    folder = models_dir() / relative
    if folder.is_dir():
        return [pytest.param(p, id=p.name) for p in sorted(folder.glob(pattern))]
    return [pytest.param(None, id="missing-test-data")]
