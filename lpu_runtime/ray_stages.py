"""Stage workers as Ray actors: one pipeline spread over the nodes of a Ray cluster.

`lpu serve --distributed-executor ray` builds the executor's `StageRunner` from here. The plan's chips are
grouped into the plan's nodes (`chips_per_node`); every plan node becomes one bundle of a Ray placement group
(strategy SPREAD, so the plan's nodes land on different machines when there are enough), reserving the host
memory its chips' SRAM needs, and one actor in that bundle runs the node's stages one after another, as
`LocalStages` does in one process: a hop through Ray costs milliseconds, so only the plan's node boundaries
pay it, as only the real system's node boundaries pay the slower links. An actor opens the picklable
`CheckpointSource` itself and loads only its own rows (memory-mapped files, or the synthetic seed), so no
process ever holds the whole model. A step is one chain of actor calls: each node's activations go to the
next as an object reference, through Ray's object store, never waited on by the driver, which fetches only
the logits and the cycles. The emulated clock is computed by the same `PipelineExecutor` as in one process,
so the tokens and the emulated timings are the same (tests/unit/test_ray_stages.py).

Not Ray's compiled graphs, though they cut a hop from ~23 to ~1.3 ms here: on a multi-node cluster of CPU
actors (ray.cluster_utils.Cluster, Ray 2.60) a compiled graph timed out on its channel and crashed the raylet
("Check failed" in HandlePushMutableObject); the object store path is what works across nodes.

Ray is an optional extra (`pip install 'lpu-serve[ray]'`): nothing else imports this module.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from numpy.typing import NDArray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from lpu_runtime import native
from lpu_runtime.backend import default_backend
from lpu_runtime.checkpoint_source import CheckpointSource
from lpu_runtime.compiler import ChipPlan, Plan
from lpu_runtime.config import ChipSpec
from lpu_runtime.errors import CompileError, StageUnavailableError
from lpu_runtime.executor import LocalStages
from lpu_runtime.model import TokenBatch

log = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 120.0  # the bundles were checked to fit: a longer wait means the cluster changed
LOAD_TIMEOUT_S = 3600.0  # filling a large model's chips takes minutes per stage
STEP_TIMEOUT_S = 600.0  # a step that takes longer is a hung actor, not a slow one


# -- placement: which plan node goes where, checked before anything loads ---------------------------------


@dataclass(frozen=True)
class NodeMemory:
    """A Ray node and the host memory Ray may schedule on it (its `memory` resource)."""

    node_id: str
    address: str
    memory_bytes: int


def plan_nodes(plan: Plan) -> dict[int, list[int]]:
    """The plan's nodes that hold stages -> those stages, in order (a stage lives where its first chip is)."""
    nodes: dict[int, list[int]] = {}
    for stage in plan.stages:
        nodes.setdefault(stage.chips[0] // plan.system.chips_per_node, []).append(stage.index)
    return nodes


def stage_bytes(plan: Plan, stage: int) -> int:
    """Host memory an actor needs for its chips' SRAM (bytes)."""
    return sum(plan.chip(c).used_bytes for c in plan.stages[stage].chips)


def check_cluster_memory(plan: Plan, nodes: Sequence[NodeMemory]) -> None:
    """Refuses a plan whose nodes cannot all be placed on the cluster's nodes, with the numbers: each plan
    node must fit one Ray node whole (first fit, largest first). Memory is checked per node, never summed
    over the cluster: a stage cannot borrow memory from another machine."""
    needs = {n: sum(stage_bytes(plan, s) for s in stages) for n, stages in plan_nodes(plan).items()}
    free = {node.node_id: node.memory_bytes for node in nodes}
    for n, need in sorted(needs.items(), key=lambda item: -item[1]):
        fits = [node_id for node_id, room in free.items() if room >= need]
        if not fits:
            wanted = ", ".join(f"node {i}: {b / 2**30:,.2f} GiB" for i, b in sorted(needs.items()))
            have = ", ".join(f"{node.address}: {node.memory_bytes / 2**30:,.2f} GiB" for node in nodes)
            raise CompileError(
                f"{plan.model.name}: plan node {n} needs {need / 2**30:,.2f} GiB of host memory for its chips' "
                f"SRAM and no Ray node has that much left (the plan's nodes need {wanted}; the cluster's "
                f"nodes offer {have or 'nothing'}); add nodes or memory, or lower --chips-per-node"
            )
        free[fits[0]] -= need


def cluster_nodes() -> list[NodeMemory]:
    """The cluster's live nodes and their schedulable memory."""
    return [
        NodeMemory(n["NodeID"], n["NodeManagerAddress"], int(n["Resources"].get("memory", 0)))
        for n in ray.nodes()  # type: ignore[no-untyped-call]
        if n["Alive"]
    ]


# -- the actor --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeStep:
    # [stage of this node][micro-batch]: cycles of the stage's busiest chip
    cycles: tuple[tuple[int, ...], ...]
    chip_busy: tuple[int, ...]  # per chip of this node: busy cycles since load
    boot: str  # which incarnation of the actor ran it


class NodeActor:
    """One plan node's stage workers in a Ray worker process (wrapped by `ray.remote` at runtime)."""

    def __init__(self, plan: Plan, stages: Sequence[int], source: CheckpointSource) -> None:
        started = time.monotonic()
        backend = default_backend()
        if native.UNAVAILABLE_REASON is None:
            # Other actors may share this machine's cores, computing one after another: an idle kernel pool
            # that spins would take the cores the computing actor needs.
            native.set_spin_us(0)
        self.stages = LocalStages(plan, source.open(), backend, stages=stages)
        self.load_s = time.monotonic() - started
        self.boot = uuid.uuid4().hex  # a restarted actor has empty KV caches: the driver must notice

    def describe(self) -> dict[str, Any]:
        """Where the actor runs and how its chips were filled (also the readiness probe)."""
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "kernels": self.stages.backend_name,
            "load_s": self.load_s,
            "boot": self.boot,
        }

    @ray.method(num_returns=2)
    def execute(
        self, batch: TokenBatch, x: NDArray[np.float32] | None
    ) -> tuple[NDArray[np.float32], NodeStep]:
        x, cycles = self.stages.run(batch, x)
        return x, NodeStep(tuple(cycles), tuple(chip.busy_cycles for chip in self.stages.chips), self.boot)


