"""Dia2 text side: script parsing, the text state machine and voice-prefix transcripts.

Dia2 never predicts text tokens. Each step it predicts one binary *action* (0 = keep padding, 1 = start the
next word) and a small host-side state machine turns the actions into the two text streams the model reads
at the next step: the *main* stream (the current word's tokens, then pads) and the *second* stream (the
new-word marker, then the tokens of the word two words ahead, as a lookahead). The machine is Kyutai's TTS
state machine as ported by the Dia2 reference runtime, quirks included; each quirk is noted where it is
implemented.

Pure Python, no torch: one :class:`TextStateMachine` per request, driven with
``main, second = machine.process(t, action)`` once per step.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ...errors import InvalidInputError
from .config import Dia2Config

#: Tokenizer callable: text -> token ids, without special tokens (``tok.encode(s, add_special_tokens=False)``).
Encode = Callable[[str], list[int]]

FRAME_RATE = 12.5
SPEAKER_TAGS = ("[S1]", "[S2]")
#: Longest accepted ``<break time="Xs"/>``. The reference has no limit; 10 s (125 steps) is already far past
#: any natural pause and keeps a typo like ``time="100s"`` from eating the whole 120 s context.
MAX_BREAK_SECONDS = 10.0
#: Padding steps the model may take in a row before a new word is forced. The reference runtime hardcodes 6
#: and ignores the checkpoint's ``max_pad``.
MAX_PADDING = 6
#: Forced pads at the start of generation (reference ``GenerationConfig.initial_padding``).
INITIAL_PADDING = 2
#: The reference shifts speaker 1's prefix new-word steps by 3 ("legacy BOS/PAD offset") and speaker 2's by 0.
LEGACY_PREFIX_STEP_OFFSET = {"[S1]": 3, "[S2]": 0}

# The same tag rule as Dia-1.6B scripts: anything in square brackets must be a speaker tag.
_BRACKET_TAG = re.compile(r"\[[^\[\]\n]{0,32}\]")
# Stricter than the reference (whose unescaped "." accepts "1x5s" and then crashes in float()).
_BREAK_TAG = re.compile(r'<break\s+time="([0-9]+(?:\.[0-9]*)?)s"\s*/?>')
_BREAK_START = re.compile(r"<\s*break\b", re.IGNORECASE)


@dataclass
class Entry:
    """One unit of the script queue: a word, or a pause when ``tokens`` is empty.

    ``padding`` is the number of steps the machine is forced to pad once the entry is consumed (the step
    that consumes it included). For a script word it is ``len(tokens)`` (reference ``padding_between`` 1), so
    the next word cannot start before this one's tokens are all fed plus one pad; for a pause it is the
    pause length in steps.
    """

    tokens: list[int]
    text: str
    padding: int = 0


@dataclass(frozen=True)
class TextTokenIds:
    """Special ids of the text streams and of the action head (defaults = the published checkpoints)."""

    new_word: int = 2
    pad: int = 3
    bos: int = 1
    zero: int = 7
    action_new_word: int = 1
    action_pad: int = 0

    @classmethod
    def from_config(cls, config: Dia2Config) -> TextTokenIds:
        return cls(
            new_word=config.text_new_word_token_id,
            pad=config.text_pad_token_id,
            bos=config.text_bos_token_id,
            zero=config.text_zero_token_id,
            action_new_word=config.action_new_word_token_id,
            action_pad=config.action_pad_token_id,
        )


# --------------------------------------------------------------------------------------------- script parsing


def normalize_text(text: str) -> str:
    """The reference's two replacements: curly apostrophe to ASCII, and ":" to a space."""
    return text.replace("\u2019", "'").replace(":", " ")


def speaker_token_ids(encode: Encode, new_word_token_id: int = 2) -> dict[str, int]:
    """Ids of ``[S1]``/``[S2]``: the tag's single token, else the new-word id (the reference's fallback)."""
    ids = {}
    for tag in SPEAKER_TAGS:
        tokens = list(encode(tag))
        ids[tag] = tokens[0] if len(tokens) == 1 else new_word_token_id
    return ids


def _check_tags(text: str) -> None:
    for match in _BRACKET_TAG.finditer(text):
        tag = match.group(0)
        if tag not in SPEAKER_TAGS:
            hint = " (tags are case-sensitive)" if tag.upper() in SPEAKER_TAGS else ""
            raise InvalidInputError(
                f"Unknown tag {tag} at character {match.start()}: only [S1] and [S2] are speaker tags{hint}; "
                "write non-verbal sounds in parentheses, e.g. (laughs).",
                param="input",
            )


