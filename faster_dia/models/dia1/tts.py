"""The front door of Dia-1.6B (both published checkpoints) with the DAC codec."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...errors import FasterDiaError, InvalidInputError
from ...longform import DEFAULT_CONTINUITY
from ...script import SPEAKER_TAGS, encode_script, join_prompt_transcript, normalize_script
from ...speech import (
    Progress,
    PromptAudio,
    Speech,
    SpeechModel,
    check_integer,
    check_number,
    coerce_prompt_audio,
    per_item,
    resolve_seed,
)
from .config import VARIANT_ORIGINAL
from .generator import Dia1Generator, Dia1Request, max_new_tokens_limit

log = logging.getLogger(__name__)

#: DAC frames per second of audio (44.1 kHz, 512 samples per frame).
FRAMES_PER_SECOND = 44100 / 512

#: Documented ranges of the sampling options (README, "Parameters").
TEMPERATURE_RANGE = (0.0, 5.0)
CFG_SCALE_RANGE = (0.0, 30.0)
TOP_K_RANGE = (1, 65536)


class Dia1TextToSpeech(SpeechModel):
    """Dia-1.6B (``nari-labs/Dia-1.6B`` and ``nari-labs/Dia-1.6B-0626``): 44.1 kHz audio through DAC."""

    family = "dia1"
    default_chunk_seconds = 0.37  # 32 frames

    def __init__(self, model, codec, *, model_id: str, variant: str, max_batch: int = 4,
                 max_queue: int | None = None, step_mode: str | None = None):
        super().__init__(model, codec, Dia1Generator(model, max_batch=max_batch, step_mode=step_mode),
                         model_id=model_id, variant=variant, max_queue=max_queue)

    def generate(
        self,
        script: str | Sequence[str],
        *,
        seed: int | Sequence[int | None] | None = None,
        temperature: float = 1.2,
        top_p: float = 0.95,
        top_k: int = 45,
        cfg_scale: float = 3.0,
        max_new_tokens: int | None = None,
        audio_prompt: Any = None,
        audio_prompt_transcript: str | Sequence[str | None] | None = None,
        audio_prompt_sample_rate: int | None = None,
        voice: Any = None,
        voices: dict[str, Any] | None = None,
        continuity: str = DEFAULT_CONTINUITY,
        runaway_guard: bool = True,
        negative_prompt: str | None = None,
        pad_short_scripts: bool = True,
        progress: Callable[[Progress], None] | None = None,
    ) -> Speech | list[Speech]:
        """Generate speech for one script, or for a list of scripts as one batch.

        For a list, ``seed`` may be one integer (item i uses seed + i) or a list, and ``audio_prompt`` /
        ``audio_prompt_transcript`` may be single values shared by all items or lists with None entries.
        ``temperature`` 0–5 (0 greedy), ``top_p`` (0, 1], ``top_k`` 1–65536, ``cfg_scale`` 0–30,
        ``max_new_tokens`` decoder steps (86 ≈ 1 s).

        ``voice`` speaks speaker 1 in a voice: a stored voice's name (``tts.voices``), a clip's path
        (transcribed automatically), or a built-in name such as ``"alloy"`` (a fixed seed of its own).
        ``voices={"S1": ..., "S2": ...}`` gives both speakers a voice: their clips and transcripts are joined
        into one prompt. An ``audio_prompt`` without its transcript is transcribed automatically.

        A script longer than about 350 bytes (or than one request holds next to the voice prompt) is spoken
        in chunks of about 200 bytes joined into one result (see faster_dia.longform); ``continuity`` is
        ``"first"`` or ``"previous"``. Without ``max_new_tokens`` the runaway guard caps a request at
        3 s + 0.25 s per byte of its script (``runaway_guard=False``: everything that fits). A script of one
        or two words gets the other speaker's tag at its end, where Dia-1.6B ends a turn cleanly
        (``pad_short_scripts=False``: spoken exactly as given).

        ``negative_prompt`` is a script that the unconditional branch of guidance reads instead of empty text,
        so that ``cfg_scale`` above 1 steers away from it."""
        return self._generate(script, dict(
            seed=seed, temperature=temperature, top_p=top_p, top_k=top_k, cfg_scale=cfg_scale,
            max_new_tokens=max_new_tokens, audio_prompt=audio_prompt, audio_prompt_transcript=audio_prompt_transcript,
            audio_prompt_sample_rate=audio_prompt_sample_rate, voice=voice, voices=voices, continuity=continuity,
            runaway_guard=runaway_guard, negative_prompt=negative_prompt, pad_short_scripts=pad_short_scripts),
            progress)

    def openai_options(self, fields: dict[str, Any]) -> dict[str, Any]:
        options = {name: fields[name] for name in ("seed", "temperature", "top_p", "cfg_scale", "max_new_tokens")
                   if fields.get(name) is not None}
        top_k = fields.get("top_k", fields.get("cfg_filter_top_k"))
        if top_k is None:
            top_k = fields.get("cfg_filter_top_k")
        if top_k is not None:
            options["top_k"] = top_k
        return options

    # ------------------------------------------------------------------ requests

    def _requests(self, scripts: list[str], options: dict[str, Any]) -> list[Dia1Request]:
        n = len(scripts)
        speakers, voice_seed = self._voice_choice(options["voice"], options["voices"])
        if speakers:
            if options["audio_prompt"] is not None or options["audio_prompt_transcript"] is not None:
                raise InvalidInputError("Give either a voice or an audio_prompt, not both.", param="audio_prompt")
            # Both speakers' clips form one prompt, their transcripts one transcript with the speaker tags.
            options = {**options, "audio_prompt": torch.cat([v.codes for v in speakers.values()]),
                       "audio_prompt_transcript": " ".join(f"[{speaker}] {_untagged(v.transcript)}"
                                                           for speaker, v in speakers.items())}
        if options["seed"] is None and voice_seed is not None:
            options = {**options, "seed": voice_seed}
        seeds = per_item(options["seed"], n, "seed", offset_ints=True)
        prompts = per_item(options["audio_prompt"], n, "audio_prompt")
        transcripts = per_item(options["audio_prompt_transcript"], n, "audio_prompt_transcript")
        sampling = self._sampling(options)
        max_new = options["max_new_tokens"]
        if max_new is not None:
            max_new = check_integer("max_new_tokens", max_new, 0, 1 << 62)  # the model's limit is checked later
        return [
            self._request(_padded(s) if options["pad_short_scripts"] else s, seed=resolve_seed(sd), audio_prompt=p, audio_prompt_transcript=t,
                          audio_prompt_sample_rate=options["audio_prompt_sample_rate"], max_new_tokens=max_new,
                          runaway_guard=bool(options["runaway_guard"]), negative_prompt=options["negative_prompt"],
                          **sampling)
            for s, sd, p, t in zip(scripts, seeds, prompts, transcripts, strict=True)
        ]

    @classmethod
    def _sampling(cls, options: dict[str, Any]) -> dict[str, Any]:
        return dict(
            temperature=check_number("temperature", options["temperature"], *TEMPERATURE_RANGE),
            top_p=check_number("top_p", options["top_p"], 0.0, 1.0, low_open=True),
            top_k=check_integer("top_k", options["top_k"], *TOP_K_RANGE),
            cfg_scale=check_number("cfg_scale", options["cfg_scale"], *CFG_SCALE_RANGE),
        )

    def _request(self, script: str, *, seed: int, audio_prompt: Any, audio_prompt_transcript: str | None,
                 audio_prompt_sample_rate: int | None, max_new_tokens: int | None, temperature: float,
                 top_p: float, top_k: int, cfg_scale: float, runaway_guard: bool = False,
                 negative_prompt: str | None = None) -> Dia1Request:
        text = normalize_script(script)
        prompt = None
        transcript = None
        if audio_prompt is not None:
            coerced = coerce_prompt_audio(audio_prompt, self.codec, param="audio_prompt",
                                          sample_rate=audio_prompt_sample_rate, rate_param="audio_prompt_sample_rate")
            prompt = coerced.codes
            if not audio_prompt_transcript or not str(audio_prompt_transcript).strip():
                audio_prompt_transcript = "[S1] " + self._prompt_transcript(coerced)
            transcript = normalize_script(audio_prompt_transcript, param="audio_prompt_transcript")
        elif audio_prompt_transcript:
            raise InvalidInputError(
                "audio_prompt_transcript was given without audio_prompt.", param="audio_prompt_transcript"
            )
        tokens = self._tokens(script, text, transcript)
        if max_new_tokens is None and runaway_guard:
            prompt_frames = 0 if prompt is None else int(prompt.shape[0])
            max_new_tokens = min(runaway_cap(len(encode_script(text))), max_new_tokens_limit(self.config, prompt_frames))
        return Dia1Request(
            text=torch.tensor(tokens, dtype=torch.long), seed=seed, prompt=prompt, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, cfg_scale=cfg_scale,
            negative_text=None if negative_prompt is None else self._negative_tokens(negative_prompt, transcript),
        )

    def _negative_tokens(self, negative_prompt: str, transcript: str | None) -> torch.Tensor:
        """The unconditional branch's text for ``negative_prompt``: a script, after the voice prompt's transcript
        as the script is, so that the two branches differ in what follows the prompt only."""
        unwanted = normalize_script(negative_prompt, param="negative_prompt")
        tokens = encode_script(unwanted if transcript is None else join_prompt_transcript(transcript, unwanted))
        if len(tokens) > self.config.text_length:
            raise InvalidInputError(f"The negative prompt is {len(tokens)} bytes long (voice prompt transcript "
                                    f"included); the model reads at most {self.config.text_length}.",
                                    param="negative_prompt")
        return torch.tensor(tokens, dtype=torch.long)

    def _prompt_transcript(self, prompt: PromptAudio) -> str:
        """What a voice prompt given without its transcript says, from speech recognition (prompts given as
        codes are decoded first). The model continues the transcript's speech: without it the output is
        garbled, so a prompt that cannot be transcribed is an error."""
        pcm = prompt.pcm if prompt.pcm is not None else self.codec.decode(prompt.codes)
        try:
            text = self._transcribe(pcm, "audio_prompt").text.strip()
        except (FasterDiaError, ImportError) as exc:
            reason = getattr(exc, "message", str(exc))
            raise InvalidInputError(
                "A voice prompt needs its transcript (audio_prompt_transcript): the model continues the transcript's "
                f"speech, and automatic transcription is not available ({reason}).",
                param="audio_prompt_transcript") from exc
        if not text:
            raise InvalidInputError("No speech was recognized in the voice prompt; send its transcript "
                                    "(audio_prompt_transcript).", param="audio_prompt_transcript")
        return text

    def _tokens(self, script: str, text: str, transcript: str | None) -> list[int]:
        """The byte tokens the model reads, within its limit. The ``[S1]`` put in front of a script without a
        speaker tag is dropped again when only it would make the script too long: the user's own bytes count."""
        limit = self.config.text_length
        tokens = encode_script(text if transcript is None else join_prompt_transcript(transcript, text))
        added_tag = not script.strip().startswith(tuple(SPEAKER_TAGS))
        if len(tokens) > limit and added_tag:
            bare = text.removeprefix("[S1] ")
            tokens = encode_script(bare if transcript is None else join_prompt_transcript(transcript, bare))
        if len(tokens) > limit:
            what = "script plus the voice prompt transcript" if transcript is not None else "script"
            raise InvalidInputError(
                f"The {what} is {len(tokens)} bytes long ([S1]/[S2] count as one); the model reads at most "
                f"{limit} bytes. Shorten it or split it into several calls.",
                param="input",
            )
        return tokens

    def _input_tokens(self, request: Dia1Request) -> int:
        return int(request.text.shape[0])

    # ------------------------------------------------------------------ long scripts

    def _prompt_transcript_bytes(self, options: dict[str, Any]) -> int:
        transcript = options.get("audio_prompt_transcript")
        return len(encode_script(transcript)) + 1 if isinstance(transcript, str) else 0

    def _is_long(self, script: str, options: dict[str, Any]) -> bool:
        if not isinstance(script, str) or not script.strip():
            return False
        size = len(encode_script(script.strip()))
        return size > LONG_FORM_THRESHOLD_BYTES or size + self._prompt_transcript_bytes(options) > self.config.text_length

    def _chunk_fits(self, chunk: str, options: dict[str, Any]) -> bool:
        size = len(encode_script(chunk))
        room = self.config.text_length - max(self._prompt_transcript_bytes(options), LONG_FORM_CHUNK_BYTES + 1)
        return size <= min(LONG_FORM_CHUNK_BYTES, room)

    def _has_voice(self, options: dict[str, Any]) -> bool:
        return super()._has_voice(options) or options.get("audio_prompt") is not None

    def _reference_chunk(self, result: Any) -> Any:
        if result.seconds > MAX_REFERENCE_SECONDS or not result.codes.shape[0]:
            return None  # too long to prompt with and still leave room to speak: no reference
        return result

    def _with_reference(self, options: dict[str, Any], reference: Any) -> dict[str, Any]:
        return {**options, "audio_prompt": reference.codes, "audio_prompt_transcript": reference.text,
                "audio_prompt_sample_rate": None, "voice": None, "voices": None}


