"""Runs shared by the pipeline tests: a prompt's prefill, then greedy decode steps, on any executor."""

from __future__ import annotations

import numpy as np

from lpu_runtime.executor import PipelineExecutor
from lpu_runtime.model import ReferenceModel, SeqSlice, TokenBatch


def run_prefill_and_decode(pipe: PipelineExecutor, prompt: list[int], steps: int) -> list[np.ndarray]:
    """Prefill then greedy decode, returning every step's logits (one row each)."""
    logits = pipe.execute(TokenBatch.single(prompt)).logits
    out = [logits[0]]
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(int(np.argmax(out[-1])))
        pos = len(tokens) - 1
        batch = TokenBatch(
            np.array([tokens[-1]]),
            np.array([pos]),
            (SeqSlice(0, 1, pos, np.arange(pos + 1, dtype=np.int64)),),
        )
        out.append(pipe.execute(batch).logits[0])
    return out


def errors_against_reference(
    pipe: PipelineExecutor, reference: ReferenceModel, n_prompts: int, max_len: int, seed: int = 11
) -> tuple[list[float], int]:
    """Random prompts' last-token logits on the chips against the float32 reference: each prompt's relative
    RMS error, and on how many the argmax agrees."""
    rng = np.random.default_rng(seed)
    rels, agree = [], 0
    for _ in range(n_prompts):
        prompt = rng.integers(0, reference.config.vocab_size, rng.integers(1, max_len)).tolist()
        got = pipe.execute(TokenBatch.single(prompt)).logits
        want = reference.forward(TokenBatch.single(prompt))
        rels.append(float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2))))
        agree += int(np.argmax(got) == np.argmax(want))
    return rels, agree
