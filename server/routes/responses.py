from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.deps import ServingDep
from server.responses import ResponsesRequest

router = APIRouter(tags=["openai"])


@router.post("/v1/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request, serving: ServingDep) -> Response:
    return await serving.responses(body, request)
