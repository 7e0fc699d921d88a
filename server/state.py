"""What one app instance holds: its settings, its metrics and, once the lifespan has built it, its engine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from lpu_runtime import accepted_ids
from server.admission import AdmissionQueue
from server.drain import Drain
from server.engine import EngineClient
from server.limits import KeyLimits
from server.metrics import EngineSnapshot, ServerMetrics
from server.serving import OpenAIServing
from server.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    version: str = "0.0.0"
    metrics: ServerMetrics = field(init=False)
    admission: AdmissionQueue = field(init=False)
    limits: KeyLimits = field(init=False)
    drain: Drain = field(default_factory=Drain)
    engine: EngineClient | None = None
    serving: OpenAIServing | None = None
    exit_code: int = 0  # what `lpu serve` exits with
    stop: Callable[[], None] | None = None  # set by `lpu serve`: shuts the server down (from any thread)

    def __post_init__(self) -> None:
        s = self.settings
        self.metrics = ServerMetrics(s.metrics_max_users, self.engine_snapshot, self.version)
        self.admission = AdmissionQueue(*s.admission_bounds())
        self.limits = KeyLimits(s.key_max_concurrency, s.key_tokens_per_minute)
        self.metrics.watch_admission(self.admission)

    def engine_snapshot(self) -> EngineSnapshot | None:
        engine = self.engine
        if engine is None:
            return None
        return EngineSnapshot(engine.stats(), engine.model_info, self.served_model, engine.restarts)

    def engine_gone(self, reason: str) -> None:
        """The engine died and will not be restarted: exit non-zero, for a supervisor to restart us."""
        logger.critical("stopping the server: the engine is gone (%s)", reason)
        self.exit_code = 1
        if self.stop is not None:
            self.stop()

    def abort_all(self) -> None:
        if self.engine is not None:
            self.engine.abort_all()

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
        self.serving = OpenAIServing(
            engine,
            self.metrics,
            self.served_model,
            self.model_ids,
            self.admission,
            self.limits,
            self.settings.metrics_request_user,
        )

    def detach(self) -> None:
        self.serving = None
        self.engine = None
