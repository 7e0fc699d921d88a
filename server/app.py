"""`create_app`: the FastAPI application around one engine, with nothing built at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from server.auth import ApiKeyMiddleware
from server.engine import EngineClient, build_engine
from server.errors import install_error_handlers
from server.loop_monitor import LoopLagMonitor
from server.routes import ROUTERS
from server.settings import Settings
from server.state import AppState

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = (
    32 * 1024 * 1024
)  # far above any prompt the context can hold; bounds what a client can make us parse


def _version() -> str:
    try:
        return version("lpu-serve")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings, engine: EngineClient | None = None) -> FastAPI:
    """Build the app. Without `engine`, the lifespan builds, starts and finally shuts down the real one;
    a given engine belongs to the caller, who starts it before serving and shuts it down after."""
    state = AppState(settings, version=_version())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = engine is None
        if engine is None:
            logger.info("building engine: model %s on %d chips", settings.model, settings.chips)
            try:
                built = await asyncio.to_thread(build_engine, settings)
            except Exception as exc:
                logger.error("cannot build the engine: %s", exc)
                raise
            built.start()
            state.attach(built)
        else:
            state.attach(engine)
        logger.info("serving model %r", state.served_model)
        lag_monitor = LoopLagMonitor(state.metrics.event_loop_lag.observe)  # lpu_event_loop_lag_seconds
        lag_monitor.start()
        try:
            yield
        finally:
            await lag_monitor.stop()
            running = state.engine
            state.detach()
            if owned and running is not None:
                await asyncio.to_thread(running.shutdown)  # joins the step thread

    app = FastAPI(
        title="lpu-serve",
        version=_version(),
        description="OpenAI-compatible LLM inference on an emulated multi-chip LPU.",
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.lpu = state
    install_error_handlers(app)
    if settings.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    for router in ROUTERS:
        app.include_router(router)
    return app
