"""The emulated multi-chip LPU: compiler, chips, pipeline, engine. Never imports web libraries."""

from lpu_runtime.async_engine import AsyncEngine
from lpu_runtime.catalog import (
    DEFAULT_MODEL,
    accepted_ids,
    can_serve,
    check_model,
    compile_plan,
    model_config,
)
from lpu_runtime.chat_template import TemplateRaisedError
from lpu_runtime.compiler import Plan, compile_model
from lpu_runtime.config import DEMO_MODEL, MODEL_PRESETS, ChipSpec, EngineConfig, ModelConfig, SystemSpec
from lpu_runtime.errors import (
    ChatTemplateError,
    CompileError,
    ContextLengthExceededError,
    EngineDeadError,
    InvalidRequestError,
    LpuError,
    ModelFileError,
    SramOverflowError,
)
from lpu_runtime.grammar import check_grammar, json_options
from lpu_runtime.hardware import (
    CHIP_PRESETS,
    GPU_PRESETS,
    HardwareSpec,
    SpecError,
    chip_hardware,
    gpu_server,
    load_spec,
)
from lpu_runtime.hardware import override as override_hardware
from lpu_runtime.loaders.export import export_model
from lpu_runtime.plan import (
    PlanInputError,
    PlanReport,
    PlanRequest,
    plan_system,
    resolve_model,
    shorter_context_that_fits,
)
from lpu_runtime.plan import render_table as render_plan_table
from lpu_runtime.plan import to_dict as plan_report_dict
from lpu_runtime.plan_svg import render_svg as render_plan_svg
from lpu_runtime.types import (
    MAX_TOP_LOGPROBS,
    ChipStats,
    EmulatedTimings,
    EngineStats,
    FinishReason,
    GenerationRequest,
    GrammarSpec,
    HostTimings,
    ModelInfo,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
)

__all__ = [
    "CHIP_PRESETS",
    "DEFAULT_MODEL",
    "DEMO_MODEL",
    "GPU_PRESETS",
    "MAX_TOP_LOGPROBS",
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
    "GrammarSpec",
    "HardwareSpec",
    "HostTimings",
    "InvalidRequestError",
    "LpuError",
    "ModelConfig",
    "ModelFileError",
    "ModelInfo",
    "Plan",
    "PlanInputError",
    "PlanReport",
    "PlanRequest",
    "RequestOutput",
    "SamplingParams",
    "SpecError",
    "SramOverflowError",
    "SystemSpec",
    "TemplateRaisedError",
    "TokenLogprob",
    "accepted_ids",
    "can_serve",
    "check_grammar",
    "check_model",
    "chip_hardware",
    "compile_model",
    "compile_plan",
    "export_model",
    "gpu_server",
    "json_options",
    "load_spec",
    "model_config",
    "override_hardware",
    "plan_report_dict",
    "plan_system",
    "render_plan_svg",
    "render_plan_table",
    "resolve_model",
    "shorter_context_that_fits",
]
