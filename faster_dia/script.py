"""Dialogue scripts: ``[S1] Did you hear? (laughs) [S2] I did.``

Dia-1.6B reads a script as UTF-8 bytes with ``[S1]`` and ``[S2]`` replaced by the single tokens 1 and 2.
Non-verbal tags in parentheses are plain text. This module validates a script and turns it into tokens.
"""

from __future__ import annotations

import logging
import re

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