#: Long scripts: above this many bytes a script is spoken in chunks of about LONG_FORM_CHUNK_BYTES (Dia-1.6B
#: sounds most natural for 5-20 s of speech, about 15 bytes a second); a chunk used as the next one's voice
#: prompt may be at most MAX_REFERENCE_SECONDS long, so that the two fit the 3072 decoder positions.
LONG_FORM_THRESHOLD_BYTES = 350
LONG_FORM_CHUNK_BYTES = 200
MAX_REFERENCE_SECONDS = 15.0
#: The runaway guard: a request speaks at most RUNAWAY_BASE_SECONDS + RUNAWAY_SECONDS_PER_BYTE per script
#: byte (about four times the usual pace), so a model that never says EOS stops long before the context ends.
RUNAWAY_BASE_SECONDS = 3.0
RUNAWAY_SECONDS_PER_BYTE = 0.25
#: Scripts of at most this many words get a closing speaker tag, which Dia-1.6B needs to end them cleanly.
SHORT_SCRIPT_WORDS = 2


def runaway_cap(script_bytes: int) -> int:
    """Decoder steps the runaway guard allows a script of ``script_bytes`` bytes (EOS tail included)."""
    return math.ceil((RUNAWAY_BASE_SECONDS + RUNAWAY_SECONDS_PER_BYTE * script_bytes) * FRAMES_PER_SECOND) + 16


