"""A Mixtral-style mixture of experts served over HTTP on emulated chips, its prompts prefilled on an emulated
H100 server and decoded on the LPU chips: x_lpu reports both phases, with the figures `lpu plan` gives."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lpu_runtime import MODEL_PRESETS
from tests.e2e.support import CHIPS, REPO_ROOT, Server, running_server

# On CHIPS (4) chips every layer holds all 8 experts on one chip, so a decoding token's two experts are the
# planner's balanced load; on wider groups routing can put both on one chip, which the plan does not assume.
MODEL = "synthetic:tiny-mixtral"


@pytest.fixture(scope="module")
def moe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = ["--model", MODEL, "--prefill-on", "h100"]
    with running_server(tmp_path_factory.mktemp("moe"), MODEL, extra) as running:
        yield running


def _plan(prompt: int) -> dict[str, Any]:
    """`lpu plan` for the served system, as a user would ask it."""
    argv = [sys.executable, "-m", "server", "plan", "--model", "tiny-mixtral", "--chips", str(CHIPS)]
    argv += ["--prefill-on", "h100", "--prompt", str(prompt), "--format", "json"]
    out = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120)
    plan: dict[str, Any] = json.loads(out.stdout)
    return plan


def test_a_mixture_of_experts_decodes_on_the_lpus_after_a_gpu_prefill(moe_server: Server) -> None:
    prompt, tokens = "Once upon a time", 9
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    reply = httpx.post(f"{moe_server.base_url}/v1/completions", json=body, timeout=120).json()
    assert reply["usage"]["completion_tokens"] == tokens, reply
    x = reply["x_lpu"]
    n_prompt = reply["usage"]["prompt_tokens"]
    plan = _plan(n_prompt)
    assert MODEL_PRESETS["tiny-mixtral"].n_experts == plan["model"]["experts"] == 8
    prefill, lpu = plan["prefill"], plan["lpu"]
    assert x["prefill_on"] == prefill["server"] == "8 x H100-SXM5-80GB"
    assert x["chips"] == lpu["chips_used"] and x["pipeline_stages"] == lpu["stages"]
    # the first token from the GPUs, alone on an idle system: the plan's time to first token
    assert x["emulated_prompt_time"] == pytest.approx(prefill["ttft_s"], abs=1e-6)  # JSON keeps 6 decimals
    # then the prompt's KV to the LPUs, and one decode step per token on them: the plan's speed per user
    assert x["emulated_kv_transfer_time"] == pytest.approx(prefill["kv_transfer_s"], abs=1e-6)
    decode = (x["emulated_completion_time"] - x["emulated_kv_transfer_time"]) / (tokens - 1)
    per_user = lpu["speed"]["per_user_tokens_per_s"]
    assert 1 / decode == pytest.approx(per_user, rel=1e-3)
