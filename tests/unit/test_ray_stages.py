"""Stage workers on a real two-node Ray cluster (ray.cluster_utils.Cluster on 127.0.0.1): the same tokens and
the same emulated timings as one process, stages on different nodes, per-node memory checked before anything
loads, and a stage that dies fails the step and comes back."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from lpu_runtime.catalog import load_model
from lpu_runtime.checkpoint_source import CheckpointSource, WeightFormat
from lpu_runtime.compiler import compile_model
from lpu_runtime.config import DEMO_MODEL, MODEL_PRESETS, SystemSpec
from lpu_runtime.engine import Engine
from lpu_runtime.errors import CompileError
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.tokenizer import encode_prompt
from lpu_runtime.types import FinishReason, GenerationRequest, SamplingParams
from tests.e2e.support import CHIPS, running_server
from tests.shared_models import in_ci

from .tiny_model import TINY, TINY_ENGINE

try:
    import ray
    from ray.cluster_utils import Cluster
    from ray.exceptions import RayActorError

    from lpu_runtime.ray_stages import NodeMemory, RayStages, check_cluster_memory, ray_stages
except ImportError:  # Ray is an optional extra
    if in_ci():
        raise
    pytest.skip("Ray is not installed: pip install 'lpu-serve[ray]'", allow_module_level=True)

SOURCE = CheckpointSource(WeightFormat.SYNTHETIC, TINY, seed=3)
# 4 chips, 2 per node: two plan nodes, two stages each
PLAN = compile_model(TINY, SystemSpec(4, chips_per_node=2), TINY_ENGINE)
NODE_MEMORY = 4 * 2**30  # bytes of Ray `memory` resource per test node (logical: nothing is allocated)
EOS = (2,)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "memory": NODE_MEMORY, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, memory=NODE_MEMORY)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    yield cluster
    ray.shutdown()
    cluster.shutdown()  # type: ignore[no-untyped-call]


def generate(engine: Engine, prompts: dict[str, tuple[int, ...]], max_tokens: int) -> dict[str, Any]:
    """Greedy tokens and the emulated cycles each token left the pipeline, per request."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for request_id, prompt in prompts.items():
        engine.add(engine.make_sequence(GenerationRequest(request_id, prompt, params)))
    tokens: dict[str, list[int]] = {r: [] for r in prompts}
    cycles: dict[str, list[tuple[int, int]]] = {r: [] for r in prompts}
    while engine.has_work():
        for out in engine.step():
            assert out.error is None, out.error
            tokens[out.request_id].extend(out.new_token_ids)
            cycles[out.request_id].append((out.prompt_cycles, out.completion_cycles))
    return {"tokens": tokens, "cycles": cycles, "emulated_cycles": engine.stats().emulated_cycles}


def test_ray_stages_match_one_process_land_on_both_nodes_and_recover_from_a_dead_stage(cluster: Any) -> None:
    prompts = {"a": (1, 72, 101, 108), "b": (1, 5, 6, 7, 8, 9, 10), "c": (1, 33)}
    local = generate(Engine(PLAN, PipelineExecutor(PLAN, SOURCE), EOS), prompts, 10)
    executor = PipelineExecutor(PLAN, SOURCE, stages=ray_stages(SOURCE, None))
    stages = executor.stages
    assert isinstance(stages, RayStages)
    try:
        assert len({actor["node_id"] for actor in stages.placement}) == 2, stages.placement
        distributed = generate(Engine(PLAN, executor, EOS), prompts, 10)
        assert distributed == local  # bit-identical tokens, the same emulated clock
        assert sum(chip.busy_cycles for chip in executor.chips) > 0

        # a node's process dies mid-request: every running request fails with the node named (its KV cache is
        # gone), the engine reports itself unavailable, and the actor restarts with its chips refilled
        engine = Engine(PLAN, executor, EOS)
        params = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)
        for request_id in ("d", "f"):
            engine.add(engine.make_sequence(GenerationRequest(request_id, (1, 40), params)))
        engine.step()
        os.kill(stages.placement[1]["pid"], signal.SIGKILL)
        # Ray restarts it before the next step (the worst case: the step itself would succeed, on empty KV)
        restarted = None
        while restarted is None or restarted["pid"] == stages.placement[1]["pid"]:
            with contextlib.suppress(RayActorError):
                restarted = ray.get(stages.actors[1].describe.remote(), timeout=120)
        failed = engine.step()
        assert {o.request_id for o in failed} == {"d", "f"}
        assert all(o.finish_reason is FinishReason.ERROR and "plan node 1" in (o.error or "") for o in failed)
        assert not engine.has_work() and engine.stats().unavailable is not None
        assert engine.recover(timeout_s=120) and engine.stats().unavailable is None
        again = generate(Engine(PLAN, PipelineExecutor(PLAN, SOURCE), EOS), {"e": (1, 50, 51)}, 6)
        after = generate(Engine(PLAN, executor, EOS), {"e": (1, 50, 51)}, 6)
        assert after["tokens"] == again["tokens"]
    finally:
        executor.shutdown()


