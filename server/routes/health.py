from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.deps import StateDep

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health(state: StateDep) -> JSONResponse:
    engine = state.engine
    if engine is None:
        return JSONResponse({"status": "starting", "running": 0, "waiting": 0}, status_code=503)
    stats = engine.stats()
    healthy = engine.is_healthy()
    return JSONResponse(
        {"status": "ok" if healthy else "unhealthy", "running": stats.running, "waiting": stats.waiting},
        status_code=200 if healthy else 503,
    )
