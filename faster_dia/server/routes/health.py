"""``GET /health``: the server and each hosted model (family, device, state, queue)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..app import state_of
from ..schemas import Health, ModelHealth

router = APIRouter()


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    state = state_of(request)
    models = []
    for model in state.models.models:
        entry = ModelHealth(id=model.id, aliases=model.aliases, family=model.family, state=model.state,
                            device=model.device, sample_rate=model.sample_rate)
        if model.tts is not None:
            stats = model.tts.engine.stats()
            entry.waiting, entry.running, entry.max_batch = stats.waiting, stats.running, stats.max_batch
            entry.quantize, entry.weight_bytes = model.quantize, model.weight_bytes
        models.append(entry)
    default = state.models.default
    queue = default.tts.engine.max_queue if default.tts is not None else None
    return Health(model=default.id, device=default.device, sample_rate=default.sample_rate,
                  in_flight=state.in_flight, max_queue=queue, models=models)