def _break_steps(match: re.Match[str], frame_rate: float, max_seconds: float) -> int:
    seconds = float(match.group(1))
    if seconds > max_seconds:
        raise InvalidInputError(
            f"Break {match.group(0)} is {seconds:g} s long; breaks may be at most {max_seconds:g} s.",
            param="input",
        )
    return int(round(seconds * frame_rate))


def _split_breaks(text: str) -> list[str | re.Match[str]]:
    """Text segments and break-tag matches in order; a ``<break`` that is not a well-formed tag is an error."""
    parts: list[str | re.Match[str]] = []
    position = 0
    for match in _BREAK_TAG.finditer(text):
        parts.append(text[position : match.start()])
        parts.append(match)
        position = match.end()
    parts.append(text[position:])
    for part in parts:
        if isinstance(part, str) and (bad := _BREAK_START.search(part)):
            snippet = part[bad.start() : bad.start() + 40].split(">")[0]
            raise InvalidInputError(
                f'Malformed break tag "{snippet}...": write a pause as <break time="1.5s"/> (seconds).',
                param="input",
            )
    return parts


def parse_script(
    script: str,
    encode: Encode,
    *,
    speaker_ids: Mapping[str, int] | None = None,
    new_word_token_id: int = 2,
    frame_rate: float = FRAME_RATE,
    padding_between: int = 1,
    max_break_seconds: float = MAX_BREAK_SECONDS,
    continuation: bool = False,
) -> list[Entry]:
    """Turn a dialogue script into the state machine's entries, as the reference does.

    * ``’`` becomes ``'`` and ``:`` a space; the text is split on whitespace and on ``<break time="Xs"/>``
      tags. A break becomes a tokenless entry of ``round(X * frame_rate)`` steps (none when that rounds to 0);
      ``0 <= X <= max_break_seconds``.
    * A whitespace-delimited ``[S1]``/``[S2]`` is not a word: the next word is encoded as ``"[S1] word"`` so
      the tag merges with it (and the word keeps the tokenizer's leading-space form). A tag with no word
      after it is dropped, as in the reference.
    * Every other whitespace-delimited piece is one word encoded on its own, parentheses kept: ``(laughs)``
      is a word, ``(clears throat)`` is the two words ``(clears`` and ``throat)``.
    * The first word gets the ``[S1]`` id inserted in front unless its tokens already start with it, so a
      script starting with ``[S2]`` begins with the tokens ``[S1] [S2] ...`` (reference quirk, kept: the
      model was trained that way). ``continuation=True`` skips this, for further chunks of a streamed script.
    * A word's ``padding`` is ``max(0, padding_between + len(tokens) - 1)``.

    ``encode`` must not add special tokens. ``speaker_ids`` maps ``"[S1]"``/``"[S2]"`` to ids (default:
    :func:`speaker_token_ids`). Raises :class:`InvalidInputError` for an empty script, a script with no
    words, an unknown ``[...]`` tag, a malformed break tag or a break longer than ``max_break_seconds``
    (an empty or wordless chunk is allowed with ``continuation=True``).
    """
    if not isinstance(script, str):
        raise InvalidInputError(f"A script must be a string, got {type(script).__name__}.", param="input")
    text = normalize_text(script).strip()
    if not text and not continuation:
        raise InvalidInputError("The script is empty.", param="input")
    _check_tags(text)
    ids = dict(speaker_ids) if speaker_ids is not None else speaker_token_ids(encode, new_word_token_id)

    entries: list[Entry] = []
    pending_tag: str | None = None
    first_word = not continuation
    for part in _split_breaks(text):
        if isinstance(part, re.Match):
            steps = _break_steps(part, frame_rate, max_break_seconds)
            if steps > 0:
                entries.append(Entry(tokens=[], text="", padding=steps))
            continue
        for word in part.split():
            if word in SPEAKER_TAGS:
                pending_tag = word
                continue
            tokens = list(encode(f"{pending_tag} {word}" if pending_tag else word))
            pending_tag = None
            if first_word:
                if not tokens or tokens[0] != ids["[S1]"]:
                    tokens.insert(0, ids["[S1]"])
                first_word = False
            entries.append(Entry(tokens=tokens, text=word, padding=max(0, padding_between + len(tokens) - 1)))
    if not continuation and not any(entry.tokens for entry in entries):
        raise InvalidInputError("The script has no words to speak.", param="input")
    return entries


