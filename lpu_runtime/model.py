"""The Llama decoder, written once over abstract linear and attention ops.

The float32 reference binds the ops to dense numpy matrices; the compiler binds the same code to int8 shards
on emulated chips. This module knows nothing about chips (the compiler is a pass over it, as in gpt-fast).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Generic, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from lpu_runtime.config import ModelConfig
from lpu_runtime.errors import ModelFileError
from lpu_runtime.kernels import RopeTables, causal_attention, rmsnorm, silu

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
A = TypeVar(
    "A"
)  # the form a projection reads its input in: float32 for the reference, int8 + scales on chips


BIASED_NAMES = ("wq", "wk", "wv")  # the projections that carry a bias when ModelConfig.attention_bias


def layer_tensor_shapes(config: ModelConfig, layer: int) -> dict[str, tuple[int, ...]]:
    """One decoder layer's tensors: matrices (out_features, in_features) as in HuggingFace."""
    d, q, kv, f, p = config.dim, config.q_dim, config.kv_dim, config.ffn_dim, f"layers.{layer}"
    shapes: dict[str, tuple[int, ...]] = {
        f"{p}.attn_norm": (d,),
        f"{p}.wq": (q, d),
        f"{p}.wk": (kv, d),
        f"{p}.wv": (kv, d),
        f"{p}.wo": (d, q),
        f"{p}.ffn_norm": (d,),
        f"{p}.w1": (f, d),  # gate
        f"{p}.w3": (f, d),  # up
        f"{p}.w2": (d, f),  # down
    }
    if config.attention_bias:
        shapes.update({f"{p}.wq.bias": (q,), f"{p}.wk.bias": (kv,), f"{p}.wv.bias": (kv,)})
    return shapes


def tensor_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a model by canonical name, in file order (embedding, layers, final norm, LM head)."""
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings": (config.vocab_size, config.dim)}
    for layer in range(config.n_layers):
        shapes.update(layer_tensor_shapes(config, layer))
    shapes["norm"] = (config.dim,)
    shapes["output"] = (config.vocab_size, config.dim)
    return shapes


TensorLoader = Callable[[str], F32]
RowLoader = Callable[[str, int, int], F32]  # (name, start, stop) -> rows [start, stop) of a matrix


@dataclass(frozen=True)
class Checkpoint:
    """A model's weights in float32, whatever format they came from, produced one tensor at a time.

    `loader` maps a canonical name (see `tensor_shapes`) to its float32 array, in HuggingFace layout:
    matrices (out_features, in_features), Q/K rows in rotate-half RoPE order. Loading on demand is what lets
    the pipeline quantize a model larger than host memory tensor by tensor; with tied embeddings "output"
    returns the embedding table.
    """

    config: ModelConfig
    loader: TensorLoader
    origin: str = "in-memory weights"  # the file or origin, named in errors
    # Formats that can produce some rows of a matrix without the rest (GGUF: only those rows' blocks are
    # dequantized); without one, `rows` slices the whole tensor.
    row_loader: RowLoader | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(tensor_shapes(self.config))

    def tensor(self, name: str) -> F32:
        shape = tensor_shapes(self.config).get(name)
        if shape is None:
            raise KeyError(f"{self.config.name} has no tensor {name!r}")
        value = self.loader(name)
        if value.shape != shape or value.dtype != np.float32:
            raise ModelFileError(
                self.origin, f"tensor {name} is {value.dtype} {value.shape}, expected float32 {shape}"
            )
        return value

    def rows(self, name: str, start: int, stop: int) -> F32:
        """Rows [start, stop) of a tensor (the whole vector for a 1-D one): what one stage's chips hold."""
        shape = tensor_shapes(self.config).get(name)
        if self.row_loader is None or shape is None or len(shape) == 1:
            value = self.tensor(name)
            return value if value.ndim == 1 else value[start:stop]
        part = self.row_loader(name, start, stop)
        expected = (len(range(*slice(start, stop).indices(shape[0]))), *shape[1:])
        if part.shape != expected or part.dtype != np.float32:
            raise ModelFileError(
                self.origin,
                f"rows {start}..{stop} of tensor {name} are {part.dtype} {part.shape}, expected float32 {expected}",
            )
        return part

    def open(self) -> Checkpoint:
        """Already open: lets in-process workers take a Checkpoint wherever a CheckpointSource goes."""
        return self

    @classmethod
    def from_arrays(
        cls, config: ModelConfig, arrays: Mapping[str, F32], origin: str = "in-memory weights"
    ) -> Checkpoint:
        missing = [n for n in tensor_shapes(config) if n not in arrays]
        if missing:
            raise ModelFileError(origin, f"misses tensor {missing[0]} ({len(missing)} missing)")
        return cls(config, arrays.__getitem__, origin)

    def materialize(self) -> Checkpoint:
        """Every tensor loaded once and held in memory (for the reference model and small checkpoints)."""
        return Checkpoint.from_arrays(self.config, {n: self.tensor(n) for n in self.names}, self.origin)


