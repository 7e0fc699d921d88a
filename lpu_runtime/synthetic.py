"""Deterministic random weights of a given architecture: no download, same bytes on every machine.

Each tensor is drawn from its own generator, seeded by (seed, tensor name), so any tensor can be produced
alone and in any order: a 7B-shaped model is generated tensor by tensor as the pipeline quantizes it,
never held whole in float32.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.config import ModelConfig
from lpu_runtime.model import Checkpoint, tensor_shapes

F32 = NDArray[np.float32]


class SyntheticWeights:
    """Gaussian weights scaled as at initialisation (std 1/sqrt(fan_in)) so activations stay O(1).

    favoured_token_ids: output rows of these tokens get a larger norm and all others a tiny one, so sampling
    almost always picks them (the demo model uses it to write printable text instead of control bytes).
    """

    def __init__(self, config: ModelConfig, seed: int, favoured_token_ids: Iterable[int] | None) -> None:
        self.config = config
        self.seed = seed
        self.shapes = tensor_shapes(config)
        self.favoured: NDArray[np.bool_] | None = None
        if favoured_token_ids is not None:
            self.favoured = np.zeros(config.vocab_size, dtype=bool)
            self.favoured[list(favoured_token_ids)] = True

    def _rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])

    def __call__(self, name: str) -> F32:
        shape = self.shapes[name]
        if self.config.tied_embeddings and name == "tok_embeddings":
            name = "output"
        rng = self._rng(name)
        if name == "output":
            return self._output(rng)
        if name.endswith("norm"):
            return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        if name.endswith(".bias"):
            return (0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        w = rng.standard_normal(shape, dtype=np.float32)
        if name != "tok_embeddings":  # embeddings are looked up, not multiplied: they keep std 1
            w *= np.float32(1.0 / np.sqrt(shape[-1]))
        return w

    def _output(self, rng: np.random.Generator) -> F32:
        vocab, dim = self.config.vocab_size, self.config.dim
        output = rng.standard_normal((vocab, dim), dtype=np.float32)
        if not self.config.tied_embeddings:
            output *= np.float32(1.0 / np.sqrt(dim))
        if self.favoured is not None:
            # RMS-normed hidden states have norm ~sqrt(dim): rows of norm 6 give logits of std ~6 for favoured
            # tokens against ~0.01 for the rest, a gap that temperature 1 sampling almost never crosses.
            row_scale = np.where(self.favoured, 6.0, 0.01).astype(np.float32)
            output = (output / np.linalg.norm(output, axis=1, keepdims=True) * row_scale[:, None]).astype(
                np.float32
            )
        return output


def synthetic_checkpoint(
    config: ModelConfig, seed: int = 0, favoured_token_ids: Iterable[int] | None = None
) -> Checkpoint:
    """Random weights of `config`'s exact shape, generated lazily, one tensor per request."""
    return Checkpoint(
        config, SyntheticWeights(config, seed, favoured_token_ids), f"synthetic:{config.name} (seed {seed})"
    )
