"""Chip-to-chip links: activations arriving at a stage are copied into its chips' SRAM before it computes.

What a transfer costs on the emulated clock is `Plan.transfer_cycles` (hops x latency + bytes / link
bandwidth); the pipeline executor places it on its timeline between the two stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.chip import Chip


def deliver(x: NDArray[np.float32], chips: Sequence[Chip]) -> NDArray[np.float32]:
    """x: (n_tokens, dim) float32 into every receiving chip's `act_in` buffer, over parallel links.

    Returns the copy resident in the first receiver's SRAM, which the stage computes from.
    """
    n = x.shape[0]
    for chip in chips:
        chip.tensor("act_in")[:n] = x
    landed: NDArray[np.float32] = chips[0].tensor("act_in")[:n]
    return landed
