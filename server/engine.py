"""The part of `lpu_runtime.AsyncEngine` the server relies on, and how the server builds the real one.

Naming the interface keeps the HTTP layer honest about what it uses and lets the app be typed and tested
against any engine that keeps this contract.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from lpu_runtime import AsyncEngine, EngineStats, GenerationRequest, ModelInfo, RequestOutput
from server.settings import Settings


class EngineClient(Protocol):
    @property
    def model_info(self) -> ModelInfo: ...

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def encode_chat(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
    ) -> list[int]: ...

    def encode_text(self, prompt: str) -> list[int]: ...

    @property
    def chat_template_text(self) -> str | None: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def check_fits(self, n_prompt: int, max_tokens: int | None) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]: ...

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    def is_healthy(self) -> bool: ...

    def abort_all(self) -> None: ...

    @property
    def restarts(self) -> int: ...


def build_engine(settings: Settings, on_fatal: Callable[[str], None] | None = None) -> EngineClient:
    """Slow (weights, compilation, SRAM placement) and synchronous: call it from a worker thread.
    on_fatal: told why when the engine dies and will not be restarted."""
    engine: EngineClient = AsyncEngine.create(
        model=settings.model,
        system=settings.system_spec(),
        engine_config=settings.engine_config(),
        tokenizer=settings.tokenizer,
        chat_template=settings.chat_template,
        max_context=settings.max_model_len,
        in_process=settings.engine_in_process,
        distributed=settings.distributed_executor,
        ray_address=settings.ray_address,
        max_restarts=settings.engine_max_restarts,
        on_fatal=on_fatal,
        allow_special_in_content=settings.allow_special_tokens_in_content,
    )
    return engine
