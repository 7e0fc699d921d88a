"""Progress of filling the chips: a live line on a terminal, a few log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from lpu_runtime.executor import LoadStep

log = logging.getLogger(__name__)

TERMINAL_INTERVAL_S = 0.1  # seconds between redraws of the live line
LOG_EVERY = 0.25  # fraction of tensors between log lines when not on a terminal


class LoadProgress:
    """Called by the pipeline after each tensor: bytes read, tensors quantized, chips filled."""

    def __init__(self, model: str, stream: TextIO | None = None) -> None:
        self.model = model
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.bytes_read = 0  # bytes of float32 weights read
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._next_log = LOG_EVERY

    def line(self, step: LoadStep) -> str:
        return (
            f"loading {self.model}: {self.bytes_read / 1e6:,.1f} MB read, {step.tensors_done}/{step.tensors_total} "
            f"tensors quantized, {step.chips_filled}/{step.chips_total} chips filled "
            f"({time.monotonic() - self.started:.1f} s)"
        )

    def __call__(self, step: LoadStep) -> None:
        self.bytes_read += step.nbytes
        done = step.tensors_done == step.tensors_total
        if self.live:
            now = time.monotonic()
            if done or now - self._last_draw >= TERMINAL_INTERVAL_S:
                self._last_draw = now
                self.stream.write("\r\033[K" + self.line(step) + ("\n" if done else ""))
                self.stream.flush()
        elif done or step.tensors_done / step.tensors_total >= self._next_log:
            self._next_log += LOG_EVERY
            log.info("%s", self.line(step))
