"""Dialogue scripts: ``[S1] Did you hear? (laughs) [S2] I did.``

Dia-1.6B reads a script as UTF-8 bytes with ``[S1]`` and ``[S2]`` replaced by the single tokens 1 and 2.
Non-verbal tags in parentheses are plain text. This module validates a script and turns it into tokens.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from .errors import InvalidInputError

log = logging.getLogger(__name__)

SPEAKER_TAGS = {"[S1]": 1, "[S2]": 2}
_BRACKET_TAG = re.compile(r"\[[^\[\]\n]{0,32}\]")
#: Non-verbal sounds the published Dia-1.6B checkpoints were trained with (from the model card).
NON_VERBAL_TAGS = (
    "laughs", "clears throat", "sighs", "gasps", "coughs", "singing", "sings", "mumbles", "beep", "groans",
    "sniffs", "claps", "screams", "inhales", "exhales", "applause", "burps", "humming", "sneezes", "chuckle",
    "whistles",
)


def normalize_script(script: str, *, param: str = "input") -> str:
    """Validate a script and make sure it starts with a speaker tag. Raises InvalidInputError."""
    if not isinstance(script, str):
        raise InvalidInputError(f"A script must be a string, got {type(script).__name__}.", param=param)
    text = script.strip()
    if not text:
        raise InvalidInputError("The script is empty.", param=param)
    for match in _BRACKET_TAG.finditer(text):
        tag = match.group(0)
        if tag not in SPEAKER_TAGS:
            hint = " (tags are case-sensitive)" if tag.upper() in SPEAKER_TAGS else ""
            raise InvalidInputError(
                f"Unknown tag {tag} at character {match.start()}: only [S1] and [S2] are speaker tags{hint}; "
                "write non-verbal sounds in parentheses, e.g. (laughs).",
                param=param,
            )
    bad = [ch for ch in text if ch in "\x00\x01\x02"]
    if bad:
        raise InvalidInputError("The script contains control characters (bytes 0-2), which are reserved.", param=param)
    if not text.startswith(tuple(SPEAKER_TAGS)):
        log.debug("script does not start with a speaker tag; prepending [S1]")
        text = "[S1] " + text
    return text


def encode_script(text: str) -> list[int]:
    """Byte tokens of a normalized script: UTF-8 bytes, speaker tags as tokens 1 and 2."""
    data = text.encode("utf-8")
    for tag, token in SPEAKER_TAGS.items():
        data = data.replace(tag.encode(), bytes([token]))
    return list(data)


def join_prompt_transcript(transcript: str, script: str) -> str:
    """The reference requires the voice prompt's transcript in front of the script it continues."""
    return f"{transcript}\n{script}"


# ---------------------------------------------------------------------- long scripts

_TURN = re.compile(r"(\[S[12]\])")
# A sentence ends at . ! ? … (with closing quotes or brackets) before whitespace; a clause at , ; : or a dash.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+|\s+(?=[—–]\s)")
_TAG = re.compile(r"<[^<>]*>")


def speaker_turns(script: str) -> list[tuple[str, str]]:
    """``[(tag, text)]`` for each speaker turn of a script; text before the first tag belongs to ``[S1]``."""
    turns: list[tuple[str, str]] = []
    speaker = "[S1]"
    for piece in _TURN.split(script):
        if piece in SPEAKER_TAGS:
            speaker = piece
        elif piece.strip():
            turns.append((speaker, " ".join(piece.split())))
    return turns


def _split_at(text: str, pattern: re.Pattern[str]) -> list[str]:
    """``text`` cut after each match of ``pattern``, never inside a ``<...>`` tag; pieces keep their marks."""
    protected = {m.start(): m.end() for m in _TAG.finditer(text)}
    pieces, start = [], 0
    for match in pattern.finditer(text):
        if any(a <= match.start() < b for a, b in protected.items()):
            continue
        pieces.append(text[start:match.start()].strip())
        start = match.end()
    pieces.append(text[start:].strip())
    merged: list[str] = []
    for piece in (p for p in pieces if p):
        if merged and not _TAG.sub("", piece).strip():
            merged[-1] = f"{merged[-1]} {piece}"  # a break on its own stays with the words before it
        else:
            merged.append(piece)
    return merged


_LEVELS = (_SENTENCE_END, _CLAUSE_END, re.compile(r"\s+"))


class _Packer:
    """Fills chunks greedily with whole pieces of text; a piece too big for a chunk of its own starts a new
    chunk and is cut at the next finer level (sentences, clauses, words, characters)."""

    def __init__(self, fits: Callable[[str], bool]):
        self.fits = fits
        self.chunks: list[str] = []
        self.current = ""
        self.speaker: str | None = None

    def add(self, speaker: str, text: str, level: int = 0) -> None:
        joined = f"{self.current} {text}" if speaker == self.speaker else f"{self.current} {speaker} {text}"
        if self.current and self.fits(joined):
            self.current, self.speaker = joined, speaker
            return
        if self.fits(f"{speaker} {text}"):
            self._flush()
            self.current, self.speaker = f"{speaker} {text}", speaker
            return
        self._flush()
        for finer in range(level, len(_LEVELS)):
            pieces = _split_at(text, _LEVELS[finer])
            if len(pieces) > 1:
                for piece in pieces:
                    self.add(speaker, piece, finer + 1)
                return
        if len(text) <= 1:
            raise InvalidInputError(
                "Not even one word of the script fits in a request next to the voice prompt's transcript; shorten "
                "the transcript.", param="audio_prompt_transcript")
        # One "word" that does not fit alone (no spaces at all): cut it where it must be cut.
        half = len(text) // 2
        self.add(speaker, text[:half], len(_LEVELS))
        self.add(speaker, text[half:], len(_LEVELS))

    def _flush(self) -> None:
        if self.current:
            self.chunks.append(self.current)
        self.current, self.speaker = "", None

    def done(self) -> list[str]:
        self._flush()
        return self.chunks


def split_script(script: str, fits: Callable[[str], bool]) -> list[str]:
    """Cut a script into chunks that each satisfy ``fits`` (the model's budget for one request), at speaker
    turns first, then at sentence ends, then at clause marks, then between words. Every chunk starts with its
    speaker's tag, so a turn cut in two keeps its speaker."""
    packer = _Packer(fits)
    for speaker, text in speaker_turns(script):
        packer.add(speaker, text)
    return packer.done()
