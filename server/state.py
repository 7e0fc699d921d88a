"""What one app instance holds: its settings, its metrics and, once the lifespan has built it, its engine."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def attach(self, engine: EngineClient) -> None:
        self.engine = engine
        self.serving = OpenAIServing(engine, self.metrics, self.served_model)

    def detach(self) -> None:
        self.serving = None
        self.engine = None
