"""The native kernels against the numpy reference, through the whole emulated pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from lpu_runtime import native
from lpu_runtime.backend import NumpyBackend, backend_named
from lpu_runtime.compiler import compile_model
from lpu_runtime.config import SystemSpec
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.model import Checkpoint, SeqSlice, TokenBatch

from .tiny_model import TINY, TINY_ENGINE

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason=native.UNAVAILABLE_REASON or "")


def test_native_and_numpy_backends_agree_to_float32_rounding(tiny_checkpoint: Checkpoint) -> None:
    """Both compute the same exact int32 sums; only the float32 norms, SiLU and softmax round differently."""
    plan = compile_model(TINY, SystemSpec(2), TINY_ENGINE)
    pipes = [
        PipelineExecutor(plan, tiny_checkpoint, backend)
        for backend in (NumpyBackend(), backend_named("native"))
    ]
    rng = np.random.default_rng(5)
    for n in (1, 7, 40):
        prompt = rng.integers(0, TINY.vocab_size, n).tolist()
        ref, got = (p.execute(TokenBatch.single(prompt)).logits for p in pipes)
        assert float(np.max(np.abs(got - ref))) < 1e-3 * float(np.max(np.abs(ref)))
        # and a decode step on top of the prefill each wrote into its own KV cache
        token = int(np.argmax(ref[0]))
        assert token == int(np.argmax(got[0]))
        step = TokenBatch(
            np.array([token]), np.array([n]), (SeqSlice(0, 1, n, np.arange(n + 1, dtype=np.int64)),)
        )
        ref, got = (p.execute(step).logits for p in pipes)
        assert float(np.max(np.abs(got - ref))) < 1e-3 * float(np.max(np.abs(ref)))
