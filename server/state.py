"""What one app instance holds: its settings, its metrics and, once the lifespan has built it, its engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from lpu_runtime import accepted_ids
from server.engine import EngineClient
from server.metrics import EngineSnapshot, ServerMetrics
from server.serving import OpenAIServing
from server.settings import Settings


@dataclass
class AppState:
    settings: Settings
    version: str = "0.0.0"
    metrics: ServerMetrics = field(init=False)
    engine: EngineClient | None = None
    serving: OpenAIServing | None = None

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.settings.metrics_max_users, self.engine_snapshot, self.version)

    def engine_snapshot(self) -> EngineSnapshot | None:
        engine = self.engine
        if engine is None:
            return None
        return EngineSnapshot(engine.stats(), engine.model_info, self.served_model)

    @property
    def served_model(self) -> str:
        if self.settings.served_model_name:
            return self.settings.served_model_name
        return "" if self.engine is None else self.engine.model_info.id

    @property
    def model_ids(self) -> frozenset[str]:
        """Every id a request may name: the served id and, unless --served-model-name replaced it, the model's
        other names (a file's name with its extension, `smollm2` for SmolLM2-135M-Instruct)."""
        names = accepted_ids(self.settings.model)
        if self.settings.served_model_name or names[0] != self.served_model:
            return frozenset({self.served_model})
        return frozenset(names)

    def attach(self, engine: EngineClient) -> None:
        self.engine = engine
        self.serving = OpenAIServing(engine, self.metrics, self.served_model, self.model_ids)

    def detach(self) -> None:
        self.serving = None
        self.engine = None
