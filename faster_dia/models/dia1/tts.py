"""The front door of Dia-1.6B (both published checkpoints) with the DAC codec."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...errors import FasterDiaError, InvalidInputError
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
from .generator import Dia1Generator, Dia1Request

log = logging.getLogger(__name__)

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
        into one prompt. An ``audio_prompt`` without its transcript is transcribed automatically."""
        return self._generate(script, dict(
            seed=seed, temperature=temperature, top_p=top_p, top_k=top_k, cfg_scale=cfg_scale,
            max_new_tokens=max_new_tokens, audio_prompt=audio_prompt, audio_prompt_transcript=audio_prompt_transcript,
            audio_prompt_sample_rate=audio_prompt_sample_rate, voice=voice, voices=voices), progress)

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
            self._request(s, seed=resolve_seed(sd), audio_prompt=p, audio_prompt_transcript=t,
                          audio_prompt_sample_rate=options["audio_prompt_sample_rate"], max_new_tokens=max_new,
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
                 top_p: float, top_k: int, cfg_scale: float) -> Dia1Request:
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
        return Dia1Request(
            text=torch.tensor(tokens, dtype=torch.long), seed=seed, prompt=prompt, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, cfg_scale=cfg_scale,
        )

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
