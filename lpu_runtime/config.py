"""Frozen configuration for the emulated hardware, the model architecture and the engine.

Every figure carries its unit in the name or the comment; every default is overridable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1024 * 1024


@dataclass(frozen=True)
class ChipSpec:
    """One LPU chip. Defaults are GroqChip1 (Groq's ISCA 2022 paper and product brief)."""

    name: str = "GroqChip1"
    sram_bytes: int = 230_686_720  # bytes; 220 MiB of on-die SRAM, no HBM
    clock_hz: int = 900_000_000  # Hz
    int8_ops_per_s: float = 750e12  # ops/s (a multiply-add is 2 ops)
    fp16_flops_per_s: float = 188e12  # flop/s
    fp8_flops_per_s: float = 0.0  # flop/s; 0: the chip has no FP8 matrix units (GroqChip1)
    sram_bandwidth_bytes_per_s: float = 80e12  # bytes/s, aggregate on-die
    n_links: int = 16  # chip-to-chip links
    link_bandwidth_bytes_per_s: float = 14e9  # bytes/s per link per direction
    hop_latency_ns: float = 2761.4  # ns per chip-to-chip hop, fitted (the link itself is far quicker)
    # The two fitted parameters of the performance model (docs/perfmodel.md has the fit and its data):
    op_latency_cycles: int = 1212  # cycles of fixed latency per dependent op, fitted
    # Fraction of SRAM bandwidth a GEMM streams weights at: every fit to published speeds drove it to 1.
    weight_stream_efficiency: float = 1.0
    sram_alignment_bytes: int = 64  # bytes; every SRAM allocation starts on this boundary
    # The weights' format: "int8", or "fp8" where the chip has FP8 matrix units. Both are one byte per weight
    # with a scale per output row, so placement is the same; a GEMM's arithmetic runs at that format's peak,
    # and the emulator computes in that format (fp8: E4M3, `fp8.py`).
    weights: str = "int8"

    def __post_init__(self) -> None:
        for name in ("sram_bytes", "clock_hz", "n_links", "sram_alignment_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ChipSpec.{name} must be positive, got {getattr(self, name)}")
        for name in (
            "int8_ops_per_s",
            "fp16_flops_per_s",
            "sram_bandwidth_bytes_per_s",
            "link_bandwidth_bytes_per_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"ChipSpec.{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.weight_stream_efficiency <= 1:
            raise ValueError(
                f"ChipSpec.weight_stream_efficiency must be in (0, 1], got {self.weight_stream_efficiency}"
            )
        if self.hop_latency_ns < 0 or self.op_latency_cycles < 0:
            raise ValueError("ChipSpec latencies must not be negative")
        if self.fp8_flops_per_s < 0:
            raise ValueError(f"ChipSpec.fp8_flops_per_s must not be negative, got {self.fp8_flops_per_s}")
        if self.weights not in ("int8", "fp8"):
            raise ValueError(f"ChipSpec.weights must be int8 or fp8, got {self.weights!r}")
        if self.weights == "fp8" and not self.fp8_flops_per_s:
            raise ValueError(f"{self.name} has no FP8 matrix units (fp8_flops_per_s is 0): use int8 weights")

    @property
    def matmul_ops_per_s(self) -> float:
        """The peak a GEMM over this chip's weights runs at (ops/s, a multiply-add is 2)."""
        return self.fp8_flops_per_s if self.weights == "fp8" else self.int8_ops_per_s

    def cycles(self, seconds: float) -> int:
        """Seconds -> whole cycles, rounded up so no cost is ever free."""
        return max(0, -int(-seconds * self.clock_hz // 1))

    def seconds(self, cycles: int) -> float:
        return cycles / self.clock_hz


@dataclass(frozen=True)
class SystemSpec:
    """A set of identical chips wired into one synchronous system."""

    n_chips: int = 4
    chip: ChipSpec = field(default_factory=ChipSpec)
    chips_per_node: int = 8

    def __post_init__(self) -> None:
        if self.n_chips < 1:
            raise ValueError(f"SystemSpec.n_chips must be at least 1, got {self.n_chips}")
        if self.chips_per_node < 1:
            raise ValueError(f"SystemSpec.chips_per_node must be at least 1, got {self.chips_per_node}")

    @property
    def n_nodes(self) -> int:
        return -(-self.n_chips // self.chips_per_node)

    @property
    def total_sram_bytes(self) -> int:
        return self.n_chips * self.chip.sram_bytes


@dataclass(frozen=True)
class RopeScaling:
    """Context extension of RoPE frequencies, as HuggingFace's `rope_scaling` (types "linear" and "llama3")."""

    kind: str  # "linear": every frequency / factor; "llama3": low frequencies / factor, smooth in between
    factor: float
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_context: int = 8192  # tokens; llama3 only: the context the model was pre-trained at

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "llama3"):
            raise ValueError(f"RoPE scaling type {self.kind!r} is not supported (linear, llama3)")
        if self.factor <= 0 or self.low_freq_factor <= 0 or self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"RoPE scaling {self.kind!r}: factors must be positive and high > low")


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-family decoder (Llama 2/3, Mistral, TinyLlama, SmolLM...)."""

    name: str
    dim: int  # hidden size
    n_layers: int
    n_heads: int
    n_kv_heads: int  # < n_heads means grouped-query attention
    ffn_dim: int  # SwiGLU hidden size
    vocab_size: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_context: int = 2048  # tokens
    tied_embeddings: bool = False
    description: str = ""
    attention_bias: bool = False  # q, k and v projections carry biases (Qwen2)
    rope_scaling: RopeScaling | None = None
    n_experts: int = 1  # > 1: a mixture-of-experts FFN (Mixtral): ffn_dim is one expert's
    n_experts_per_token: int = 1  # experts each token is routed to
    # Width of one attention head; 0 (not given): dim // n_heads. Some models set it apart from dim
    # (Mistral-Nemo: dim 5120, 32 heads of 128), so q and the attention output are q_dim wide, not dim.
    head_dim: int = 0

    def __post_init__(self) -> None:
        if min(self.dim, self.n_layers, self.n_heads, self.n_kv_heads, self.ffn_dim, self.vocab_size) <= 0:
            raise ValueError(f"ModelConfig {self.name!r}: every size must be positive")
        if self.head_dim < 0:
            raise ValueError(f"ModelConfig {self.name!r}: head_dim {self.head_dim} must be positive")
        if self.head_dim == 0:
            if self.dim % self.n_heads:
                raise ValueError(
                    f"ModelConfig {self.name!r}: dim {self.dim} not divisible by n_heads {self.n_heads} "
                    "(give head_dim)"
                )
            # Stored resolved, so a config given head_dim == dim // n_heads equals one that was not.
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig {self.name!r}: n_heads {self.n_heads} not divisible by n_kv_heads {self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig {self.name!r}: head_dim {self.head_dim} must be even for RoPE")
        if not 1 <= self.n_experts_per_token <= self.n_experts:
            raise ValueError(
                f"ModelConfig {self.name!r}: n_experts_per_token {self.n_experts_per_token} must be in "
                f"1..n_experts ({self.n_experts})"
            )

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 1

    @property
    def q_dim(self) -> int:
        """Width of the queries and of the attention output (o_proj's input): dim unless head_dim is set apart."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_params(self) -> int:
        per_layer = (
            self.dim * self.q_dim * 2  # wq, wo
            + self.dim * self.kv_dim * 2  # wk, wv
            + self.dim * self.ffn_dim * 3 * self.n_experts  # w1, w2, w3 of every expert
            + (self.n_experts * self.dim if self.is_moe else 0)  # the router
            + self.dim * 2  # two RMSNorm weights
            + (self.q_dim + 2 * self.kv_dim if self.attention_bias else 0)
        )
        embeddings = self.vocab_size * self.dim * (1 if self.tied_embeddings else 2)
        return per_layer * self.n_layers + embeddings + self.dim


# The embedded default: small enough that one stream decodes at 100+ tokens/s on a 2-core CPU in pure numpy,
# large enough (8 layers, GQA) that sharding it over several chips is a real pipeline. Its weights are random:
# the name says so, so nobody mistakes its text for a trained model's.
DEMO_MODEL = ModelConfig(
    name="lpu-demo-untrained-13m",
    dim=384,
    n_layers=8,
    n_heads=6,
    n_kv_heads=2,
    ffn_dim=1024,
    vocab_size=259,  # 256 bytes + <s>, </s>, <pad>
    max_context=2048,
    tied_embeddings=False,
    description=(
        "Untrained synthetic Llama-architecture model (13M params, seeded random weights, byte-level tokenizer). "
        "Its text is noise: it exists to exercise the emulated LPU end to end without a download."
    ),
)

MODEL_PRESETS: dict[str, ModelConfig] = {
    DEMO_MODEL.name: DEMO_MODEL,
    "tinyllama-1.1b": ModelConfig(
        name="tinyllama-1.1b", dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632,
        vocab_size=32000, max_context=2048,
    ),
    "llama-3.2-1b": ModelConfig(
        name="llama-3.2-1b", dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
        vocab_size=128256, rope_theta=500000.0, max_context=131072, tied_embeddings=True,
    ),
    "llama-2-7b": ModelConfig(
        name="llama-2-7b", dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
        vocab_size=32000, max_context=4096,
    ),
    "llama-2-13b": ModelConfig(
        name="llama-2-13b", dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, ffn_dim=13824,
        vocab_size=32000, max_context=4096,
    ),
    "llama-2-70b": ModelConfig(
        name="llama-2-70b", dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672,
        vocab_size=32000, max_context=4096,
    ),
    "llama-3-8b": ModelConfig(
        name="llama-3-8b", dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
        vocab_size=128256, rope_theta=500000.0, max_context=8192,
    ),
    "llama-3-70b": ModelConfig(
        name="llama-3-70b", dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672,
        vocab_size=128256, rope_theta=500000.0, max_context=8192,
    ),
    "llama-3.1-8b": ModelConfig(
        name="llama-3.1-8b", dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
        vocab_size=128256, rope_theta=500000.0, max_context=131072,
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192),
    ),
    "llama-3.3-70b": ModelConfig(
        name="llama-3.3-70b", dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672,
        vocab_size=128256, rope_theta=500000.0, max_context=131072,
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192),
    ),
    "llama-3.1-405b": ModelConfig(
        name="llama-3.1-405b", dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, ffn_dim=53248,
        vocab_size=128256, rope_theta=500000.0, max_context=131072,
        rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192),
    ),
    "mixtral-8x7b": ModelConfig(
        name="mixtral-8x7b", dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
        vocab_size=32000, rope_theta=1e6, max_context=32768, n_experts=8, n_experts_per_token=2,
    ),
    # The shapes of models served with other layer details (Gemma 2: GeGLU, soft-capping, sliding-window layers;
    # gpt-oss: attention sinks and biases, sliding-window layers, MXFP4 experts). The planner sizes and times
    # them as Llama-family decoders of these shapes with full attention in every layer, which over-counts
    # their KV cache.
    "gemma-2-9b": ModelConfig(
        name="gemma-2-9b", dim=3584, n_layers=42, n_heads=16, n_kv_heads=8, head_dim=256, ffn_dim=14336,
        vocab_size=256000, max_context=8192, tied_embeddings=True,
    ),
    "gpt-oss-20b": ModelConfig(
        name="gpt-oss-20b", dim=2880, n_layers=24, n_heads=64, n_kv_heads=8, head_dim=64, ffn_dim=2880,
        vocab_size=201088, rope_theta=150000.0, max_context=131072, n_experts=32, n_experts_per_token=4,
    ),
    "gpt-oss-120b": ModelConfig(
        name="gpt-oss-120b", dim=2880, n_layers=36, n_heads=64, n_kv_heads=8, head_dim=64, ffn_dim=2880,
        vocab_size=201088, rope_theta=150000.0, max_context=131072, n_experts=128, n_experts_per_token=4,
    ),
    # Mixtral's shape family (8 experts, top 2, 8 KV heads, its vocabulary) at 29M parameters, to serve a
    # mixture of experts on emulated chips here: `lpu serve --model synthetic:tiny-mixtral`.
    "tiny-mixtral": ModelConfig(
        name="tiny-mixtral", dim=256, n_layers=4, n_heads=8, n_kv_heads=8, ffn_dim=512,
        vocab_size=32000, rope_theta=1e6, max_context=4096, n_experts=8, n_experts_per_token=2,
    ),
}  # fmt: skip


def model_preset(name: str) -> ModelConfig:
    try:
        return MODEL_PRESETS[name.lower()]
    except KeyError:
        known = ", ".join(sorted(MODEL_PRESETS))
        raise KeyError(f"unknown model preset {name!r}; known presets: {known}") from None


@dataclass(frozen=True)
class EngineConfig:
    """How the engine schedules work on the compiled system."""

    max_num_seqs: int = 32  # sequences in one running batch
    max_num_batched_tokens: int = 512  # tokens per step; longer prompts are prefilled in chunks
    kv_block_tokens: int = 16  # tokens per KV-cache block
    max_kv_tokens: int | None = None  # cap on KV tokens reserved per chip; None: max_num_seqs x max_context
    seed: int = 0  # seed of the synthetic weights
    # Prefill-decode disaggregation: prompts run on this GPU server preset (hardware.GPU_PRESETS: "h100",
    # "h200"), timed by the GPU model, their KV moved to the LPU chips, which decode. None: all on the LPU.
    prefill_on: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "kv_block_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_kv_tokens is not None and self.max_kv_tokens < self.kv_block_tokens:
            raise ValueError("EngineConfig.max_kv_tokens must hold at least one KV block")
