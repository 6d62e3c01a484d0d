"""Real HTTP receivers on 127.0.0.1 for the hosted-API tests: webhooks, uploads, audio by URL, redirects, and a
fake speech recognizer so that voice clips are transcribed without Whisper."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Callable

import av
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from faster_dia.asr import LazyRecognizer, Transcript, Word
from faster_dia.audio import encode_audio

WAIT = 30.0


class Receiver:
    """Records webhook POSTs and upload PUTs; hooks named in ``failing`` answer 500 (the first ``fail_times``
    attempts, or all while ``fail_times`` is None)."""

    def __init__(self) -> None:
        self.webhooks: dict[str, list[dict]] = {}
        self.uploads: dict[str, list[tuple[str, bytes]]] = {}
        self.attempts: Counter[str] = Counter()
        self.failing: dict[str, int | None] = {}
        self.clip = clip_wav()
        self.lock = threading.Lock()
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook/{name}")
        async def hook(name: str, request: Request) -> Response:
            body = await request.json()
            with self.lock:
                self.attempts[name] += 1
                times = self.failing.get(name, 0)
                if name in self.failing and (times is None or self.attempts[name] <= times):
                    return JSONResponse({"error": "try again"}, status_code=500)
                self.webhooks.setdefault(name, []).append(body)
            return JSONResponse({"ok": True})

        @app.put("/upload/{name}")
        async def upload(name: str, request: Request) -> Response:
            data = await request.body()
            with self.lock:
                self.uploads.setdefault(name, []).append((request.headers.get("content-type", ""), data))
            return Response(status_code=200)

        @app.get("/clip.wav")
        async def clip() -> Response:
            return Response(self.clip, media_type="audio/wav")

        @app.get("/redirect")
        async def redirect(to: str) -> Response:
            return RedirectResponse(to, status_code=302)

        @app.get("/slow")
        async def slow() -> Response:
            import asyncio

            await asyncio.sleep(5)
            return Response(b"late")

        @app.get("/big")
        async def big() -> Response:
            return Response(b"\0" * 100_000, media_type="application/octet-stream")

        return app


def clip_wav(seconds: float = 1.5, rate: int = 16000) -> bytes:
    """A short voiced-like clip (a tone with harmonics) as WAV bytes."""
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.2 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 360 * t)
    return encode_audio(tone.astype(np.float32), rate, "wav")


class FakeRecognizer:
    """Transcribes every clip as the same two words, counting calls."""

    def __init__(self) -> None:
        self.calls = 0

    def transcribe(self, pcm, sample_rate=None, **_):
        self.calls += 1
        words = [Word("Hello", 0.1, 0.5, 0.9), Word("there.", 0.6, 1.0, 0.9)]
        return Transcript(text=" Hello there.", language="en", duration=1.5, segments=[], words=words)


class FakeLazyRecognizer(LazyRecognizer):
    def __init__(self, recognizer: FakeRecognizer):
        super().__init__("tiny.en")
        self._fake = recognizer

    def load(self):
        return self._fake

    async def get(self):
        return self._fake


def decode(data: bytes) -> tuple[np.ndarray, int, int]:
    """Samples (all channels), sample rate and channel count of an encoded file."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.layout.nb_channels
    samples = np.concatenate([f.reshape(-1) for f in frames]) if frames else np.zeros(0)
    return samples, rate, channels


def wait_for(condition: Callable[[], object], what: str = "condition") -> object:
    deadline = time.monotonic() + WAIT
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
