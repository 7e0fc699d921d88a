"""The float32 reference against a float64 transcription of the Llama equations written head by head, so the
decoder's reshapes are checked by code that shares none of them: for heads of dim / n_heads and for heads set
apart from it (q_dim != dim, as Mistral-Nemo)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from lpu_runtime.config import ModelConfig
from lpu_runtime.model import Checkpoint, ReferenceModel, TokenBatch
from lpu_runtime.synthetic import synthetic_checkpoint

from .tiny_model import TINY, TINY_HEAD_DIM, TINY_MOE

F64 = NDArray[np.float64]


def naive_last_logits(checkpoint: Checkpoint, tokens: list[int]) -> F64:
    """Logits (vocab,) at the last token: one head at a time, Q/K rows in rotate-half order."""
    cfg = checkpoint.config

    def t(name: str) -> F64:
        return checkpoint.tensor(name).astype(np.float64)

    def norm(x: F64, w: F64) -> F64:
        out: F64 = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps) * w
        return out

    n, hd, group = len(tokens), cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
    angles = np.outer(np.arange(n), cfg.rope_theta ** -(np.arange(0, hd, 2) / hd))  # (n, hd / 2)
    cos, sin = np.cos(angles), np.sin(angles)

    def rope(x: F64) -> F64:  # (n, hd): pairs (i, i + hd / 2)
        a, b = x[:, : hd // 2], x[:, hd // 2 :]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=1)

    def swiglu(h: F64, w1: F64, w3: F64, w2: F64) -> F64:
        gate = h @ w1.T
        out: F64 = (gate / (1 + np.exp(-gate)) * (h @ w3.T)) @ w2.T
        return out

    def moe(h: F64, p: str) -> F64:  # token by token: its top-k experts, softmax-weighted
        f, d, out = cfg.ffn_dim, cfg.dim, np.zeros_like(h)
        for i, logits in enumerate(h @ t(f"{p}.router").T):
            top = np.argsort(-logits, kind="stable")[: cfg.n_experts_per_token]
            weights = np.exp(logits[top] - logits[top].max())
            for e, w in zip(top, weights / weights.sum(), strict=True):
                rows, cols = slice(e * f, (e + 1) * f), slice(e * d, (e + 1) * d)
                out[i] += (
                    w * swiglu(h[i : i + 1], t(f"{p}.w1")[rows], t(f"{p}.w3")[rows], t(f"{p}.w2")[cols])[0]
                )
        return out

    mask = np.triu(np.full((n, n), -np.inf), 1)
    x = t("tok_embeddings")[tokens]
    for layer in range(cfg.n_layers):
        p = f"layers.{layer}"
        h = norm(x, t(f"{p}.attn_norm"))
        q, k, v = h @ t(f"{p}.wq").T, h @ t(f"{p}.wk").T, h @ t(f"{p}.wv").T
        heads = []
        for j in range(cfg.n_heads):
            kv = slice(j // group * hd, (j // group + 1) * hd)
            scores = rope(q[:, j * hd : (j + 1) * hd]) @ rope(k[:, kv]).T / np.sqrt(hd) + mask
            probs = np.exp(scores - scores.max(axis=1, keepdims=True))
            heads.append(probs / probs.sum(axis=1, keepdims=True) @ v[:, kv])
        x = x + np.concatenate(heads, axis=1) @ t(f"{p}.wo").T  # (n, q_dim) @ (q_dim, dim)
        h = norm(x, t(f"{p}.ffn_norm"))
        x = x + (moe(h, p) if cfg.is_moe else swiglu(h, t(f"{p}.w1"), t(f"{p}.w3"), t(f"{p}.w2")))
    logits: F64 = norm(x[-1], t("norm")) @ t("output").T
    return logits


@pytest.mark.parametrize("model", [TINY, TINY_HEAD_DIM, TINY_MOE], ids=["tiny", "head-dim-24", "moe"])
def test_reference_matches_a_head_by_head_float64_transcription(model: ModelConfig) -> None:
    checkpoint = synthetic_checkpoint(model, seed=2)
    reference = ReferenceModel(checkpoint)
    rng = np.random.default_rng(5)
    for n in (1, 9, 40):
        tokens = rng.integers(0, model.vocab_size, n).tolist()
        got = reference.forward(TokenBatch.single(tokens))[0]
        want = naive_last_logits(checkpoint, tokens)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def _config(dim: int, n_heads: int, head_dim: int = 0) -> ModelConfig:
    return ModelConfig(
        "m", dim, n_layers=1, n_heads=n_heads, n_kv_heads=2, ffn_dim=8, vocab_size=8, head_dim=head_dim
    )


def test_head_dim_is_resolved_and_validated() -> None:
    given = _config(64, 4, head_dim=16)
    assert given == _config(64, 4)  # stored resolved: the same model either way
    assert (given.head_dim, given.q_dim, given.kv_dim) == (16, 64, 32)
    assert (TINY_HEAD_DIM.q_dim, TINY_HEAD_DIM.kv_dim) == (96, 48)
    # wq, wo (64 x 96 each), wk, wv (48 x 64 each), the FFN, two norms a layer; embeddings, final norm
    assert (
        TINY_HEAD_DIM.n_params == 3 * (2 * 64 * 96 + 2 * 64 * 48 + 3 * 64 * 160 + 2 * 64) + 2 * 259 * 64 + 64
    )
    assert _config(60, 8, head_dim=8).q_dim == 64  # with head_dim given, dim need not divide by the heads
    with pytest.raises(ValueError, match="dim 60 not divisible by n_heads 8"):
        _config(60, 8)
    with pytest.raises(ValueError, match="head_dim 7 must be even"):
        _config(64, 4, head_dim=7)
    with pytest.raises(ValueError, match="head_dim -8 must be positive"):
        _config(64, 4, head_dim=-8)