@dataclass
class RemoteChip:
    """The driver's view of a chip in an actor, for the engine's stats; busy_cycles follows each step."""

    chip_id: int
    spec: ChipSpec
    plan: ChipPlan
    busy_cycles: int = 0


# -- the runner ------------------------------------------------------------------------------------------


class RayStages:
    """A `StageRunner` (executor.py) whose stages run in one actor per plan node, placed on a Ray cluster."""

    def __init__(self, plan: Plan, source: CheckpointSource, address: str | None = None) -> None:
        if not ray.is_initialized():
            # address None: RAY_ADDRESS if set, else a one-node cluster on this machine
            ray.init(address=address, logging_level=logging.WARNING, configure_logging=False)
        self.plan = plan
        check_cluster_memory(plan, cluster_nodes())
        self.nodes = plan_nodes(plan)  # plan node -> its stages
        needs = [sum(stage_bytes(plan, s) for s in stages) for stages in self.nodes.values()]
        self.group: PlacementGroup = placement_group(
            [{"memory": float(n)} for n in needs],
            strategy="SPREAD",
            name=f"lpu-{plan.model.name}-{os.getpid()}",
        )
        try:
            ray.get(self.group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except GetTimeoutError:
            remove_placement_group(self.group)
            raise CompileError(
                f"{plan.model.name}: the Ray cluster could not place {len(needs)} node bundles in "
                f"{PLACEMENT_TIMEOUT_S:.0f} s (memory already reserved by other jobs?)"
            ) from None
        actor_class = ray.remote(NodeActor)
        self.actors: list[Any] = []
        for bundle, (stages, need) in enumerate(zip(self.nodes.values(), needs, strict=True)):
            options = actor_class.options(
                num_cpus=0,
                memory=need,
                max_restarts=-1,  # a dead node comes back (its chips refilled); its KV cache does not
                max_task_retries=0,  # a step is never replayed on a restarted node: its KV is gone
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.group, placement_group_bundle_index=bundle
                ),
            )
            self.actors.append(options.remote(plan, stages, source))
        self.placement = self._wait_loaded()
        self.backend_name = self.placement[0]["kernels"]  # the kernels the actors run, as in one process
        self._chips = [
            RemoteChip(c, plan.system.chip, plan.chip(c)) for stage in plan.stages for c in stage.chips
        ]

    def _wait_loaded(self) -> list[dict[str, Any]]:
        pending = {actor.describe.remote(): i for i, actor in enumerate(self.actors)}
        described: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise TimeoutError(f"{len(pending)} plan nodes did not load within {LOAD_TIMEOUT_S:.0f} s")
            i = pending.pop(done[0])
            try:
                described[i] = ray.get(done[0])
            except RayActorError as exc:
                self.shutdown()
                raise RuntimeError(f"{self._describe_node(i)} failed to load its chips: {exc}") from None
            log.info(
                "%s loaded on Ray node %s in %.1f s (%s kernels)",
                self._describe_node(i),
                described[i]["node_id"][:12],
                described[i]["load_s"],
                described[i]["kernels"],
            )
        return [described[i] for i in range(len(self.actors))]

    def _describe_node(self, i: int) -> str:
        node, stages = list(self.nodes.items())[i]
        return f"plan node {node} (pipeline stages {stages[0]}-{stages[-1]})"

    @property
    def chips(self) -> list[RemoteChip]:
        return self._chips

    def run(self, batch: TokenBatch) -> tuple[NDArray[np.float32], list[tuple[int, ...]]]:
        batch_ref = ray.put(batch)  # shipped once to every node
        x: Any = None
        steps = []
        for actor in self.actors:
            x, step = actor.execute.remote(batch_ref, x)  # x: an ObjectRef the next node resolves itself
            steps.append(step)
        try:
            logits, *done = ray.get([x, *steps], timeout=STEP_TIMEOUT_S)
        except (RayActorError, GetTimeoutError) as exc:
            raise StageUnavailableError(f"{self._which_failed(steps)} is unavailable: {exc}") from exc
        for i, node_step in enumerate(done):
            if node_step.boot != self.placement[i]["boot"]:
                # Ray restarted it between two steps: the step ran, but on empty KV caches
                raise StageUnavailableError(f"{self._describe_node(i)} restarted and lost its KV cache")
        busy = [b for node_step in done for b in node_step.chip_busy]
        for chip, cycles in zip(self._chips, busy, strict=True):
            chip.busy_cycles = cycles
        return logits, [cycles for node_step in done for cycles in node_step.cycles]

    def _which_failed(self, steps: list[Any]) -> str:
        for i, ref in enumerate(steps):
            try:
                ray.get(ref, timeout=0)
            except (RayActorError, GetTimeoutError):
                return self._describe_node(i)
        return "a plan node"

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether every node answers within timeout_s (a restarted actor answers once its chips are full);
        then each one's current incarnation is the one steps must come from."""
        try:
            self.placement = ray.get([actor.describe.remote() for actor in self.actors], timeout=timeout_s)
        except (RayActorError, GetTimeoutError):
            return False
        return True

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.group)


def ray_stages(source: CheckpointSource, address: str | None) -> Callable[[Plan], RayStages]:
    """The `stages` factory `PipelineExecutor` takes."""
    return lambda plan: RayStages(plan, source, address)