# ---------------------------------------------------------------------------------------- text state machine


@dataclass
class _Counters:
    padding_budget: int  # pads the model may still choose before a new word is forced
    forced_padding: int  # pads still imposed (after a word: its tokens + 1; after a break: its length)
    pending: deque[int] = field(default_factory=deque)  # current word's tokens not yet fed (main stream)
    lookahead: deque[int] = field(default_factory=deque)  # tokens queued for the second stream


class TextStateMachine:
    """Turns one request's actions into its two text streams (reference ``StateMachine`` + ``State``).

    ``process(t, action)`` takes the action sampled at step ``t`` and returns ``(main, second)``, the text
    tokens to feed at step ``t + 1``. Step 0 is fed :attr:`initial_tokens`; the unconditional CFG branch is
    fed :attr:`unconditional_tokens` at every step.

    Public state: ``entries`` (the queue still to consume), ``transcript`` (``(word, step)`` for every word
    consumed, ``step`` being the ``t`` whose action consumed it), ``consumption_times`` (the step of every
    consumed entry, pauses included) and ``end_step`` (the first step at which a new word was due and no
    entry was left; ``None`` until then).

    Streaming text input (``streaming=True``): the script arrives in pieces through :meth:`append`. Step only
    while :meth:`ready` is true, i.e. while more than ``second_stream_ahead`` entries are queued (so the
    lookahead is filled and the end is not declared early), until :meth:`close`; then drain as usual.
    """

    def __init__(
        self,
        entries: Iterable[Entry] = (),
        *,
        config: Dia2Config | None = None,
        token_ids: TextTokenIds | None = None,
        max_padding: int = MAX_PADDING,
        initial_padding: int = INITIAL_PADDING,
        second_stream_ahead: int | None = None,
        streaming: bool = False,
    ) -> None:
        if token_ids is None:
            token_ids = TextTokenIds.from_config(config) if config is not None else TextTokenIds()
        if second_stream_ahead is None:
            second_stream_ahead = config.second_stream_ahead if config is not None else 2
        if max_padding < 0 or initial_padding < 0 or second_stream_ahead < 0:
            raise ValueError("max_padding, initial_padding and second_stream_ahead must be >= 0")
        self.ids = token_ids
        self.max_padding = max_padding
        self.initial_padding = initial_padding
        self.second_stream_ahead = second_stream_ahead
        self.entries: deque[Entry] = deque(entries)
        self.closed = not streaming
        self.end_step: int | None = None
        self.transcript: list[tuple[str, int]] = []
        self.consumption_times: list[int] = []
        # The initial padding is both forced and the whole budget: without a prefix the first word is
        # consumed at step ``initial_padding`` whatever the model predicts.
        self._state = _Counters(padding_budget=initial_padding, forced_padding=initial_padding)

    # ------------------------------------------------------------------ fixed text

    @property
    def initial_tokens(self) -> tuple[int, int]:
        """(main, second) fed at step 0 on the conditional branch: (BOS, pad)."""
        return self.ids.bos, self.ids.pad

    @property
    def unconditional_tokens(self) -> tuple[int, int]:
        """(main, second) fed at every step on the unconditional CFG branch: (zero, pad)."""
        return self.ids.zero, self.ids.pad

    # ------------------------------------------------------------------ streaming input

    def append(self, entries: Iterable[Entry]) -> None:
        """Queue more entries (streaming text input). Parse later chunks with ``continuation=True``."""
        if self.closed:
            raise RuntimeError("the text input is closed; no entries can be appended")
        self.entries.extend(entries)

    def close(self) -> None:
        """No more text will come: the machine may now run out of entries and set ``end_step``."""
        self.closed = True

    def ready(self) -> bool:
        """Whether :meth:`process` may be called now (always, unless streaming input is still open)."""
        return self.closed or len(self.entries) > self.second_stream_ahead

    @property
    def finished(self) -> bool:
        return self.end_step is not None

    # ------------------------------------------------------------------ stepping

    def process(self, step: int, action: int, *, forced: bool = False) -> tuple[int, int]:
        """Apply the action of step ``step``; return the (main, second) text tokens for step ``step + 1``.

        ``action`` is the action head's output (1 = new word, 0 = pad); the text ids new_word/pad are accepted
        too, anything else counts as pad. ``forced=True`` is teacher forcing (prefix warm-up): the action is
        taken as given, bypassing the forced padding and the padding budget, except that a new word while the
        current word still has tokens to feed is dropped (reference behaviour).
        """
        if not self.ready():
            raise RuntimeError("streaming text input: wait for more entries or close() before stepping")
        token = self._sanitize(action)
        token = self._constrain(token, forced)
        token = self._consume(step, token)
        main = self._emit(token)
        return self._multiplex(main)

    def _sanitize(self, action: int) -> int:
        ids = self.ids
        if action == ids.action_new_word:
            return ids.new_word
        if action == ids.action_pad:
            return ids.pad
        return action if action in (ids.new_word, ids.pad) else ids.pad

    def _constrain(self, token: int, forced: bool) -> int:
        """The reference's rules, in its order (the first that applies wins)."""
        s, ids = self._state, self.ids
        if s.pending:  # the current word is still being fed: pad, even when forced
            return ids.pad
        if forced:
            return token
        if s.forced_padding > 0:
            return ids.pad
        if s.padding_budget <= 0:
            return ids.new_word
        return token

    def _consume(self, step: int, token: int) -> int:
        """On a new word, pop the next entry. Returns the token that drives the output (new_word or pad)."""
        s, ids = self._state, self.ids
        if token != ids.new_word:
            return token
        if not self.entries:
            # Out of words: the end. The first time, new_word still goes out (on the second stream) as the
            # end marker; afterwards it is plain padding.
            first_time = self.end_step is None
            if first_time:
                self.end_step = step
            return ids.new_word if first_time and self.second_stream_ahead else ids.pad
        entry = self.entries.popleft()
        self.consumption_times.append(step)
        s.forced_padding = entry.padding
        if not entry.tokens:  # a pause: behaves as a pad step; the budget is not refilled
            return ids.pad
        self.transcript.append((entry.text, step))
        s.pending.extend(entry.tokens)
        if self.second_stream_ahead:
            # The lookahead is the word ``second_stream_ahead`` entries past the one just consumed, so the word
            # right after it never appears on the second stream (reference behaviour).
            s.lookahead.extend(self._tokens_ahead(self.second_stream_ahead))
        s.padding_budget = self.max_padding
        return token

    def _tokens_ahead(self, count: int) -> list[int]:
        for entry in self.entries:
            if entry.tokens:
                count -= 1
                if count == 0:
                    return entry.tokens
        return []

    def _emit(self, token: int) -> int:
        """Main-stream token before multiplexing: new_word, or on a pad step the next queued word token."""
        s, ids = self._state, self.ids
        if token == ids.new_word:
            return token
        if s.padding_budget > 0:
            s.padding_budget -= 1
        if s.forced_padding > 0:
            s.forced_padding -= 1
        return s.pending.popleft() if s.pending else ids.pad

    def _multiplex(self, main: int) -> tuple[int, int]:
        s, ids = self._state, self.ids
        if not self.second_stream_ahead:
            return main, main  # no second stream in the model: the reference feeds the same token twice
        if main == ids.new_word:
            # The marker moves to the second stream and the word's first token goes out at once.
            return (s.pending.popleft() if s.pending else ids.pad), ids.new_word
        return main, (s.lookahead.popleft() if s.lookahead else ids.pad)


