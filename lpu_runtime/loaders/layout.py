"""Conversions every non-HuggingFace format needs to reach the one in-memory layout."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]


def rotate_half_order(n_rows: int, n_heads: int) -> NDArray[np.intp]:
    """For each Q or K row in rotate-half RoPE order, the row it is in the interleaved-pair order.

    llama2.c (and llama.cpp's GGUF, which keeps it) rotate pairs (2i, 2i+1) of each head; HuggingFace rotates
    (i, i + head_dim/2). Reordering each head's rows [0, 2, 4, ..., 1, 3, 5, ...] makes the rotate-half
    kernel compute exactly the interleaved rotation, as transformers' convert_llama_weights_to_hf does.
    """
    head_dim = n_rows // n_heads
    order: NDArray[np.intp] = (
        np.arange(n_rows).reshape(n_heads, head_dim // 2, 2).swapaxes(1, 2).reshape(n_rows)
    )
    return order


def interleaved_to_rotate_half(w: F32, n_heads: int) -> F32:
    """Q or K rows (n_heads * head_dim, in) from the interleaved-pair RoPE order to rotate-half."""
    out: F32 = w[rotate_half_order(w.shape[0], n_heads)]
    return out
