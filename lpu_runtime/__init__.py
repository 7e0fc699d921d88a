"""The emulated multi-chip LPU: compiler, chips, pipeline, engine. Never imports web libraries."""

from lpu_runtime.async_engine import AsyncEngine
from lpu_runtime.catalog import can_serve, compile_plan, model_config
from lpu_runtime.compiler import Plan, compile_model
from lpu_runtime.config import DEMO_MODEL, MODEL_PRESETS, ChipSpec, EngineConfig, ModelConfig, SystemSpec
from lpu_runtime.errors import (
    ChatTemplateError,
    CompileError,
    ContextLengthExceededError,
    EngineDeadError,
    InvalidRequestError,
    LpuError,
    SramOverflowError,
)
from lpu_runtime.types import (
    ChipStats,
    EmulatedTimings,
    EngineStats,
    FinishReason,
    GenerationRequest,
    HostTimings,
    ModelInfo,
    RequestOutput,
    SamplingParams,
)

__all__ = [
    "DEMO_MODEL",
    "MODEL_PRESETS",
    "AsyncEngine",
    "ChatTemplateError",
    "ChipSpec",
    "ChipStats",
    "CompileError",
    "ContextLengthExceededError",
    "EmulatedTimings",
    "EngineConfig",
    "EngineDeadError",
    "EngineStats",
    "FinishReason",
    "GenerationRequest",
    "HostTimings",
    "InvalidRequestError",
    "LpuError",
    "ModelConfig",
    "ModelInfo",
    "Plan",
    "RequestOutput",
    "SamplingParams",
    "SramOverflowError",
    "SystemSpec",
    "can_serve",
    "compile_model",
    "compile_plan",
    "model_config",
]