# ------------------------------------------------------------------------------------------------ voice prefix


@dataclass(frozen=True)
class PrefixActions:
    """The teacher-forced actions of a voice prefix: new word at each prefix word's step, pad otherwise.

    ``new_word_steps`` has one step per prefix entry (the entries at the head of the machine's queue, in
    order), as :func:`prefix_entries` returns them. Two rules:

    * faster-dia (default): each prefix word's new word is *owed* from its step on and issued at the first
      forced step where the machine can take it, so every prefix entry is consumed exactly once and in order,
      even when its step falls while the previous word's tokens are still fed (speaker 2's first word after
      speaker 1's +3-shifted last word) or past the prefix's last frame (the +3 offset again). The caller
      keeps forcing while :meth:`pending` is true.
    * ``reference=True``: new word exactly at the listed steps; one that arrives while a word is still fed is
      dropped by the machine and its entry stays queued for the free steps (the reference's warm-up).
    """

    new_word_steps: tuple[int, ...]
    reference: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "new_word_steps", tuple(sorted(self.new_word_steps)))

    @property
    def entries(self) -> int:
        return len(self.new_word_steps)

    def consumed(self, machine: TextStateMachine) -> int:
        """Prefix entries the machine has consumed (they are at the head of its queue)."""
        return min(len(machine.consumption_times), self.entries)

    def pending(self, machine: TextStateMachine) -> bool:
        return self.consumed(machine) < self.entries

    def action(self, step: int, machine: TextStateMachine) -> int:
        """The action to force at ``step`` (feed it with ``machine.process(step, action, forced=True)``)."""
        ids = machine.ids
        if self.reference:
            due = step in self.new_word_steps
        else:
            due = bisect_right(self.new_word_steps, step) > self.consumed(machine)
        return ids.action_new_word if due else ids.action_pad


