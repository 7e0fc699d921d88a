"""A response's `usage` and `x_lpu` from its choices' final outputs, streamed or not."""

from __future__ import annotations

from collections.abc import Sequence

from lpu_runtime import RequestOutput
from server.protocol import LpuInfo, Usage


def usage_of(finals: Sequence[RequestOutput]) -> Usage:
    """The prompt once, every choice's tokens, the slowest choice's times."""
    output = max(finals, key=lambda f: f.host.total_time)
    host = output.host
    completion = sum(f.completion_tokens for f in finals)
    return Usage(
        prompt_tokens=output.prompt_tokens,
        completion_tokens=completion,
        total_tokens=output.prompt_tokens + completion,
        queue_time=host.queue_time,
        prompt_time=host.prompt_time,
        completion_time=host.completion_time,
        total_time=host.total_time,
    )


def lpu_info_of(finals: Sequence[RequestOutput]) -> LpuInfo:
    """The emulated figures of the choice that took longest on the simulated clock."""
    output = max(finals, key=lambda f: f.emulated.prompt_time + f.emulated.completion_time)
    emulated = output.emulated
    return LpuInfo(
        emulated_prompt_time=emulated.prompt_time,
        emulated_completion_time=emulated.completion_time,
        emulated_tokens_per_second=output.emulated_tokens_per_second,
        chips=emulated.n_chips,
        pipeline_stages=emulated.n_stages,
        prefill_on=emulated.prefill_on,
        emulated_kv_transfer_time=emulated.kv_transfer_time,
    )
