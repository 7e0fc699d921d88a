"""Chip-to-chip links: activations are copied into the receiving chips' SRAM and the hop is charged."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.chip import Chip
from lpu_runtime.compiler import Plan


def send_activations(
    plan: Plan, src: Chip, dsts: list[Chip], x: NDArray[np.float32]
) -> tuple[NDArray[np.float32], int]:
    """x: (n_tokens, dim) float32 from `src` to every chip of the next stage, over parallel links.

    Returns the copy resident in the first receiver's `act_in` buffer and the transfer's cycles.
    """
    n = x.shape[0]
    for dst in dsts:
        dst.tensor("act_in")[:n] = x
    cycles = max(plan.hop_cycles(src.chip_id, dst.chip_id, x.nbytes) for dst in dsts)
    landed: NDArray[np.float32] = dsts[0].tensor("act_in")[:n]
    return landed, cycles
