from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.deps import ServingDep
from server.protocol import Completion, CompletionRequest

router = APIRouter(tags=["openai"])


@router.post(
    "/v1/completions",
    response_model=None,
    responses={200: {"model": Completion, "description": "A completion, or an SSE stream of chunks"}},
)
async def create_completion(body: CompletionRequest, request: Request, serving: ServingDep) -> Response:
    return await serving.completion(body, request)
