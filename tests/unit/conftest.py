from __future__ import annotations

import pytest

from lpu_runtime.model import Checkpoint
from lpu_runtime.synthetic import synthetic_checkpoint

from .tiny_model import TINY


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Checkpoint:
    return synthetic_checkpoint(TINY, seed=1)
