from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.deps import ServingDep
from server.protocol import ChatCompletion, ChatCompletionRequest

router = APIRouter(tags=["openai"])


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={200: {"model": ChatCompletion, "description": "A completion, or an SSE stream of chunks"}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, serving: ServingDep
) -> Response:
    return await serving.chat(body, request)
