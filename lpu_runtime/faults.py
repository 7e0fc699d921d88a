"""Test-only fault injection: make the engine fail for real, in the process it runs in, without mocks.

`LPU_INJECT_FAULT=forward:258` makes the forward pass raise whenever a step computes token 258 (the demo
vocabulary's `<pad>`, which no text encodes to); `LPU_INJECT_FAULT=step:258` raises in the engine step after
the forward pass, where no request is to blame, so the step loop itself dies. The variable is read where the
executor and the engine are built, so it reaches the engine process too; unset, nothing is checked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

ENV = "LPU_INJECT_FAULT"
Where = Literal["forward", "step"]


class InjectedFault(RuntimeError):
    """The failure `LPU_INJECT_FAULT` asked for."""


@dataclass(frozen=True)
class Fault:
    where: Where
    token_id: int

    def check(self, where: Where, token_ids: NDArray[np.int64]) -> None:
        if where == self.where and bool(np.any(token_ids == self.token_id)):
            raise InjectedFault(f"injected {where} fault: the step computes token {self.token_id}")


def fault_from_env(env: Mapping[str, str] | None = None) -> Fault | None:
    value = (os.environ if env is None else env).get(ENV)
    if not value:
        return None
    where, _, token = value.partition(":")
    if where not in ("forward", "step") or not token.isdigit():
        raise ValueError(f"{ENV} must be forward:<token id> or step:<token id>, got {value!r}")
    return Fault(where, int(token))  # type: ignore[arg-type]  # checked just above
