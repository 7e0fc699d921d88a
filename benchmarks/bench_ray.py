"""What the Ray executor costs per token: the same engine steps with the stage workers in one process and as
Ray actors on a two-node cluster (ray.cluster_utils.Cluster on 127.0.0.1, or `--address` of a real one).

Both executors run the same greedy requests on the same plan; the table gives the median host time per
engine step (one token for every stream) and the difference, which is the Ray hops' cost: one actor call per
plan node, activations through the object store, logits and cycles back to the driver. The tokens and emulated
cycles are checked equal on the way (they must be: only the host transport differs).

    .venv/bin/python benchmarks/bench_ray.py                      # the demo model, 8 chips over 2 nodes
    .venv/bin/python benchmarks/bench_ray.py --model synthetic:tinyllama-1.1b --chips 16 --json ray.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.cluster_utils import Cluster

from lpu_runtime.catalog import load_model
from lpu_runtime.compiler import compile_model
from lpu_runtime.config import DEMO_MODEL, EngineConfig, SystemSpec
from lpu_runtime.engine import Engine
from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.ray_stages import plan_nodes, ray_stages
from lpu_runtime.types import GenerationRequest, SamplingParams


def decode(engine: Engine, streams: int, tokens: int) -> tuple[list[float], dict[str, list[int]]]:
    """Host seconds of each pure-decode step (after every prompt is in), and the tokens per request."""
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    for i in range(streams):
        engine.add(engine.make_sequence(GenerationRequest(f"s{i}", (1, 10 + i, 20 + i, 30 + i), params)))
    out: dict[str, list[int]] = {f"s{i}": [] for i in range(streams)}
    step_s: list[float] = []
    while engine.has_work():
        decoding = all(len(t) > 0 for t in out.values())
        started = time.perf_counter()
        outputs = engine.step()
        if decoding:
            step_s.append(time.perf_counter() - started)
        for o in outputs:
            out[o.request_id].extend(o.new_token_ids)
    return step_s, out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEMO_MODEL.name)
    parser.add_argument("--chips", type=int, default=8)
    parser.add_argument("--chips-per-node", type=int, default=4, help="plan nodes: chips / this (default 4)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--address", help="a running Ray cluster (default: two local nodes)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    loaded = load_model(args.model)
    system = SystemSpec(args.chips, chips_per_node=args.chips_per_node)
    plan = compile_model(loaded.config, system, EngineConfig(max_num_seqs=max(args.streams)))
    cluster = None
    address = args.address
    if address is None:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        address = cluster.address
    ray.init(address=address, logging_level=logging.WARNING)
    eos = tuple(loaded.tokenizer.eos_ids)
    local = PipelineExecutor(plan, loaded.source)
    remote = PipelineExecutor(plan, loaded.source, stages=ray_stages(loaded.source, None))
    remote_nodes = plan_nodes(plan)  # one actor, one hop, per plan node
    rows: list[dict[str, Any]] = []
    try:
        for streams in args.streams:
            local_s, local_tokens = decode(Engine(plan, local, eos), streams, args.tokens)
            ray_s, ray_tokens = decode(Engine(plan, remote, eos), streams, args.tokens)
            if ray_tokens != local_tokens:
                raise SystemExit("the Ray executor's tokens differ from the single-process executor's")
            a, b = statistics.median(local_s) * 1e3, statistics.median(ray_s) * 1e3
            rows.append(
                {
                    "streams": streams,
                    "steps": len(ray_s),
                    "local_ms_per_step": a,
                    "ray_ms_per_step": b,
                    "ray_cost_ms_per_step": b - a,
                    "ray_cost_ms_per_hop": (b - a) / len(remote_nodes),
                    "local_tok_s": streams / a * 1e3,
                    "ray_tok_s": streams / b * 1e3,
                }
            )
    finally:
        remote.shutdown()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()  # type: ignore[no-untyped-call]

    print(
        f"{loaded.name} on {plan.n_chips_used} chips, {len(plan.stages)} stages, {system.n_nodes} plan nodes"
    )
    print(
        "| streams | 1 process ms/step | Ray ms/step | Ray cost ms/step | per node hop | tok/s 1 proc | tok/s Ray |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['streams']} | {r['local_ms_per_step']:.2f} | {r['ray_ms_per_step']:.2f} | "
            f"{r['ray_cost_ms_per_step']:.2f} | {r['ray_cost_ms_per_hop']:.2f} | {r['local_tok_s']:.0f} | "
            f"{r['ray_tok_s']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"model": loaded.name, "chips": plan.n_chips_used, "stages": len(plan.stages), "rows": rows},
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
