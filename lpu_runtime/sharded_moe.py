"""A mixture-of-experts FFN on the chips of one tensor-parallel group: experts placed whole (or in slices).

The compiler gives each chip of a w-chip group whole experts while w <= n_experts, else a slice of one expert
shared by w / n_experts chips (`sharding.expert_shard`). Every chip holds the router. A step runs as the
hardware would: the router's logits pick each token's experts (`model.route`), and only the experts a token
chose run, each on the rows routed to it, reading only its own weights from the chips holding it; a split
expert's gate/up and down slices are gathered inside its chips. The outputs are combined in each token's slot
order (`model.combine`), so one chip and any split give bit-identical results.

Each chip is charged, per micro-batch, what it computed: `perfmodel.moe_ffn_cycles` for the experts it holds
and the tokens routed to them (the router, each touched expert, the combine gather). The planner charges the
same function with balanced routing, so for a batch-1 decode on whole experts (each chip's busiest case is one
token on one expert) the emulated clock and the planner agree to the cycle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from lpu_runtime import perfmodel
from lpu_runtime.backend import KernelBackend, QuantizedActs
from lpu_runtime.chip import Chip
from lpu_runtime.config import ModelConfig
from lpu_runtime.model import Routing
from lpu_runtime.sharding import expert_shard

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]


class ShardedRouter:
    """The router's logits: every chip holds it and computes them (charged with the experts); the host
    computes them once, on the first chip."""

    def __init__(self, chips: Sequence[Chip], name: str) -> None:
        self.lead, self.name = chips[0], name
        self.lead.prepare_linear((name,))

    def __call__(self, x: QuantizedActs) -> F32:
        out = np.empty(
            (x.n_tokens, self.lead.tensor(self.name).shape[0]), np.float32
        )  # (n_tokens, n_experts)
        self.lead.run(x, (self.name,), [out])
        return out


class ShardedExperts:
    """The experts of one MoE layer over a group of chips; returns each routed pair's output in routing order."""

    def __init__(
        self,
        chips: Sequence[Chip],
        layer: int,
        config: ModelConfig,
        backend: KernelBackend,
        place: perfmodel.Placement,
    ) -> None:
        self.chips, self.config, self.backend, self.place = list(chips), config, backend, place
        self.width = len(chips)
        p = f"layers.{layer}"
        self.gate_up, self.down = (f"{p}.w1", f"{p}.w3"), (f"{p}.w2",)
        self.shards = [expert_shard(config, self.width, rank) for rank in range(self.width)]
        # holders[e]: (chip, its ffn columns, its dim columns) for every chip holding rows of expert e
        self.holders: list[list[tuple[Chip, tuple[int, int], tuple[int, int]]]] = [
            [] for _ in range(config.n_experts)
        ]
        for chip, shard in zip(self.chips, self.shards, strict=True):
            for e in range(*shard.experts):
                local = e - shard.experts[0]  # whole experts sit one after another; a slice is alone
                n_ffn, n_dim = shard.ffn_rows[1] - shard.ffn_rows[0], shard.dim_rows[1] - shard.dim_rows[0]
                chip.prepare_linear(self.gate_up, (local * n_ffn, (local + 1) * n_ffn), (*self.gate_up, e))
                chip.prepare_linear(self.down, (local * n_dim, (local + 1) * n_dim), (*self.down, e))
                self.holders[e].append((chip, shard.ffn_rows, shard.dim_rows))
        assert all(self.holders), f"{config.name}: every expert must be placed"

    def __call__(self, x: QuantizedActs, routing: Routing) -> F32:
        self._charge(routing)
        f, d = self.config.ffn_dim, self.config.dim
        out = np.empty((len(routing.order), d), dtype=np.float32)  # (n_tokens * k, dim) in routing order
        for e, holders in enumerate(self.holders):
            lo, hi = int(routing.bounds[e]), int(routing.bounds[e + 1])
            if lo == hi:
                continue  # no token chose it: its weights are never read
            rows = routing.tokens_of(e)
            xe = QuantizedActs(x.q[rows], x.scale[rows])
            gate, up = np.empty((hi - lo, f), np.float32), np.empty((hi - lo, f), np.float32)
            for chip, (a, b), _ in holders:  # each holder its rows of gate and up, gathered in place
                chip.run(xe, (*self.gate_up, e), [gate[:, a:b], up[:, a:b]])
            h = self.backend.silu_mul_quantize(gate, up)
            for chip, _, (a, b) in holders:
                chip.run(h, (*self.down, e), [out[lo:hi, a:b]])
        return out

    def _charge(self, routing: Routing) -> None:
        """Each chip, each micro-batch: the router, its touched experts over their tokens, its combine."""
        lead = self.chips[0]
        ends = np.cumsum(lead.micro_tokens)  # row where each micro-batch ends
        spec, config = lead.spec, self.config
        for rank, (chip, shard) in enumerate(zip(self.chips, self.shards, strict=True)):
            counts = [
                np.bincount(np.searchsorted(ends, routing.tokens_of(e), side="right"), minlength=len(ends))
                for e in range(*shard.experts)
            ]  # [local expert][micro-batch] tokens
            chip.charge(
                [
                    perfmodel.moe_ffn_cycles(
                        spec,
                        config,
                        n,
                        self.width,
                        perfmodel.ExpertLoad(tuple(int(c[j]) for c in counts if c[j])),
                        rank,
                        self.place,
                    )
                    for j, n in enumerate(lead.micro_tokens)
                ]
            )
