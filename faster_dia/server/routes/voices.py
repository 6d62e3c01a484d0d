"""The voice library over HTTP: list, add (with automatic transcripts), read, fetch the clip, delete.

``GET /v1/audio/voices`` keeps the ``{"voices": [{"id", "name"}]}`` shape Open WebUI reads; ``/v1/voices`` shows
more of each voice. ``POST /v1/audio/voices`` is OpenAI's custom-voice upload (``audio_sample``, ``consent``).
"""

from __future__ import annotations

import mimetypes
from functools import partial
from pathlib import Path

import anyio
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from ...errors import PayloadTooLargeError
from ...voices import AUDIO_SUFFIXES, BUILTIN_VOICES, MAX_UPLOAD_BYTES, Voice
from ..app import ServerState, state_of
from ..schemas import ErrorResponse, VoiceList
from ..schemas import Voice as VoiceEntry

router = APIRouter()

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413)}

@router.get("/v1/audio/voices", response_model=VoiceList)
async def list_voice_names(request: Request) -> VoiceList:
    """Stored voices first, then the built-in names (each a fixed voice of the model, chosen by seed)."""
    stored = state_of(request).voices.list()
    return VoiceList(voices=[VoiceEntry(id=v.id, name=v.name) for v in stored]
                     + [VoiceEntry(id=name, name=f"{name} (built-in)") for name in BUILTIN_VOICES])


@router.get("/v1/voices")
async def list_voices(request: Request) -> dict:
    stored = [{**v.describe(), "builtin": False} for v in state_of(request).voices.list()]
    builtin = [{"id": name, "name": name, "builtin": True} for name in BUILTIN_VOICES]
    return {"object": "list", "voices": stored + builtin}


@router.post("/v1/voices", status_code=201, responses=_ERRORS)
async def create_voice(request: Request, name: str = Form(...), audio: UploadFile = File(...),
                       transcript: str | None = Form(None)) -> dict:
    """Add a voice from a clip (1–20 s of speech); without ``transcript`` the clip is transcribed."""
    voice = await _add(state_of(request), name, audio, transcript, source="upload", param="audio")
    return voice.describe()


@router.post("/v1/audio/voices", responses=_ERRORS)
async def create_openai_voice(request: Request, name: str = Form(...), audio_sample: UploadFile = File(...),
                              consent: str | None = Form(None)) -> dict:
    """OpenAI's custom-voice upload; answers an ``audio.voice`` object."""
    voice = await _add(state_of(request), name, audio_sample, None, source="upload", param="audio_sample")
    return {"object": "audio.voice", "id": voice.id, "name": voice.name, "created_at": int(voice.created)}


@router.get("/v1/voices/{voice_id}", responses=_ERRORS)
async def get_voice(voice_id: str, request: Request) -> dict:
    voice = state_of(request).voices.get(voice_id)
    return {**voice.describe(), "words": [list(w) for w in voice.words or []]}


@router.get("/v1/voices/{voice_id}/audio", responses=_ERRORS, response_class=FileResponse)
async def get_voice_audio(voice_id: str, request: Request) -> FileResponse:
    voice = state_of(request).voices.get(voice_id)
    media_type = mimetypes.guess_type(voice.audio_file)[0] or "application/octet-stream"
    return FileResponse(voice.audio_path, media_type=media_type, filename=f"{voice.id}{voice.audio_path.suffix}")


@router.delete("/v1/voices/{voice_id}", responses=_ERRORS)
async def delete_voice(voice_id: str, request: Request) -> dict:
    voice = await anyio.to_thread.run_sync(state_of(request).voices.remove, voice_id)
    return {"object": "audio.voice.deleted", "id": voice.id, "deleted": True}


async def _add(state: ServerState, name: str, upload: UploadFile, transcript: str | None, *, source: str,
               param: str) -> Voice:
    data = await upload.read()
    if len(data) > MAX_UPLOAD_BYTES:
        raise PayloadTooLargeError(f"The audio file is over the {MAX_UPLOAD_BYTES >> 20} MiB limit.", param=param)
    suffix = Path(upload.filename or "").suffix.lower()
    transcriber = None
    if transcript is None or not transcript.strip():
        transcriber = await state.transcriber()
    return await anyio.to_thread.run_sync(partial(
        state.voices.add, name, data, transcript=transcript, source=source, param=param,
        suffix=suffix if suffix in AUDIO_SUFFIXES else None, transcriber=transcriber))

