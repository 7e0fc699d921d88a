"""Float32 kernels shared by the reference forward and the emulated chips: RMSNorm, RoPE, SiLU, attention."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.config import ModelConfig, RopeScaling


def rmsnorm(x: NDArray[np.float32], weight: NDArray[np.float32], eps: float) -> NDArray[np.float32]:
    """x: (n_tokens, dim) float32, weight: (dim,) float32."""
    ms = np.mean(np.square(x), axis=-1, keepdims=True, dtype=np.float32)  # (n_tokens, 1)
    return (x / np.sqrt(ms + np.float32(eps)) * weight).astype(np.float32, copy=False)


def silu(x: NDArray[np.float32]) -> NDArray[np.float32]:
    return (x / (np.float32(1.0) + np.exp(-x))).astype(np.float32, copy=False)


def scaled_inv_freq(inv_freq: NDArray[np.float64], scaling: RopeScaling) -> NDArray[np.float64]:
    """RoPE frequencies (head_dim/2,) after context extension, as transformers' `_compute_*_parameters`."""
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    # llama3: wavelengths longer than the pre-training context / low_freq_factor are stretched by `factor`,
    # those shorter than context / high_freq_factor are kept, and the band between is interpolated.
    wavelen = 2 * np.pi / inv_freq
    low_wavelen = scaling.original_max_context / scaling.low_freq_factor
    high_wavelen = scaling.original_max_context / scaling.high_freq_factor
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)


@dataclass(frozen=True)
class RopeTables:
    """Rotary embedding in the rotate-half layout (HuggingFace Llama): pairs (i, i + head_dim/2)."""

    cos: NDArray[np.float32]  # (max_context, head_dim / 2) float32
    sin: NDArray[np.float32]  # (max_context, head_dim / 2) float32

    @classmethod
    def build(
        cls, head_dim: int, max_context: int, theta: float, scaling: RopeScaling | None = None
    ) -> RopeTables:
        inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))  # (head_dim/2,)
        if scaling is not None:
            inv_freq = scaled_inv_freq(inv_freq, scaling)
        angles = np.outer(np.arange(max_context, dtype=np.float64), inv_freq)  # (max_context, head_dim/2)
        return cls(np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32))

    @classmethod
    def for_model(cls, config: ModelConfig) -> RopeTables:
        return cls.build(config.head_dim, config.max_context, config.rope_theta, config.rope_scaling)

    def apply(self, x: NDArray[np.float32], positions: NDArray[np.int64]) -> NDArray[np.float32]:
        """x: (n_tokens, n_heads, head_dim) float32; positions: (n_tokens,) int64."""
        half = x.shape[-1] // 2
        cos = self.cos[positions][:, None, :]  # (n_tokens, 1, head_dim/2)
        sin = self.sin[positions][:, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def causal_attention(
    q: NDArray[np.float32],
    k: NDArray[np.float32],
    v: NDArray[np.float32],
    q_start: int,
) -> NDArray[np.float32]:
    """Grouped-query causal attention for one sequence.

    q: (n_new, n_heads, head_dim) for positions q_start .. q_start + n_new - 1;
    k, v: (n_ctx, n_kv_heads, head_dim) for positions 0 .. n_ctx - 1 (n_ctx = q_start + n_new).
    Returns (n_new, n_heads, head_dim) float32. Each KV head's group is an independent batch entry, so
    computing a subset of heads (as a chip of a tensor-parallel group does) gives bit-identical results.
    """
    n_new, n_heads, head_dim = q.shape
    n_ctx, n_kv, _ = k.shape
    group = n_heads // n_kv
    # (n_kv, group * n_new, head_dim): rows of one KV head's group share that head's keys.
    qg = q.reshape(n_new, n_kv, group, head_dim).transpose(1, 2, 0, 3).reshape(n_kv, group * n_new, head_dim)
    kt = k.transpose(1, 2, 0)  # (n_kv, head_dim, n_ctx)
    scores = np.matmul(qg, kt) * np.float32(1.0 / np.sqrt(head_dim))  # (n_kv, group * n_new, n_ctx)
    if n_new > 1:  # a single decode token sees every cached position: nothing to mask
        q_pos = np.tile(np.arange(q_start, q_start + n_new), group)  # (group * n_new,)
        mask = np.arange(n_ctx)[None, :] > q_pos[:, None]  # (group * n_new, n_ctx) True = future
        scores = np.where(mask[None], np.float32(-np.inf), scores)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    out: NDArray[np.float32] = np.matmul(probs, v.transpose(1, 0, 2))  # (n_kv, group * n_new, head_dim)
    return out.reshape(n_kv, group, n_new, head_dim).transpose(2, 0, 1, 3).reshape(n_new, n_heads, head_dim)
