"""The front door of Dia2 (1B, 2B) with the Mimi codec: 24 kHz audio, word timestamps, voice prefixes."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import FasterDiaError, InvalidInputError, ModelNotFoundError
from ...longform import DEFAULT_CONTINUITY
from ...speech import (
    Progress,
    Speech,
    SpeechModel,
    check_integer,
    check_number,
    coerce_prompt_audio,
    per_item,
    resolve_seed,
)
from .generator import PREFIX_MODES, Dia2Generator, Dia2Request, Dia2SlotState
from .text import FRAME_RATE

log = logging.getLogger(__name__)

#: Long scripts: above this many characters a script is spoken in chunks of about LONG_FORM_CHUNK_CHARS;
#: a chunk used as the next one's prefix may be at most MAX_REFERENCE_SECONDS long (prefixes hold 60 s).
LONG_FORM_THRESHOLD_CHARS = 900
LONG_FORM_CHUNK_CHARS = 500
MAX_REFERENCE_SECONDS = 30.0
#: The runaway guard: a request speaks at most RUNAWAY_BASE_SECONDS + RUNAWAY_SECONDS_PER_CHAR per script
#: character (about four times the usual pace), so a model that never moves on stops early.
RUNAWAY_BASE_SECONDS = 3.0
RUNAWAY_SECONDS_PER_CHAR = 0.25


def runaway_cap(script_chars: int) -> int:
    """Frames the runaway guard allows a script of ``script_chars`` characters."""
    return math.ceil((RUNAWAY_BASE_SECONDS + RUNAWAY_SECONDS_PER_CHAR * script_chars) * FRAME_RATE)


#: Documented ranges of the sampling options (README, "Parameters").
TEMPERATURE_RANGE = (0.0, 5.0)
CFG_SCALE_RANGE = (0.0, 30.0)  # exclusive of 0; 1 turns guidance off
TOP_K_RANGE = (1, 65536)

_SAMPLING_NAMES = ("temperature", "top_k", "top_p", "text_temperature", "text_top_k", "audio_temperature",
                   "audio_top_k")


def _voiced_span(pcm: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Start and end (seconds) of the part of a clip louder than -40 dBFS: where its words can be."""
    loud = np.flatnonzero(np.abs(pcm) > 0.01)
    if loud.size == 0:
        return 0.0, len(pcm) / sample_rate
    return loud[0] / sample_rate, (loud[-1] + 1) / sample_rate


