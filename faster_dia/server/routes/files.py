"""``GET /v1/files/{file_id}``: the result files of the task API (``outputType: "URL"``), served until their
``ttl`` runs out. The ids are unguessable, so the URLs need no API key and can be handed on, like presigned URLs;
after the TTL they answer 404 and the file is deleted at the next sweep."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from ...errors import NotFoundError
from ..app import state_of

router = APIRouter()


@router.get("/v1/files/{file_id}", response_class=FileResponse,
            responses={200: {"content": {"audio/mpeg": {}}, "description": "the result file"}})
async def get_file(file_id: str, request: Request) -> FileResponse:
    hosted = state_of(request).hosted
    record = await hosted.db(hosted.store.get_file, file_id)
    if record is None or not os.path.isfile(record.path):
        raise NotFoundError("There is no such file: it expired (see the task's ttl) or never existed.",
                            param="file_id", code="file_not_found")
    seconds = max(0, int(record.expires - hosted.now()))
    return FileResponse(record.path, media_type=record.content_type, headers={"Cache-Control": f"private, max-age={seconds}"})