def prefix_entries(
    words: Sequence[tuple[str, float, float]] | Sequence[str],
    speaker: str,
    encode: Encode,
    *,
    frame_rate: float = FRAME_RATE,
    start_frame_offset: int = 0,
    step_offset: int | None = None,
    voiced_span: tuple[float, float] | None = None,
) -> tuple[list[Entry], list[int]]:
    """Entries and forced new-word steps for one speaker's voice prefix, from its transcript.

    ``words`` are ``(text, start_s, end_s)`` word timings of the prefix audio (as from a word-level aligner),
    or plain words. Plain words have no timing: they are spread evenly over ``voiced_span`` (start, end in
    seconds, required then), which only approximates where each word is spoken; plain words are split on
    whitespace, normalised like a script and stripped of ``[S1]``/``[S2]`` tags.

    Timing to steps, per word (reference): ``start = max(previous_end + 1, round(start_s * frame_rate))``,
    ``end = start + len(tokens)``, forced new-word step ``start - 1``; the next word's start is
    ``max(end + 1, round(next_start_s * frame_rate))`` (for the last word ``round(end_s * frame_rate)``) and
    ``padding = max(0, next_start - start - 1)``. The first word is encoded as ``"<speaker> word"``.

    The returned steps are shifted by ``start_frame_offset`` (the frame where this speaker's audio starts in
    the concatenated prefix: 0 for speaker 1, speaker 1's frame count for speaker 2) plus ``step_offset``.
    ``step_offset=None`` reproduces the reference: +3 for ``[S1]`` ("legacy BOS/PAD offset") and 0 for
    ``[S2]``, an inconsistency the published checkpoints were presumably used with; pass an int to choose.
    """
    if speaker not in SPEAKER_TAGS:
        raise InvalidInputError(f"Unknown prefix speaker {speaker!r}: use [S1] or [S2].", param="prefix")
    timed = _timed_words(words, voiced_span)
    offset = start_frame_offset + (LEGACY_PREFIX_STEP_OFFSET[speaker] if step_offset is None else step_offset)

    entries: list[Entry] = []
    steps: list[int] = []
    previous_end = 0
    for index, (text, start_s, end_s) in enumerate(timed):
        tokens = list(encode(f"{speaker} {text}" if index == 0 else text))
        start = max(previous_end + 1, int(round(start_s * frame_rate)))
        end = start + len(tokens)
        following = timed[index + 1][1] if index + 1 < len(timed) else end_s
        next_start = max(end + 1, int(round(following * frame_rate)))
        entries.append(Entry(tokens=tokens, text=text, padding=max(0, next_start - start - 1)))
        steps.append(start - 1 + offset)
        previous_end = end
    return entries, steps


def _timed_words(
    words: Sequence[tuple[str, float, float]] | Sequence[str], voiced_span: tuple[float, float] | None
) -> list[tuple[str, float, float]]:
    if not words:
        return []
    if all(isinstance(word, str) for word in words):
        plain = [w for w in normalize_text(" ".join(words)).split() if w not in SPEAKER_TAGS]  # type: ignore[arg-type]
        if not plain:
            return []
        if voiced_span is None:
            raise InvalidInputError("A prefix transcript without word timings needs the voiced span.", param="prefix")
        begin, finish = voiced_span
        if begin < 0 or finish < begin:
            raise InvalidInputError(f"Invalid voiced span {voiced_span!r}: need 0 <= start <= end.", param="prefix")
        width = (finish - begin) / len(plain)
        return [(w, begin + i * width, begin + (i + 1) * width) for i, w in enumerate(plain)]
    timed = []
    for word in words:
        if isinstance(word, str) or len(word) != 3:
            raise InvalidInputError("Prefix words must all be (text, start, end) or all be plain strings.", param="prefix")
        text = str(word[0]).strip()
        if text:  # aligners can report empty words; the reference skips them too
            timed.append((text, float(word[1]), float(word[2])))
    return timed
