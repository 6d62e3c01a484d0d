"""The web page at ``/``: a script editor, voices, sampling options, streamed playback and a history.

The page is three static files under ``server/ui/`` (no build step, nothing from other hosts) and talks to
the server's own HTTP API like any client: the same engine, the same batches, the same API keys. This
module serves the files and ``GET /ui/config``, the read-only facts the page needs that the OpenAI-shaped
routes do not carry: each model's sampling fields with their defaults and ranges (read from the family
classes), its script limit, which speaker tags and sounds it knows, whether speech recognition is installed.

The page and its assets are public (listed in :data:`PUBLIC_PATHS`, which ``create_app`` adds to the paths
the API key check lets through); every request that generates, lists voices or transcribes carries the key
the user typed into the page.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from ...audio import MAX_SPEED, MIN_SPEED
from ...errors import NotFoundError
from ...script import NON_VERBAL_TAGS, SPEAKER_TAGS
from ...voices import BUILTIN_VOICES, MAX_SECONDS, MIN_SECONDS
from ..app import state_of
from ..registry import HostedModel
from ..schemas import MAX_INPUT_CHARS

router = APIRouter()

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
#: The files the page is made of, by the name they are served under (``/ui/<name>``), with their types.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
PUBLIC_PATHS = frozenset({"/", "/ui/config", *(f"/ui/{name}" for name in ASSETS)})
#: The page may load and connect to nothing but this server (many users run it offline).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'self'; form-action 'self'"
)
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
#: The response formats of /v1/audio/speech, in the order the page offers them.
FORMATS = ("wav", "mp3", "opus", "aac", "flac")


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers={**_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY})


@router.get("/ui/config", include_in_schema=False)
async def config(request: Request) -> JSONResponse:
    state = state_of(request)
    registry = state.models
    return JSONResponse({
        "models": [_model(m, default=m is registry.default) for m in registry.models],
        "default_model": registry.default.id,
        "formats": list(FORMATS),
        "speed": {"min": MIN_SPEED, "max": MAX_SPEED, "default": 1.0},
        "max_input_chars": MAX_INPUT_CHARS,
        "builtin_voices": list(BUILTIN_VOICES),
        "voice_seconds": {"min": MIN_SECONDS, "max": MAX_SECONDS},
        # Installed is all the page can know without loading Whisper; a missing model is reported when used.
        "speech_recognition": state.asr.loaded or importlib.util.find_spec("faster_whisper") is not None,
    }, headers=_HEADERS)


@router.get("/ui/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"The page has no file called {name!r}.")
    return FileResponse(UI_DIR / name, media_type=ASSETS[name], headers=_HEADERS)


# ---------------------------------------------------------------------- per model


def _field(name: str, label: str, default: Any, low: float, high: float, *, integer: bool = False,
           low_open: bool = False, step: float | None = None, default_text: str | None = None,
           help: str = "") -> dict[str, Any]:
    """One sampling field of ``POST /v1/audio/speech`` as the page shows it: ``default`` None means the
    model decides (``default_text`` says what it does then)."""
    return {"name": name, "label": label, "default": default, "min": low, "max": high, "integer": integer,
            "min_exclusive": low_open, "step": 1 if integer else (step or 0.01), "default_text": default_text,
            "help": help}


def _dia1(hosted: HostedModel) -> dict[str, Any]:
    from ...models.dia1.config import VARIANT_0626, Dia1Config
    from ...models.dia1.tts import CFG_SCALE_RANGE, TEMPERATURE_RANGE, TOP_K_RANGE, Dia1TextToSpeech

    config = hosted.tts.config if hosted.tts is not None else Dia1Config(variant=VARIANT_0626)
    defaults = Dia1TextToSpeech.option_defaults()
    fields = [
        _field("temperature", "Temperature", defaults["temperature"], *TEMPERATURE_RANGE, step=0.05,
               help="Randomness of the sampling; 0 always picks the likeliest token."),
        _field("top_p", "Top-p", defaults["top_p"], 0.0, 1.0, low_open=True,
               help="Nucleus sampling: the smallest set of tokens whose probability adds up to this."),
        _field("top_k", "Guidance filter top-k", defaults["top_k"], *TOP_K_RANGE, integer=True,
               help="Candidates kept by the guidance filter."),
        _field("cfg_scale", "Guidance scale", defaults["cfg_scale"], *CFG_SCALE_RANGE, step=0.1,
               help="How closely the audio follows the script (classifier-free guidance)."),
        _field("max_new_tokens", "Length limit", defaults["max_new_tokens"], config.max_delay + 2,
               config.audio_length - 1, integer=True, default_text="as long as fits",
               help="Decoder steps; 86 steps are about 1 s of audio."),
    ]
    return {"options": fields, "voices": "voice" in defaults, "words": False, "pauses": False,
            "script_limit": {"max": config.text_length, "unit": "bytes"},
            "long_form": _splits_long_scripts(defaults)}


def _dia2(hosted: HostedModel) -> dict[str, Any]:
    from ...models.dia2.config import Dia2Config
    from ...models.dia2.tts import CFG_SCALE_RANGE, TEMPERATURE_RANGE, TOP_K_RANGE, Dia2TextToSpeech

    config = hosted.tts.config if hosted.tts is not None else Dia2Config()
    defaults = Dia2TextToSpeech.option_defaults()
    fields = [
        _field("temperature", "Temperature", defaults["temperature"], *TEMPERATURE_RANGE, step=0.05,
               default_text="0.6 text, 0.8 audio",
               help="Randomness of the text (word timing) and audio sampling; 0 is greedy."),
        _field("top_k", "Top-k", defaults["top_k"], *TOP_K_RANGE, integer=True, default_text="50",
               help="Tokens sampled from, for text and audio."),
        _field("cfg_filter_top_k", "Guidance filter top-k", defaults["cfg_filter_k"], *TOP_K_RANGE, integer=True,
               help="Candidates kept by the guidance filter."),
        _field("cfg_scale", "Guidance scale", defaults["cfg_scale"], *CFG_SCALE_RANGE, low_open=True, step=0.1,
               help="How closely the audio follows the script; 1 turns guidance off."),
        _field("max_new_tokens", "Length limit", defaults["max_new_tokens"], 1, config.max_context_steps,
               integer=True, default_text="until the script is spoken",
               help="Audio frames; 12.5 frames are 1 s."),
    ]
    # Dia2's limit is its context in text tokens, which only its tokenizer counts; the page counts characters
    # against the request limit and the server answers a script that does not fit with a 400 naming it.
    return {"options": fields, "voices": "voice" in defaults, "words": True, "pauses": True,
            "script_limit": {"max": MAX_INPUT_CHARS, "unit": "characters",
                             "seconds": round(config.max_context_steps / 12.5)},
            "long_form": _splits_long_scripts(defaults)}


def _splits_long_scripts(defaults: dict[str, Any]) -> bool:
    """A family that speaks scripts over one request's limit in chunks takes the ``continuity`` option
    (faster_dia.longform): the page then says so instead of calling such a script too long."""
    return "continuity" in defaults


_FAMILIES = {"dia1": _dia1, "dia2": _dia2}


def _model(hosted: HostedModel, *, default: bool) -> dict[str, Any]:
    described = _FAMILIES[hosted.family](hosted)
    return {"id": hosted.id, "aliases": hosted.aliases, "family": hosted.family, "sample_rate": hosted.sample_rate,
            "state": hosted.state, "default": default, "speakers": list(SPEAKER_TAGS),
            "sounds": list(NON_VERBAL_TAGS), **described}
