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
    # Not ready while draining for shutdown or while a dead engine is being restarted: a load balancer
    # sends new requests elsewhere meanwhile.
    status = "draining" if state.drain.draining else "ok" if engine.is_healthy() else "unavailable"
    return JSONResponse(
        {"status": status, "running": stats.running, "waiting": stats.waiting, "restarts": engine.restarts},
        status_code=200 if status == "ok" else 503,
    )
