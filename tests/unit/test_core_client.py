"""The engine process: it serves the same tokens as the in-process loop, and its death fails what is pending."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from lpu_runtime.checkpoint_source import CheckpointSource, WeightFormat
from lpu_runtime.compiler import compile_model
from lpu_runtime.config import SystemSpec
from lpu_runtime.core_client import EngineProcessSpec, InprocCoreClient, ProcessCoreClient
from lpu_runtime.engine import Engine
from lpu_runtime.engine_core import AbortRequest, AddRequest
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.types import EngineCoreOutput, FinishReason, GenerationRequest, SamplingParams

from .tiny_model import TINY, TINY_ENGINE

SOURCE = CheckpointSource(WeightFormat.SYNTHETIC, TINY, seed=1)
PLAN = compile_model(TINY, SystemSpec(2), TINY_ENGINE)
EOS = (2,)


class Collector:
    """What a client's deliver/failed callbacks saw, and a way to wait for it."""

    def __init__(self) -> None:
        self.tokens: dict[str, list[int]] = {}
        self.finished: dict[str, EngineCoreOutput] = {}
        self.failures: list[str] = []
        self._changed = threading.Condition()

    def deliver(self, outputs: list[EngineCoreOutput]) -> None:
        with self._changed:
            for out in outputs:
                self.tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
                if out.finished:
                    self.finished[out.request_id] = out
            self._changed.notify_all()

    def failed(self, reason: str) -> None:
        with self._changed:
            self.failures.append(reason)
            self._changed.notify_all()

    def wait(self, done: object, timeout: float = 60.0) -> None:
        with self._changed:
            assert self._changed.wait_for(done, timeout), "timed out"  # type: ignore[arg-type]


def add(request_id: str, prompt: tuple[int, ...], max_tokens: int) -> AddRequest:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return AddRequest(GenerationRequest(request_id, prompt, params), max_tokens)


@pytest.fixture(scope="module")
def process_client() -> Iterator[ProcessCoreClient]:
    client = ProcessCoreClient(EngineProcessSpec(PLAN, SOURCE, TINY.name, EOS, ()))
    yield client
    client.shutdown()


def test_engine_process_gives_the_in_process_tokens_then_fails_pending_requests_when_killed(
    process_client: ProcessCoreClient,
) -> None:
    prompts = {"a": (1, 72, 105), "b": (1, 5, 6, 7, 8)}
    inproc = InprocCoreClient(Engine(PLAN, PipelineExecutor(PLAN, SOURCE), EOS))
    expected, got = Collector(), Collector()
    inproc.start(expected.deliver, expected.failed)
    process_client.start(got.deliver, got.failed)
    for client in (inproc, process_client):
        for request_id, prompt in prompts.items():
            client.send(add(request_id, prompt, 12))
    for collector in (expected, got):
        collector.wait(lambda c=collector: len(c.finished) == len(prompts))
    inproc.shutdown()
    assert got.tokens == expected.tokens
    assert all(len(t) == 12 for t in got.tokens.values())
    assert process_client.stats().steps > 0 and process_client.stats().running == 0

    # an abort reaches the child and frees the sequence
    process_client.send(add("long", (1, 9), 400))
    process_client.send(AbortRequest("long"))
    got.wait(lambda: "long" in got.finished)
    assert got.finished["long"].finish_reason == FinishReason.ABORT

    # the child dies mid-request: the reader reports it instead of leaving the server waiting forever
    process_client.send(add("orphan", (1, 9), 400))
    got.wait(lambda: "orphan" in got.tokens)
    assert process_client.pid is not None
    os.kill(process_client.pid, signal.SIGKILL)
    got.wait(lambda: bool(got.failures))
    assert "engine process exited" in got.failures[0]
    assert "orphan" not in got.finished


def test_a_checkpoint_that_cannot_load_fails_start_with_the_childs_reason(tmp_path: object) -> None:
    missing = CheckpointSource(WeightFormat.GGUF, TINY, path=f"{tmp_path}/missing.gguf")
    with pytest.raises(RuntimeError, match=r"failed to start: .*missing\.gguf"):
        ProcessCoreClient(EngineProcessSpec(PLAN, missing, TINY.name, EOS, ()))
