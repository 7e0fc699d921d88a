"""The Llama decoder, written once over abstract linear and attention ops.

The float32 reference binds the ops to dense numpy matrices; the compiler binds the same code to int8 shards
on emulated chips. This module knows nothing about chips (the compiler is a pass over it, as in gpt-fast).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
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
    """One decoder layer's tensors: matrices (out_features, in_features) as in HuggingFace.

    A mixture-of-experts layer has a router (n_experts, dim) and its experts' matrices stacked: expert e's
    rows of w1, w3 at e * ffn_dim ..., of w2 at e * dim ..., so a chip holding whole experts, or a slice of
    one, holds one contiguous range of rows."""
    d, q, kv, f, p = config.dim, config.q_dim, config.kv_dim, config.ffn_dim, f"layers.{layer}"
    e = config.n_experts
    shapes: dict[str, tuple[int, ...]] = {
        f"{p}.attn_norm": (d,),
        f"{p}.wq": (q, d),
        f"{p}.wk": (kv, d),
        f"{p}.wv": (kv, d),
        f"{p}.wo": (d, q),
        f"{p}.ffn_norm": (d,),
        **({f"{p}.router": (e, d)} if config.is_moe else {}),
        f"{p}.w1": (e * f, d),  # gate
        f"{p}.w3": (e * f, d),  # up
        f"{p}.w2": (e * d, f),  # down
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

    def subset(self, keep: Sequence[int]) -> TokenBatch:
        """The sequences `keep` (ascending indices) as a batch of their own: rows renumbered, each micro-batch
        keeping its kept sequences (a micro-batch left empty is dropped)."""
        chosen = [self.seqs[i] for i in keep]
        rows = (
            np.concatenate([np.arange(s.row, s.row + s.n_tokens) for s in chosen])
            if chosen
            else np.zeros(0, np.int64)
        )
        seqs, row = [], 0
        for s in chosen:
            seqs.append(replace(s, row=row))
            row += s.n_tokens
        b, micro = self.micro_bounds, [0]
        for j in range(len(b) - 1):
            kept = sum(1 for i in keep if b[j] <= i < b[j + 1])
            if kept:
                micro.append(micro[-1] + kept)
        return TokenBatch(self.token_ids[rows], self.positions[rows], tuple(seqs), tuple(micro))

    @classmethod
    def single(cls, token_ids: Sequence[int]) -> TokenBatch:
        """A whole prompt as one sequence at position 0, KV slots 0..n-1 (used by the reference and tests)."""
        n = len(token_ids)
        ids = np.asarray(token_ids, dtype=np.int64)
        pos = np.arange(n, dtype=np.int64)
        return cls(ids, pos, (SeqSlice(0, n, 0, pos.copy()),))


@dataclass(frozen=True)
class Routing:
    """Which experts each token of a step goes to, and with what weight."""

    experts: I64  # (n_tokens, k) the chosen experts, highest logit first
    weights: F32  # (n_tokens, k) float32 gate weights, summing to 1 per token
    n_experts: int

    @cached_property
    def order(self) -> I64:
        """(n_tokens * k,) token-expert pairs (index t * k + slot) grouped by expert, tokens ascending: the
        order experts compute their rows in."""
        order: I64 = np.argsort(self.experts.ravel(), kind="stable")
        return order

    @cached_property
    def bounds(self) -> I64:
        """(n_experts + 1,) where each expert's pairs start in `order`."""
        counts = np.bincount(self.experts.ravel(), minlength=self.n_experts)
        bounds = np.zeros(self.n_experts + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        return bounds

    def tokens_of(self, expert: int) -> I64:
        """Rows routed to `expert`, ascending."""
        k = self.experts.shape[1]
        tokens: I64 = self.order[self.bounds[expert] : self.bounds[expert + 1]] // k
        return tokens


def route(logits: F32, k: int) -> Routing:
    """Mixtral's router: each token's k highest logits (ties to the lower expert), weighted by a softmax over
    those k (equal to Mixtral's softmax over all experts renormalised over the chosen ones).

    logits: (n_tokens, n_experts) float32. Row by row, so a token routes alike batched or alone, on any chip.
    """
    experts = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # (n_tokens, k)
    top = np.take_along_axis(logits, experts, axis=1)
    w = np.exp(top - top[:, :1])
    return Routing(
        experts.astype(np.int64), (w / w.sum(axis=1, keepdims=True)).astype(np.float32), logits.shape[1]
    )


def combine(routing: Routing, outputs: F32) -> F32:
    """outputs: (n_tokens * k, dim) each pair's expert output in `routing.order`; returns (n_tokens, dim), the
    weighted sum over each token's experts in slot order, so every split sums the same values the same way."""
    n, k = routing.experts.shape
    by_pair = np.empty_like(outputs)
    by_pair[routing.order] = outputs
    y = by_pair.reshape(n, k, -1)
    out: F32 = y[:, 0] * routing.weights[:, :1]
    for slot in range(1, k):
        out = out + y[:, slot] * routing.weights[:, slot : slot + 1]
    return out


class Attention(Protocol):
    def __call__(self, q: F32, k: F32, v: F32, batch: TokenBatch) -> F32:
        """Stores this step's k, v (n_tokens, n_kv_heads, head_dim), attends causally per sequence.

        q: (n_tokens, n_heads, head_dim) -> (n_tokens, n_heads, head_dim) float32.
        """
        ...


@dataclass(frozen=True)
class DenseFFN(Generic[A]):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    gate_up: Callable[[A], Sequence[F32]]  # w1 (gate) and w3 (up), reading one input
    swiglu: Callable[[F32, F32], A]  # silu(gate) * up, as w2 reads it
    w2: Callable[[A], F32]

    def __call__(self, x: A) -> F32:
        gate, up = self.gate_up(x)
        return self.w2(self.swiglu(gate, up))


@dataclass(frozen=True)
class MoEFFN(Generic[A]):
    """A mixture of SwiGLU experts: the router picks k per token, only those experts run, their outputs are
    summed with the router's weights."""

    router: Callable[[A], F32]  # (n_tokens, n_experts) logits
    experts: Callable[[A, Routing], F32]  # every routed pair's expert output, (n_tokens * k, dim) in order
    k: int

    def __call__(self, x: A) -> F32:
        routing = route(self.router(x), self.k)
        return combine(routing, self.experts(x, routing))


@dataclass(frozen=True)
class LayerOps(Generic[A]):
    """One decoder layer's operations. A projection reads its input in form A, which the norms, `act` and
    the FFN's gating produce: float32 for the reference, int8 with per-token scales on the chips, so an
    activation is quantized once however many matrices and tensor-parallel ranks read it."""

    attn_norm: Callable[[F32], A]  # RMSNorm of the residual stream, (n_tokens, dim)
    ffn_norm: Callable[[F32], A]
    qkv: Callable[[A], Sequence[F32]]  # wq, wk, wv: three matrices reading one input
    wo: Callable[[A], F32]
    ffn: Callable[[A], F32]  # DenseFFN or MoEFFN: (n_tokens, dim)
    attention: Attention
    act: Callable[[F32], A]  # the attention output, as wo reads it
    # rotary embedding of q (n_tokens, n_heads, head_dim) and of k (n_tokens, n_kv_heads, head_dim): two ops,
    # since a chip holds different numbers of query and KV heads
    rope_q: Callable[[F32, I64], F32]
    rope_k: Callable[[F32, I64], F32]
    add: Callable[[F32, F32], F32]  # a residual add (after attention and after the FFN)


def decoder_layer(x: F32, ops: LayerOps[A], config: ModelConfig, batch: TokenBatch) -> F32:
    """x: (n_tokens, dim) float32 residual stream -> the same after one pre-norm attention + FFN block."""
    n = x.shape[0]
    q, k, v = ops.qkv(ops.attn_norm(x))
    q = ops.rope_q(q.reshape(n, config.n_heads, config.head_dim), batch.positions)
    k = ops.rope_k(k.reshape(n, config.n_kv_heads, config.head_dim), batch.positions)
    v = v.reshape(n, config.n_kv_heads, config.head_dim)
    attn = ops.attention(q, k, v, batch).reshape(n, config.q_dim)
    x = ops.add(x, ops.wo(ops.act(attn)))
    return ops.add(x, ops.ffn(ops.ffn_norm(x)))


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


def residual_add(x: F32, y: F32) -> F32:
    out: F32 = x + y
    return out


@dataclass(frozen=True)
class DenseExperts:
    """Every expert's float32 SwiGLU over the rows routed to it: the reference's MoE experts."""

    w1: F32  # (n_experts * ffn_dim, dim) float32, expert-stacked
    w3: F32  # (n_experts * ffn_dim, dim)
    w2: F32  # (n_experts * dim, ffn_dim)

    def __call__(self, x: F32, routing: Routing) -> F32:
        f, d = self.w2.shape[1], self.w2.shape[0] // routing.n_experts
        outs = []
        for e in range(routing.n_experts):
            xe = x[routing.tokens_of(e)]
            if len(xe):
                gate, up = xe @ self.w1[e * f : (e + 1) * f].T, xe @ self.w3[e * f : (e + 1) * f].T
                outs.append(_swiglu(gate, up) @ self.w2[e * d : (e + 1) * d].T)
        return np.concatenate(outs) if outs else np.zeros((0, d), dtype=np.float32)


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

        def ffn(layer: int) -> Callable[[F32], F32]:
            if cfg.is_moe:
                p = f"layers.{layer}"
                experts = DenseExperts(t(f"{p}.w1"), t(f"{p}.w3"), t(f"{p}.w2"))
                return MoEFFN[F32](linear(layer, "router"), experts, cfg.n_experts_per_token)
            return DenseFFN[F32](
                DenseLinears((linear(layer, "w1"), linear(layer, "w3"))), _swiglu, linear(layer, "w2")
            )

        self.layers = [
            LayerOps[F32](
                attn_norm=partial(rmsnorm, weight=t(f"layers.{i}.attn_norm"), eps=cfg.norm_eps),
                ffn_norm=partial(rmsnorm, weight=t(f"layers.{i}.ffn_norm"), eps=cfg.norm_eps),
                qkv=DenseLinears((linear(i, "wq"), linear(i, "wk"), linear(i, "wv"))),
                wo=linear(i, "wo"),
                ffn=ffn(i),
                attention=DenseKVAttention(slots, cfg.n_kv_heads, cfg.head_dim),
                act=_unchanged,
                rope_q=self.rope.apply,
                rope_k=self.rope.apply,
                add=residual_add,
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
