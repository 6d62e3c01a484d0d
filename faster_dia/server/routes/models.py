"""Discovery: ``/v1/models`` (OpenAI) and ``/v1/audio/models`` (what Open WebUI reads)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..app import state_of
from ..schemas import AudioModel, AudioModelList, ErrorResponse, ModelCard, ModelList

router = APIRouter()

def _card(request: Request, name: str) -> ModelCard:
    state = state_of(request)
    model = state.models.resolve(name)
    return ModelCard(id=name, created=state.created, family=model.family, sample_rate=model.sample_rate,
                     state=model.state)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(request, name) for name in state_of(request).models.names()])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def get_model(model_id: str, request: Request) -> ModelCard:
    return _card(request, model_id)


@router.get("/v1/audio/models", response_model=AudioModelList)
async def list_audio_models(request: Request) -> AudioModelList:
    return AudioModelList(models=[AudioModel(id=name) for name in state_of(request).models.names()])
