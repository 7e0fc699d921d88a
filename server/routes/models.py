from __future__ import annotations

from fastapi import APIRouter

from server.deps import EngineDep, StateDep
from server.engine import EngineClient
from server.errors import model_not_found
from server.protocol import ModelCard, ModelList

router = APIRouter(tags=["openai"])


def _card(served_model: str, engine: EngineClient) -> ModelCard:
    info = engine.model_info
    return ModelCard(
        id=served_model,
        created=info.created,
        description=info.description,
        max_model_len=info.max_context,
        chips=info.n_chips,
        pipeline_stages=info.n_stages,
        chip=info.chip_name,
        parameters=info.n_params,
    )


@router.get("/v1/models")
async def list_models(state: StateDep, engine: EngineDep) -> ModelList:
    return ModelList(data=[_card(state.served_model, engine)])


# `:path` so ids with a slash ("org/model") reach the handler instead of a 404 from the router.
@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, state: StateDep, engine: EngineDep) -> ModelCard:
    if model not in state.model_ids:
        raise model_not_found(model, state.served_model)
    return _card(state.served_model, engine)