def _padded(script: str) -> str:
    """A script of one or two words, closed with the other speaker's tag: Dia-1.6B ends a turn cleanly at a
    speaker change, and without one it tends to run a very short script into babble."""
    if not isinstance(script, str) or len(re.findall(r"\w+", _untagged_all(script))) > SHORT_SCRIPT_WORDS:
        return script
    text = script.rstrip()
    if text.endswith(tuple(SPEAKER_TAGS)) or not text:
        return script
    last = "[S2]" if text.rfind("[S2]") > text.rfind("[S1]") else "[S1]"
    return f"{text} {'[S1]' if last == '[S2]' else '[S2]'}"


def _untagged_all(script: str) -> str:
    for tag in SPEAKER_TAGS:
        script = script.replace(tag, " ")
    return re.sub(r"\([^)]*\)", " ", script)


def _untagged(transcript: str) -> str:
    """A transcript without a leading speaker tag (stored voices keep plain words; the tag is the speaker's)."""
    text = transcript.strip()
    for tag in SPEAKER_TAGS:
        text = text.removeprefix(tag)
    return text.strip()


#: The name the first releases used for the Dia-1.6B class.
TextToSpeech = Dia1TextToSpeech


def load(model: str | os.PathLike, *, revision: str | None, device: torch.device, dtype: torch.dtype,
         codec: str | os.PathLike | None, codec_revision: str | None, max_batch: int | None,
         max_queue: int | None, step_mode: str) -> Dia1TextToSpeech:
    """Load a Dia-1.6B checkpoint and the DAC codec (the family's entry in the registry)."""
    from ...codecs.dac import DacCodec
    from ...loading import default_max_batch
    from .checkpoint import load_checkpoint
    from .model import Dia1Model

    checkpoint = load_checkpoint(model, revision=revision)
    dac = DacCodec.load(codec, revision=codec_revision, device=device)
    network = Dia1Model.from_hf_state_dict(checkpoint.config, checkpoint.state_dict, dtype=dtype, device=device)
    del checkpoint.state_dict
    if max_batch is None:
        max_batch = default_max_batch(device, Dia1Generator.cache_bytes_per_request(checkpoint.config, dtype))
    log.info(
        "loaded %s (%s layout, variant %s%s) on %s in %s",
        checkpoint.source, checkpoint.layout, checkpoint.variant,
        ": cross-attention RoPE, guided sampling with EOS x0.8" if checkpoint.variant == VARIANT_ORIGINAL
        else ": guided top-k candidates, conditional sampling",
        device, str(dtype).removeprefix("torch."),
    )
    return Dia1TextToSpeech(network, dac, model_id=checkpoint.source, variant=checkpoint.variant,
                            max_batch=max_batch, max_queue=max_queue, step_mode=step_mode)