@dataclass(frozen=True)
class SeqSlice:
    """One sequence's rows in a flat token batch."""

    row: int  # first row of this sequence in the batch
    n_tokens: int  # rows it has in this step
    start_pos: int  # position of its first row; it attends to positions 0 .. start_pos + n_tokens - 1
    kv_slots: I64  # (start_pos + n_tokens,) KV-cache slot of each position


@dataclass(frozen=True)
class PagedBatch:
    """A step's sequences as flat arrays: what batched attention over a paged KV cache reads."""

    seq_rows: I64  # (n_seqs + 1,) first row of each sequence, then n_tokens
    start_pos: I64  # (n_seqs,) position of each sequence's first row
    slot_offsets: I64  # (n_seqs + 1,) where each sequence's slot table starts in `slots`, then its length
    slots: I64  # (sum of contexts,) KV-cache slot of every position of every sequence
    new_slots: I64  # (n_tokens,) slot of each row: where its k and v are stored


@dataclass(frozen=True)
class TokenBatch:
    """The tokens of one step: sequences laid end to end, as vLLM's flattened batches.

    `micro` splits the sequences into the micro-batches the emulated pipeline runs one behind another:
    micro-batch j holds seqs[micro[j]:micro[j + 1]]. The host computes the step as one batch (every row's
    result is independent of the others'), and each op charges every micro-batch its own cycles.
    """

    token_ids: I64  # (n_tokens,)
    positions: I64  # (n_tokens,)
    seqs: tuple[SeqSlice, ...]
    micro: tuple[int, ...] = ()  # sequence boundaries, from 0 to len(seqs); () is one micro-batch of all

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @cached_property
    def last_rows(self) -> I64:
        """Row of each sequence's last token: the rows whose logits get sampled."""
        return np.array([s.row + s.n_tokens - 1 for s in self.seqs], dtype=np.int64)

    @cached_property
    def micro_bounds(self) -> tuple[int, ...]:
        return self.micro or (0, len(self.seqs))

    @cached_property
    def micro_tokens(self) -> tuple[int, ...]:
        """Tokens of each micro-batch."""
        b = self.micro_bounds
        return tuple(sum(s.n_tokens for s in self.seqs[b[j] : b[j + 1]]) for j in range(len(b) - 1))

    @cached_property
    def micro_seq_counts(self) -> tuple[int, ...]:
        b = self.micro_bounds
        return tuple(b[j + 1] - b[j] for j in range(len(b) - 1))

    @cached_property
    def micro_contexts(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per micro-batch, (new tokens, positions attended) of each sequence: what its attention costs."""
        b = self.micro_bounds
        return tuple(
            tuple((s.n_tokens, len(s.kv_slots)) for s in self.seqs[b[j] : b[j + 1]])
            for j in range(len(b) - 1)
        )

    @cached_property
    def paged(self) -> PagedBatch:
        seq_rows = np.array([*(s.row for s in self.seqs), self.n_tokens], dtype=np.int64)
        lengths = [len(s.kv_slots) for s in self.seqs]
        slot_offsets = np.zeros(len(self.seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=slot_offsets[1:])
        slots = np.concatenate([s.kv_slots for s in self.seqs]) if self.seqs else np.zeros(0, np.int64)
        new = [s.kv_slots[s.start_pos : s.start_pos + s.n_tokens] for s in self.seqs]
        return PagedBatch(
            seq_rows=seq_rows,
            start_pos=np.array([s.start_pos for s in self.seqs], dtype=np.int64),
            slot_offsets=slot_offsets,
            slots=slots.astype(np.int64, copy=False),
            new_slots=np.concatenate(new).astype(np.int64, copy=False) if new else np.zeros(0, np.int64),
        )

    @classmethod
    def single(cls, token_ids: Sequence[int]) -> TokenBatch:
        """A whole prompt as one sequence at position 0, KV slots 0..n-1 (used by the reference and tests)."""
        n = len(token_ids)
        ids = np.asarray(token_ids, dtype=np.int64)
        pos = np.arange(n, dtype=np.int64)
        return cls(ids, pos, (SeqSlice(0, n, 0, pos.copy()),))


class Attention(Protocol):
    def __call__(self, q: F32, k: F32, v: F32, batch: TokenBatch) -> F32:
        """Stores this step's k, v (n_tokens, n_kv_heads, head_dim), attends causally per sequence.

        q: (n_tokens, n_heads, head_dim) -> (n_tokens, n_heads, head_dim) float32.
        """
        ...


@dataclass(frozen=True)
class LayerOps(Generic[A]):
    """One decoder layer's operations. A projection reads its input in form A, which the norms, `act` and
    `swiglu` produce: float32 for the reference, int8 with per-token scales on the chips, so an activation
    is quantized once however many matrices and tensor-parallel ranks read it."""

    attn_norm: Callable[[F32], A]  # RMSNorm of the residual stream, (n_tokens, dim)
    ffn_norm: Callable[[F32], A]
    qkv: Callable[[A], Sequence[F32]]  # wq, wk, wv: three matrices reading one input
    wo: Callable[[A], F32]
    gate_up: Callable[[A], Sequence[F32]]  # w1 (gate) and w3 (up), reading one input
    w2: Callable[[A], F32]
    attention: Attention
    act: Callable[[F32], A]  # the attention output, as wo reads it
    swiglu: Callable[[F32, F32], A]  # silu(gate) * up, as w2 reads it
    rope: Callable[[F32, I64], F32]  # rotary embedding of (n_tokens, heads, head_dim) at the positions


def decoder_layer(x: F32, ops: LayerOps[A], config: ModelConfig, batch: TokenBatch) -> F32:
    """x: (n_tokens, dim) float32 residual stream -> the same after one pre-norm attention + SwiGLU block."""
    n = x.shape[0]
    q, k, v = ops.qkv(ops.attn_norm(x))
    q = ops.rope(q.reshape(n, config.n_heads, config.head_dim), batch.positions)
    k = ops.rope(k.reshape(n, config.n_kv_heads, config.head_dim), batch.positions)
    v = v.reshape(n, config.n_kv_heads, config.head_dim)
    attn = ops.attention(q, k, v, batch).reshape(n, config.q_dim)
    x = x + ops.wo(ops.act(attn))
    gate, up = ops.gate_up(ops.ffn_norm(x))
    return x + ops.w2(ops.swiglu(gate, up))


@dataclass(frozen=True)
class DenseLinear:
    w: F32  # (out_features, in_features) float32
    bias: F32 | None = None  # (out_features,) float32

    def __call__(self, x: F32) -> F32:
        y: F32 = x @ self.w.T
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True)
class DenseLinears:
    """Several dense matrices reading the same input (q/k/v, gate/up)."""

    parts: tuple[DenseLinear, ...]

    def __call__(self, x: F32) -> tuple[F32, ...]:
        """One (n_tokens, out_features) float32 result per matrix."""
        return tuple(part(x) for part in self.parts)


def _unchanged(x: F32) -> F32:
    return x


def _swiglu(gate: F32, up: F32) -> F32:
    return silu(gate) * up


class DenseKVAttention:
    """Float32 KV cache in host memory, indexed by the batch's slots: the reference's attention."""

    def __init__(self, n_slots: int, n_kv_heads: int, head_dim: int) -> None:
        self.k = np.zeros((n_slots, n_kv_heads, head_dim), dtype=np.float32)  # (slots, n_kv, head_dim)
        self.v = np.zeros_like(self.k)

    def __call__(self, q: F32, k: F32, v: F32, batch: TokenBatch) -> F32:
        out = np.empty_like(q)
        for s in batch.seqs:
            rows = slice(s.row, s.row + s.n_tokens)
            new_slots = s.kv_slots[s.start_pos : s.start_pos + s.n_tokens]
            self.k[new_slots] = k[rows]
            self.v[new_slots] = v[rows]
            out[rows] = causal_attention(q[rows], self.k[s.kv_slots], self.v[s.kv_slots], s.start_pos)
        return out


class ReferenceModel:
    """The float32 golden path: dense weights, float32 KV cache, no quantization anywhere."""

    def __init__(self, checkpoint: Checkpoint, kv_slots: int | None = None) -> None:
        cfg = checkpoint.config
        self.config = cfg
        self.rope = RopeTables.for_model(cfg)
        slots = kv_slots if kv_slots is not None else cfg.max_context
        t = checkpoint.tensor
        self.embeddings = t("tok_embeddings")  # (vocab, dim)
        self.norm = t("norm")  # (dim,)
        self.output = t("output")  # (vocab, dim)

        def linear(layer: int, name: str) -> DenseLinear:
            p, biased = f"layers.{layer}", cfg.attention_bias and name in BIASED_NAMES
            return DenseLinear(t(f"{p}.{name}"), t(f"{p}.{name}.bias") if biased else None)

        self.layers = [
            LayerOps[F32](
                attn_norm=partial(rmsnorm, weight=t(f"layers.{i}.attn_norm"), eps=cfg.norm_eps),
                ffn_norm=partial(rmsnorm, weight=t(f"layers.{i}.ffn_norm"), eps=cfg.norm_eps),
                qkv=DenseLinears((linear(i, "wq"), linear(i, "wk"), linear(i, "wv"))),
                wo=linear(i, "wo"),
                gate_up=DenseLinears((linear(i, "w1"), linear(i, "w3"))),
                w2=linear(i, "w2"),
                attention=DenseKVAttention(slots, cfg.n_kv_heads, cfg.head_dim),
                act=_unchanged,
                swiglu=_swiglu,
                rope=self.rope.apply,
            )
            for i in range(cfg.n_layers)
        ]

    def forward(self, batch: TokenBatch, all_rows: bool = False) -> F32:
        """Logits (n_seqs, vocab) at each sequence's last token, or (n_tokens, vocab) with all_rows."""
        cfg = self.config
        x = self.embeddings[batch.token_ids]  # (n_tokens, dim)
        for ops in self.layers:
            x = decoder_layer(x, ops, cfg, batch)
        rows = x if all_rows else x[batch.last_rows]
        h = rmsnorm(rows, self.norm, cfg.norm_eps)
        logits: F32 = h @ self.output.T
        return logits
