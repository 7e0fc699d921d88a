"""Dependency aliases the route handlers declare, so handlers never reach into `app.state` themselves."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.engine import EngineClient
from server.errors import SERVER_ERROR, ApiError
from server.serving import OpenAIServing
from server.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.lpu
    return state


def _not_ready() -> ApiError:
    return ApiError(503, "The engine is not running.", type=SERVER_ERROR, code="engine_unavailable")


def get_engine(request: Request) -> EngineClient:
    engine = get_state(request).engine
    if engine is None:
        raise _not_ready()
    return engine


def get_serving(request: Request) -> OpenAIServing:
    serving = get_state(request).serving
    if serving is None:
        raise _not_ready()
    return serving


StateDep = Annotated[AppState, Depends(get_state)]
EngineDep = Annotated[EngineClient, Depends(get_engine)]
ServingDep = Annotated[OpenAIServing, Depends(get_serving)]
