"""`create_app`: the FastAPI application around one engine, with nothing built at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server.admission import AdmissionMiddleware
from server.auth import ApiKeyMiddleware
from server.drain import DrainMiddleware
from server.engine import EngineClient, build_engine
from server.errors import install_error_handlers
from server.http_limits import RequestBodyLimits
from server.loop_monitor import LoopLagMonitor
from server.request_id import RequestIdMiddleware
from server.routes import ROUTERS
from server.settings import MIB, Settings
from server.state import AppState
from server.text_check import lone_surrogate

logger = logging.getLogger(__name__)


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
                built = await asyncio.to_thread(build_engine, settings, state.engine_gone)
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
    )
    app.state.lpu = state
    install_error_handlers(app)
    # The last added runs first: a draining server refuses before anything else, a bad key gets 401 before
    # its body is read, a full queue refuses before it is read, and only then is the body read (bounded in
    # size and time) and checked.
    app.add_middleware(
        RequestBodyLimits,
        max_bytes=int(settings.max_body_mib * MIB),
        timeout_s=settings.body_timeout_s,
        checks=(lone_surrogate,),
    )
    rejected = state.metrics.requests_rejected
    app.add_middleware(
        AdmissionMiddleware, queue=state.admission, rejected=lambda reason: rejected.labels(reason).inc()
    )
    if settings.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(DrainMiddleware, drain=state.drain)
    if settings.cors_origins:
        # Outside the key check: a browser's preflight carries no Authorization header.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "retry-after", "retry-after-ms"],
        )
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries the id, refusals too
    for router in ROUTERS:
        app.include_router(router)
    return app
