"""What every test runs under: no model is ever fetched from the network."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lpu_runtime.loaders.wheel_models import CACHE_ENV


@pytest.fixture(autouse=True, scope="session")
def no_model_downloads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """An empty model cache of the session's own and a pip that sees no index: a test that resolves the
    PyPI-packaged default model without seeding a cache fails at once instead of downloading it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("lpu-cache")))
        patch.setenv("PIP_NO_INDEX", "1")
        patch.setenv("PIP_CONFIG_FILE", os.devnull)
        yield