class Dia2TextToSpeech(SpeechModel):
    """Dia2 (``nari-labs/Dia2-1B``, ``nari-labs/Dia2-2B``) with the Mimi codec."""

    family = "dia2"
    default_chunk_seconds = 0.32  # 4 frames
    _has_words = True

    def __init__(self, model, codec, tokenizer, *, model_id: str, variant: str = "dia2", max_batch: int = 4,
                 max_queue: int | None = None, step_mode: str | None = None):
        super().__init__(model, codec, Dia2Generator(model, max_batch=max_batch, step_mode=step_mode),
                         model_id=model_id, variant=variant, max_queue=max_queue)
        self.tokenizer = tokenizer

    def generate(
        self,
        script: str | Sequence[str],
        *,
        seed: int | Sequence[int | None] | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        text_temperature: float | None = None,
        text_top_k: int | None = None,
        audio_temperature: float | None = None,
        audio_top_k: int | None = None,
        cfg_scale: float = 2.0,
        cfg_filter_k: int = 50,
        max_new_tokens: int | None = None,
        prefix_speaker_1: Any = None,
        prefix_transcript_1: Any = None,
        prefix_speaker_2: Any = None,
        prefix_transcript_2: Any = None,
        prefix_sample_rate: int | None = None,
        include_prefix: bool = False,
        prefix_mode: str = "faster-dia",
        voice: Any = None,
        voices: dict[str, Any] | None = None,
        continuity: str = DEFAULT_CONTINUITY,
        runaway_guard: bool = True,
        progress: Callable[[Progress], None] | None = None,
    ) -> Speech | list[Speech]:
        """Generate speech for one script or a batch. Defaults as the reference: text 0.6 / top-k 50, audio
        0.8 / top-k 50, cfg_scale 2.0 (1 turns guidance off and runs one branch), cfg_filter_k 50.
        ``temperature``/``top_k`` set text and audio alike; the specific settings win. Ranges: temperatures
        0–5 (0 greedy), top-k values 1–65536, cfg_scale (0, 30]. ``max_new_tokens`` caps the result at that
        many frames (12.5 = 1 s, at most 1500). The result's ``timestamps`` list (word, start second) for the
        script's words.

        Voice prefixes: ``prefix_speaker_1`` (and optionally ``prefix_speaker_2``) are audio (a path, encoded
        bytes, a float array with ``prefix_sample_rate``) or Mimi codes ``[frames, 32]``; the script continues
        after them. ``prefix_transcript_N`` says what the prefix says: a string (its words are spread evenly
        over the clip's voiced part), or ``(word, start_s, end_s)`` tuples. Without one, prefix audio is
        transcribed with the speech recognizer (``self.asr``) and its word start times place the words, as
        the reference does with Whisper; codes need a transcript. A given transcript always wins. The result
        starts after the prefix unless ``include_prefix``.

        ``prefix_mode``: ``"faster-dia"`` (default) teacher-forces every prefix frame, including the last
        16/18 delayed cells, feeds each prefix position to the model once, and forces every prefix word's
        new word exactly once; the result starts at the first frame after the prefix. ``"reference"``
        reproduces the official runtime, quirks included: position P-1 (P = prefix frames) is run twice (two
        cache entries, the text one step ahead), the last 16/18 delayed prefix frames are regenerated rather
        than forced, and the result starts at frame P-1. Use it to compare with the official code.

        ``voice`` gives speaker 1 a voice (a stored voice's name, a clip's path, or a built-in name such as
        ``"alloy"``: a fixed seed); ``voices={"S1": ..., "S2": ...}`` both speakers: each becomes that
        speaker's prefix, its words placed by their stored times.

        A script longer than about 900 characters (or than the context holds) is spoken in chunks of about
        500 characters joined into one result (see faster_dia.longform); ``continuity`` is ``"first"`` or
        ``"previous"``. Without ``max_new_tokens`` the runaway guard caps a request at 3 s + 0.25 s per
        character of its script (``runaway_guard=False``: the whole context)."""
        return self._generate(script, dict(
            seed=seed, temperature=temperature, top_k=top_k, top_p=top_p, text_temperature=text_temperature,
            text_top_k=text_top_k, audio_temperature=audio_temperature, audio_top_k=audio_top_k,
            cfg_scale=cfg_scale, cfg_filter_k=cfg_filter_k, max_new_tokens=max_new_tokens,
            prefix_speaker_1=prefix_speaker_1, prefix_transcript_1=prefix_transcript_1,
            prefix_speaker_2=prefix_speaker_2, prefix_transcript_2=prefix_transcript_2,
            prefix_sample_rate=prefix_sample_rate, include_prefix=include_prefix, prefix_mode=prefix_mode,
            voice=voice, voices=voices, continuity=continuity, runaway_guard=runaway_guard), progress)

    def openai_options(self, fields: dict[str, Any]) -> dict[str, Any]:
        # top_p does not apply (Dia2 samples with top-k); cfg_filter_top_k is Dia2's guidance filter size.
        options = {name: fields[name] for name in ("seed", "temperature", "top_k", "cfg_scale", "max_new_tokens")
                   if fields.get(name) is not None}
        if fields.get("cfg_filter_top_k") is not None:
            options["cfg_filter_k"] = fields["cfg_filter_top_k"]
        return options

    def _words(self, state: Dia2SlotState) -> list[tuple[str, float]]:
        return state.timestamps

    def _input_tokens(self, request: Dia2Request) -> int:
        return sum(len(e.tokens) for e in request.entries)

    # ------------------------------------------------------------------ requests

    @classmethod
    def _sampling(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``temperature``/``top_k`` (the names Dia-1.6B and OpenAI-style clients use) set text and audio alike,
        as the reference command line does; the specific settings win."""
        if options["top_p"] is not None:
            raise InvalidInputError("top_p does not apply to Dia2 (it samples with top-k).", param="top_p")

        def pick(specific: str, shared: str, default: Any) -> Any:
            for name in (specific, shared):
                if options[name] is not None:
                    return options[name], name
            return default, specific

        sampling = {}
        for kind, default_t in (("text", 0.6), ("audio", 0.8)):
            value, name = pick(f"{kind}_temperature", "temperature", default_t)
            sampling[f"{kind}_temperature"] = check_number(name, value, *TEMPERATURE_RANGE)
            value, name = pick(f"{kind}_top_k", "top_k", 50)
            sampling[f"{kind}_top_k"] = check_integer(name, value, *TOP_K_RANGE)
        sampling["cfg_scale"] = check_number("cfg_scale", options["cfg_scale"], *CFG_SCALE_RANGE, low_open=True)
        sampling["cfg_filter_k"] = check_integer("cfg_filter_k", options["cfg_filter_k"], *TOP_K_RANGE)
        return sampling

    def _requests(self, scripts: list[str], options: dict[str, Any], *, text_streaming: bool = False
                  ) -> list[Dia2Request]:
        speakers, voice_seed = self._voice_choice(options["voice"], options["voices"])
        if speakers:
            if options["prefix_speaker_1"] is not None or options["prefix_speaker_2"] is not None:
                raise InvalidInputError("Give either a voice or prefix_speaker_1/2, not both.", param="prefix_speaker_1")
            options = dict(options)
            for n, speaker in ((1, "S1"), (2, "S2")):
                if speaker in speakers:
                    chosen = speakers[speaker]
                    options[f"prefix_speaker_{n}"] = chosen.codes
                    options[f"prefix_transcript_{n}"] = chosen.words or chosen.transcript
        if options["seed"] is None and voice_seed is not None:
            options = {**options, "seed": voice_seed}
        seeds = per_item(options["seed"], len(scripts), "seed", offset_ints=True)
        sampling = self._sampling(options)
        max_new = options["max_new_tokens"]
        if max_new is not None:
            max_new = check_integer("max_new_tokens", max_new, 1, self.config.max_context_steps)
        prefix_mode = options["prefix_mode"]
        if prefix_mode not in PREFIX_MODES:
            raise InvalidInputError(
                f"prefix_mode must be one of {', '.join(PREFIX_MODES)}; got {prefix_mode!r}.", param="prefix_mode"
            )
        head, prefix_codes, steps = self._prefixes(options)
        guard = bool(options["runaway_guard"]) and max_new is None
        return [
            Dia2Request(
                entries=head + ([] if text_streaming else self._entries(script)), seed=resolve_seed(seed),
                prefix_codes=prefix_codes, text_streaming=text_streaming,
                prefix_new_word_steps=tuple(steps), prefix_mode=prefix_mode,
                max_new_frames=min(runaway_cap(len(script)), self.config.max_context_steps) if guard else max_new,
                include_prefix=bool(options["include_prefix"]), **sampling,
            )
            for script, seed in zip(scripts, seeds, strict=True)
        ]

    # ------------------------------------------------------------------ long scripts

    def _is_long(self, script: str, options: dict[str, Any]) -> bool:
        if not isinstance(script, str) or not script.strip():
            return False
        return len(script) > LONG_FORM_THRESHOLD_CHARS or self._text_steps(script) > self._step_budget()

    def _chunk_fits(self, chunk: str, options: dict[str, Any]) -> bool:
        return len(chunk) <= LONG_FORM_CHUNK_CHARS and self._text_steps(chunk) <= self._step_budget()

    def _text_steps(self, script: str) -> int:
        try:
            return sum(len(e.tokens) for e in self._entries(script))
        except InvalidInputError:
            return 0  # the request itself reports what is wrong with the script

    def _step_budget(self) -> int:
        from .generator import FLUSH_EXTRA

        c = self.config
        return c.max_context_steps - 2 - c.max_delay - FLUSH_EXTRA

    def _reference_chunk(self, result: Any) -> Any:
        if result.seconds > MAX_REFERENCE_SECONDS or not result.codes.shape[0] or not result.words:
            return None
        return result

    def _with_reference(self, options: dict[str, Any], reference: Any) -> dict[str, Any]:
        # The chunk's words with their times, each ending where the next starts (the last at the chunk's end).
        starts = [start for _, start in reference.words] + [reference.seconds]
        timed = [(word, start, max(start, starts[i + 1])) for i, (word, start) in enumerate(reference.words)]
        return {**options, "prefix_speaker_1": reference.codes, "prefix_transcript_1": timed,
                "prefix_speaker_2": None, "prefix_transcript_2": None, "prefix_sample_rate": None,
                "include_prefix": False, "voice": None, "voices": None}

    def _has_voice(self, options: dict[str, Any]) -> bool:
        return super()._has_voice(options) or options.get("prefix_speaker_1") is not None

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def _entries(self, script: str, param: str = "input", *, continuation: bool = False):
        """The state machine's entries for a script (``continuation``: a later piece of a streamed one)."""
        from .text import parse_script, speaker_token_ids

        if not isinstance(script, str):
            raise InvalidInputError(f"A script must be a string, got {type(script).__name__}.", param=param)
        if not script.strip() and not continuation:
            raise InvalidInputError("The script is empty.", param=param)
        ids = speaker_token_ids(self._encode, self.config.text_new_word_token_id)
        return parse_script(script, self._encode, speaker_ids=ids, new_word_token_id=self.config.text_new_word_token_id,
                            continuation=continuation)

    def _prefixes(self, options: dict[str, Any]):
        """Entries, aligned codes and forced new-word steps of the voice prefixes (both speakers joined)."""
        if options["prefix_speaker_2"] is not None and options["prefix_speaker_1"] is None:
            raise InvalidInputError("prefix_speaker_2 needs prefix_speaker_1 too.", param="prefix_speaker_2")
        if options["prefix_speaker_1"] is None:
            return [], None, []
        parts, head, steps = [], [], []
        offset = 0
        for n, speaker in ((1, "[S1]"), (2, "[S2]")):
            audio = options[f"prefix_speaker_{n}"]
            if audio is None:
                continue
            codes, entries, forced = self._prefix(audio, options[f"prefix_transcript_{n}"], speaker, offset,
                                                  options["prefix_sample_rate"])
            parts.append(codes)
            head += entries
            steps += forced
            offset += int(codes.shape[0])
        return head, torch.cat(parts), steps

    def _prefix(self, audio: Any, transcript: Any, speaker: str, frame_offset: int, sample_rate: int | None):
        """Mimi codes, entries and forced new-word steps of one speaker's voice prefix."""
        from .text import prefix_entries

        param = "prefix_speaker_1" if speaker == "[S1]" else "prefix_speaker_2"
        prompt = coerce_prompt_audio(audio, self.codec, param=param, sample_rate=sample_rate,
                                     rate_param="prefix_sample_rate")
        if transcript is None or (isinstance(transcript, str) and not transcript.strip()):
            words, span = self._recognized_words(prompt.pcm, param), None
        elif isinstance(transcript, str):
            words = [w for w in transcript.split() if w not in ("[S1]", "[S2]")]
            span = _voiced_span(prompt.pcm, self.sample_rate) if prompt.pcm is not None else \
                (0.0, prompt.codes.shape[0] / self.frame_rate)
        else:
            words, span = list(transcript), None
        entries, steps = prefix_entries(words, speaker, self._encode, start_frame_offset=frame_offset,
                                        voiced_span=span)
        return prompt.codes, entries, steps

    def _recognized_words(self, pcm: np.ndarray | None, param: str) -> list[tuple[str, float, float]]:
        """(word, start s, end s) of a prefix given without its transcript, from the speech recognizer; the
        word start times place the words on the frame grid (the reference does this with Whisper)."""
        transcript_param = param.replace("speaker", "transcript")
        if pcm is None:
            raise InvalidInputError(
                f"{param} is given as codes without its transcript ({transcript_param}): the model continues the "
                "prefix's words, and only audio can be transcribed automatically.", param=param,
            )
        try:
            result = self._transcribe(pcm, param)
        except ImportError as error:  # faster_dia.asr or its recognizer package is missing
            raise InvalidInputError(
                f"{param} has no transcript ({transcript_param}) and speech recognition is not installed to "
                f"transcribe it ({error}); pass {transcript_param}.", param=param,
            ) from error
        except FasterDiaError as error:
            # No recognizer (not installed, its model not downloaded) is the caller's to fix by giving the
            # transcript: a bad request. Anything else keeps its kind.
            kind = InvalidInputError if isinstance(error, (InvalidInputError, ModelNotFoundError)) else type(error)
            raise kind(
                f"{param} has no transcript ({transcript_param}) and could not be transcribed: {error.message}",
                param=param,
            ) from error
        words = [(w.word, float(w.start), float(w.end)) for w in result.words if w.word.strip()]
        if not words:
            log.warning("no words recognized in %s; it conditions the voice without text", param)
        return words


def load(model: str | os.PathLike, *, revision: str | None, device: torch.device, dtype: torch.dtype,
         codec: str | os.PathLike | None, codec_revision: str | None, max_batch: int | None,
         max_queue: int | None, step_mode: str) -> Dia2TextToSpeech:
    """Load a Dia2 checkpoint, its tokenizer and the Mimi codec (the family's entry in the registry)."""
    from ...codecs.mimi import MimiCodec
    from ...loading import default_max_batch
    from .checkpoint import load_checkpoint
    from .model import Dia2Model
    from .tokenizer import load_tokenizer

    checkpoint = load_checkpoint(model, revision=revision)
    mimi = MimiCodec.load(codec, revision=codec_revision, device=device)
    network = Dia2Model.from_state_dict(checkpoint.config, checkpoint.state_dict, dtype=dtype, device=device)
    del checkpoint.state_dict
    tokenizer = load_tokenizer(checkpoint.tokenizer_directory)
    if max_batch is None:
        max_batch = default_max_batch(device, Dia2Generator.cache_bytes_per_request(checkpoint.config, dtype))
    c = checkpoint.config
    variant = f"dia2 ({c.decoder_layers}-layer transformer, {c.decoder_hidden_size} wide)"
    log.info("loaded %s (%s) on %s in %s", checkpoint.source, variant, device, str(dtype).removeprefix("torch."))
    return Dia2TextToSpeech(network, mimi, tokenizer, model_id=checkpoint.source, variant=variant,
                            max_batch=max_batch, max_queue=max_queue, step_mode=step_mode)
