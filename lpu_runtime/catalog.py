"""Models the engine can serve by name, each with its weights, tokenizer and chat template."""

from __future__ import annotations

from dataclasses import dataclass

from lpu_runtime.chat_template import DEMO_CHAT_TEMPLATE, ChatTemplate
from lpu_runtime.compiler import Plan, compile_model
from lpu_runtime.config import DEMO_MODEL, EngineConfig, ModelConfig, SystemSpec, model_preset
from lpu_runtime.model import Checkpoint
from lpu_runtime.synthetic import synthetic_checkpoint
from lpu_runtime.tokenizer import ByteTokenizer, Tokenizer

DEMO_ALIASES = frozenset({DEMO_MODEL.name, "demo", "default"})

# Printable ASCII, newline and tab: the bytes the untrained demo model is biased towards so that its noise
# is readable in a terminal instead of control characters.
PRINTABLE_BYTES = (9, 10, *range(32, 127))


@dataclass(frozen=True)
class LoadedModel:
    checkpoint: Checkpoint
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    name: str  # the id /v1/models shows
    description: str


def load_model(name: str, seed: int = 0) -> LoadedModel:
    """Resolves a model name to weights, tokenizer and template; KeyError with the known names otherwise."""
    if name in DEMO_ALIASES:
        tokenizer = ByteTokenizer()
        return LoadedModel(
            checkpoint=synthetic_checkpoint(DEMO_MODEL, seed, favoured_token_ids=PRINTABLE_BYTES),
            tokenizer=tokenizer,
            chat_template=ChatTemplate(
                DEMO_CHAT_TEMPLATE, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token
            ),
            name=DEMO_MODEL.name,
            description=DEMO_MODEL.description,
        )
    raise KeyError(f"unknown model {name!r}; this build serves: {', '.join(sorted(DEMO_ALIASES))}")


def can_serve(name: str) -> bool:
    """Whether `load_model` has weights for this name (presets alone only compile and plan)."""
    return name in DEMO_ALIASES


def model_config(name: str) -> ModelConfig:
    """The architecture behind a served name or a preset, without loading weights."""
    return DEMO_MODEL if name in DEMO_ALIASES else model_preset(name)


def compile_plan(model: str, system: SystemSpec, engine: EngineConfig | None = None) -> Plan:
    """`lpu compile`: the placement of a named model on a system; needs no weights."""
    return compile_model(model_config(model), system, engine)
