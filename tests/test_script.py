"""Dialogue script rules."""

from __future__ import annotations

import logging
import re

import pytest

from faster_dia.errors import InvalidInputError
from faster_dia.script import encode_script, join_prompt_transcript, normalize_script


def test_speaker_tags_are_single_tokens_and_the_rest_is_utf8_bytes():
    assert encode_script("[S1] Hé (laughs) [S2]") == [1, 32, 72, 0xC3, 0xA9, 32, *b"(laughs)", 32, 2]


@pytest.mark.parametrize("script", ["", "   ", "\n\t"])
def test_empty_scripts_are_errors(script):
    with pytest.raises(InvalidInputError, match="empty"):
        normalize_script(script)


def test_a_script_without_a_leading_speaker_tag_gets_s1(caplog):
    with caplog.at_level(logging.DEBUG, logger="faster_dia.script"):
        assert normalize_script("  Hello there. ") == "[S1] Hello there."
    assert "prepending [S1]" in caplog.text
    assert normalize_script("[S2] Hi") == "[S2] Hi"


@pytest.mark.parametrize("tag", ["[S3]", "[s1]", "[laughs]", "[]"])
def test_unknown_bracket_tags_are_errors(tag):
    with pytest.raises(InvalidInputError, match=re.escape(f"Unknown tag {tag}")):
        normalize_script(f"[S1] Hello {tag} there")


def test_non_verbal_tags_pass_through():
    assert normalize_script("[S1] Well (clears throat) ok (laughs)") == "[S1] Well (clears throat) ok (laughs)"


def test_reserved_control_bytes_are_errors():
    with pytest.raises(InvalidInputError, match="control characters"):
        normalize_script("[S1] a\x01b")


def test_prompt_transcript_goes_in_front():
    assert join_prompt_transcript("[S1] Me.", "[S2] You.") == "[S1] Me.\n[S2] You."