def test_a_plan_too_big_for_any_one_node_is_refused_before_loading(cluster: Any) -> None:
    """Together the two nodes could hold it; no single node can hold a plan node, so it is refused."""
    big = compile_model(MODEL_PRESETS["llama-3.2-1b"], SystemSpec(36, chips_per_node=36), None, 1024)
    need = sum(c.used_bytes for c in big.chips)
    assert NODE_MEMORY < need < 2 * NODE_MEMORY
    source = CheckpointSource(WeightFormat.SYNTHETIC, big.model, seed=0)
    with pytest.raises(CompileError, match=r"plan node 0 needs .* GiB .* no Ray node has that much"):
        RayStages(big, source)


def test_memory_is_checked_per_node_not_summed() -> None:
    nodes = [NodeMemory("a", "10.0.0.1", 3 * 2**20), NodeMemory("b", "10.0.0.2", 3 * 2**20)]
    per_plan_node = [
        sum(PLAN.chip(c).used_bytes for c in (0, 1)),
        sum(PLAN.chip(c).used_bytes for c in (2, 3)),
    ]
    assert max(per_plan_node) < 3 * 2**20  # each fits a node of its own...
    check_cluster_memory(PLAN, nodes)
    one_big = [NodeMemory("a", "10.0.0.1", int(np.sum(per_plan_node)) - 1)]  # ...but not both on one node
    with pytest.raises(CompileError, match=r"10\.0\.0\.1"):
        check_cluster_memory(PLAN, one_big)


def test_lpu_serve_on_ray_answers_as_one_process(cluster: Any, tmp_path: Path) -> None:
    """`lpu serve --distributed-executor ray`: the server's engine process joins the cluster, its two plan
    nodes become actors, and a greedy completion is the single-process executor's, token for token."""
    args = ["--distributed-executor", "ray", "--ray-address", cluster.address, "--chips-per-node", "2"]
    with running_server(tmp_path, DEMO_MODEL.name, ["--model", DEMO_MODEL.name, *args]) as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
        got = client.completions.create(
            model=DEMO_MODEL.name, prompt="Once upon", max_tokens=12, temperature=0
        )
        assert "plan node 1" in server.log_tail()  # the engine process placed both nodes as actors

        # a node's actor dies between requests: the next request fails with an OpenAI-shaped error (its step
        # ran on a restarted actor's empty KV cache, or on none), counted as an error; the server serves again
        # once Ray has restarted the actor, with the same answer
        actors = node_actor_pids()
        assert len(actors) == 2, actors
        os.kill(actors[-1], signal.SIGKILL)
        with pytest.raises(openai.APIStatusError) as failed:  # (the SDK would retry it: not here)
            client.with_options(max_retries=0).completions.create(
                model=DEMO_MODEL.name, prompt="Once upon", max_tokens=12, temperature=0
            )
        assert failed.value.status_code in (500, 503)
        deadline = time.monotonic() + 120
        while httpx.get(f"{server.base_url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)
        assert server.scrape()[("lpu_requests_finished_total", frozenset({("finish_reason", "error")}))] >= 1
        again = client.completions.create(
            model=DEMO_MODEL.name, prompt="Once upon", max_tokens=12, temperature=0
        )
        assert again.choices[0].text == got.choices[0].text
    loaded = load_model(DEMO_MODEL.name)
    plan = compile_model(loaded.config, SystemSpec(CHIPS, chips_per_node=2))
    prompt = tuple(encode_prompt(loaded.tokenizer, "Once upon"))
    local = generate(Engine(plan, PipelineExecutor(plan, loaded.source), ()), {"x": prompt}, 12)
    assert got.choices[0].text == loaded.tokenizer.decode(local["tokens"]["x"])


def node_actor_pids() -> list[int]:
    """The processes Ray runs `NodeActor`s in (Ray titles a worker process after its actor class)."""
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and b"NodeActor" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
    return sorted(pids)
