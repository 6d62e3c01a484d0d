"""``GET /metrics`` in the Prometheus text format (keys apply unless the server runs with --metrics-public)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import generate_latest

from ..app import state_of
from ..metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", response_class=Response, include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE)
