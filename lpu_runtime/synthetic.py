"""Deterministic random weights of a given architecture: no download, same bytes on every machine."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lpu_runtime.config import ModelConfig
from lpu_runtime.model import Checkpoint, LayerWeights


def synthetic_checkpoint(
    config: ModelConfig, seed: int = 0, favoured_token_ids: Iterable[int] | None = None
) -> Checkpoint:
    """Gaussian weights scaled as at initialisation (std 1/sqrt(fan_in)) so activations stay O(1).

    favoured_token_ids: output rows of these tokens get a larger norm and all others a tiny one, so sampling
    almost always picks them (the demo model uses it to write printable text instead of control bytes).
    """
    rng = np.random.default_rng(seed)
    d, kv, f = config.dim, config.kv_dim, config.ffn_dim

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(cols))).astype(
            np.float32
        )

    def norm_weight() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(d, dtype=np.float32)).astype(np.float32)

    layers = tuple(
        LayerWeights(
            attn_norm=norm_weight(),
            wq=mat(d, d),
            wk=mat(kv, d),
            wv=mat(kv, d),
            wo=mat(d, d),
            ffn_norm=norm_weight(),
            w1=mat(f, d),
            w3=mat(f, d),
            w2=mat(d, f),
        )
        for _ in range(config.n_layers)
    )
    embeddings = rng.standard_normal((config.vocab_size, d), dtype=np.float32)  # (vocab, dim)
    output = embeddings if config.tied_embeddings else mat(config.vocab_size, d)
    if favoured_token_ids is not None:
        favoured = np.zeros(config.vocab_size, dtype=bool)
        favoured[list(favoured_token_ids)] = True
        # RMS-normed hidden states have norm ~sqrt(dim): rows of norm 6 give logits of std ~6 for favoured
        # tokens against ~0.01 for the rest, a gap that temperature 1 sampling almost never crosses.
        row_scale = np.where(favoured, 6.0, 0.01).astype(np.float32)
        output = (output / np.linalg.norm(output, axis=1, keepdims=True) * row_scale[:, None]).astype(
            np.float32
        )
        if config.tied_embeddings:
            embeddings = output
    return Checkpoint(config, embeddings, layers, norm_weight(), output)
