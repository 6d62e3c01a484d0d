"""Dia2 voice prefixes: where prefix and script words fall, the two prefix modes, automatic transcripts.

The tiny checkpoint has the published delays (16 for codebook 0, 18 for the others). Prefixes are given as
Mimi codes with word timings, so the forced new-word steps can be worked out by hand: a word starting at
frame f (``round(start_s * 12.5)``) is forced at step f - 1, plus 3 for speaker 1 (the reference's offset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from faster_dia.errors import InvalidInputError, ModelNotFoundError
from faster_dia.models.dia2.generator import Dia2Generator, Dia2Request
from faster_dia.models.dia2.text import Entry, PrefixActions, TextStateMachine
from faster_dia.models.graphs import EAGER, TRACE
from faster_dia.models.layers import attend
from faster_dia.testing import finish

SCRIPT = "[S1] Now new words."
FRAME = 1 / 12.5


def prefix_codes(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2048, size=(frames, 32))


def request(tts2, prefix: list[Entry], steps: tuple[int, ...], frames: int, **kwargs) -> Dia2Request:
    """A request whose prefix entries are given by hand (their paddings too)."""
    return Dia2Request(
        entries=prefix + tts2._entries(SCRIPT), seed=kwargs.pop("seed", 1),
        prefix_codes=torch.as_tensor(prefix_codes(frames)), prefix_new_word_steps=steps, **kwargs,
    )


def run_alone(model, req: Dia2Request):
    generator = Dia2Generator(model, max_batch=1, step_mode=EAGER)
    generator.validate(req)
    state = generator.prepare(req)
    while not generator.step():
        pass
    return state, finish(generator, state)


# ------------------------------------------------------------------------------- words at the prefix's end


def test_a_script_word_consumed_at_the_last_prefix_step_starts_the_result(tts2):
    # "ok" starts at frame 1 (forced at step 0 + 3): its 6-step padding budget is spent by step 9, so the
    # first free step, P-1 = 13, must take the next word. Its text is fed at step 14, the result's first
    # frame: it starts at 0 s (it used to be dropped, being one step before the crop).
    kwargs = dict(seed=1, prefix_speaker_1=prefix_codes(14), prefix_transcript_1=[("ok", 0.0, 0.1)])
    speech = tts2.generate(SCRIPT, **kwargs)
    assert speech.timestamps[0] == ("Now", 0.0)
    assert [w for w, _ in speech.timestamps] == ["Now", "new", "words."]
    included = tts2.generate(SCRIPT, include_prefix=True, **kwargs)
    assert included.timestamps[:2] == [("ok", round(3 * FRAME, 3)), ("Now", round(13 * FRAME, 3))]
    reference = tts2.generate(SCRIPT, prefix_mode="reference", **kwargs)
    assert reference.timestamps[0] == ("Now", 0.0)  # the reference crops at P-1: the same word at the same time


def test_a_prefix_word_due_at_the_last_prefix_step_is_forced_there_once(tts2):
    # "yes" is due at P-1 = 13 while "ok"'s padding still holds: the first real step must force it anyway
    # (it used to go to the model, which could only pad, so "yes" was spoken again after the prefix).
    ok, yes = Entry(tts2._encode("[S1] ok"), "ok", 20), Entry(tts2._encode("yes"), "yes", 3)
    state, _ = run_alone(tts2.model, request(tts2, [ok, yes], (2, 13), 14))
    assert state.machine.transcript[:2] == [("ok", 2), ("yes", 13)]
    assert [w for w, _ in state.timestamps] == ["Now", "new", "words."]


@pytest.mark.parametrize(
    "steps, yes_step",
    [
        ((2, 3), 5),  # due while "ok" ([S1] o k: 3 tokens) is still fed: taken right after its last token
        ((2, 16), 16),  # due past the prefix (speaker 1's +3): the model's actions wait until then
    ],
)
def test_each_prefix_word_is_forced_exactly_once(tts2, steps, yes_step):
    ok, yes = Entry(tts2._encode("[S1] ok"), "ok", 1), Entry(tts2._encode("yes"), "yes", 3)
    state, _ = run_alone(tts2.model, request(tts2, [ok, yes], steps, 14))
    transcript = state.machine.transcript
    assert transcript[:2] == [("ok", 2), ("yes", yes_step)]
    assert [w for w, _ in transcript[2:]] == ["Now", "new", "words."] and transcript[2][1] > yes_step
    # The reference drops the first case's new word and never forces the second: "yes" waits for the model.
    state, _ = run_alone(tts2.model, request(tts2, [ok, yes], steps, 14, prefix_mode="reference"))
    assert state.machine.transcript[1][0] == "yes" and state.machine.transcript[1][1] >= 13
    assert [w for w, _ in state.timestamps] == ["Now", "new", "words."]  # the prefix's words, by count


def test_prefix_actions_owe_late_words_and_the_reference_drops_them():
    machine = TextStateMachine([Entry([4, 97, 98], "a", 1), Entry([99], "c", 1)], initial_padding=0)
    owed = PrefixActions((1, 0))  # unsorted (speaker 2 after a shifted speaker 1), one per entry
    assert owed.new_word_steps == (0, 1) and owed.entries == 2
    actions = []
    for t in range(5):
        actions.append(owed.action(t, machine))
        machine.process(t, actions[-1], forced=True)
    assert actions == [1, 1, 1, 1, 0]  # "c" is owed from step 1 until "a"'s tokens are fed
    assert machine.transcript == [("a", 0), ("c", 3)] and not owed.pending(machine)
    machine = TextStateMachine([Entry([4, 97, 98], "a", 1), Entry([99], "c", 1)], initial_padding=0)
    reference = PrefixActions((0, 1), reference=True)
    for t in range(5):
        machine.process(t, reference.action(t, machine), forced=True)
    assert machine.transcript == [("a", 0)] and reference.pending(machine)


# ---------------------------------------------------------------------------------- the reference's mode


class ReferenceRuntime:
    """The official runtime's prefix path, transcribed literally (dia2 runtime ``warmup_with_prefix`` then
    ``run_generation_loop`` from ``start_step = P - 1``, ``engine.generate``'s crop and timestamps), greedy and
    with guidance off, over an append-only KV cache: every transformer call adds one entry, whatever its
    position. Independent of the generator's buffers, grid and step scheduling."""

    def __init__(self, model):
        self.model = model
        self.keys: list[list[torch.Tensor]] = [[] for _ in model.layers]
        self.values: list[list[torch.Tensor]] = [[] for _ in model.layers]

    def forward_step(self, text: tuple[int, int], audio: list[int], position: int):
        m = self.model
        x = m.embed(torch.tensor([[text[0]]]), torch.tensor([[text[1]]]), torch.tensor([[audio]]))
        cos, sin = m._rope(torch.tensor([[position]]), position + 1)
        for i, layer in enumerate(m.layers):
            q, k, v = m._qkv(layer, x, cos, sin)
            self.keys[i].append(k)
            self.values[i].append(v)
            keys = torch.cat(self.keys[i], dim=1).transpose(1, 2)
            values = torch.cat(self.values[i], dim=1).transpose(1, 2)
            x = m._finish(layer, x, attend(q, keys, values, None))
        hidden, action, cb0 = m._outputs(x)
        return hidden[:, 0], action[0, 0], cb0[0, 0]

    @torch.inference_mode()
    def generate(self, entries: list[Entry], prefix: np.ndarray, new_word_steps: list[int], prefix_entries: int,
                 include_prefix: bool):
        m, c = self.model, self.model.config
        delays, P = c.delay_pattern, prefix.shape[0]
        bos, pad = c.audio_bos_token_id, c.audio_pad_token_id
        machine = TextStateMachine(entries, config=c, initial_padding=2)
        buffer = {}  # audio_buf: column -> its 32 tokens; the delayed prefix (pad around it) until overwritten

        def column(t: int) -> list[int]:
            if t in buffer:
                values = buffer[t]
            else:
                values = [int(prefix[t - d, k]) if 0 <= t - d < P else pad for k, d in enumerate(delays)]
            return [bos if d > t else values[k] for k, d in enumerate(delays)]

        text = (c.text_bos_token_id, c.text_pad_token_id)
        for t in range(P):  # warmup_with_prefix
            self.forward_step(text, column(t), t)
            text = machine.process(t, 1 if t in new_word_steps else 0, forced=True)
        start = P - 1
        last, cutoff = start - 1, None
        for t in range(start, start + c.max_context_steps):  # run_generation_loop
            if cutoff is not None and t >= cutoff:
                break
            hidden, action, cb0 = self.forward_step(text, column(t), t)
            text = machine.process(t, int(action.argmax()))
            cb0 = cb0.clone()
            cb0[[bos, pad]] = float("-inf")
            token = cb0.argmax()
            frame, cache = [int(token)], m.new_depformer_cache(1)
            for stage in range(c.num_codebooks - 1):
                token = m.depformer_step(hidden, token.view(1), stage, cache)[0].argmax()
                frame.append(int(token))
            buffer[t + 1] = frame
            last = t
            if cutoff is None and machine.end_step is not None:
                cutoff = machine.end_step + c.max_delay + 6
        aligned = [
            [buffer[j + d][k] if j + d in buffer else int(prefix[j, k]) for k, d in enumerate(delays)]
            for j in range(last + 2 - c.max_delay)
        ]
        crop = 0 if include_prefix else start  # first_word_frame never fires: it is start_step
        words = machine.transcript if include_prefix else machine.transcript[prefix_entries:]
        timestamps = [(w, round((step - crop) / 12.5, 3)) for w, step in words if step >= crop]
        return np.array(aligned[crop:]), timestamps


@pytest.mark.parametrize(
    "frames, words",
    [
        (30, [("ok", 0.1, 0.3), ("yes", 0.9, 1.2)]),  # forced at steps 3 and 13
        (16, [("ok", 0.1, 0.3), ("yes", 1.04, 1.2)]),  # "yes" forced at step 15 = P-1
        (16, [("ok", 0.1, 0.3), ("yes", 1.2, 1.3)]),  # "yes" due at step 17, past the prefix: never forced
    ],
)
def test_reference_mode_is_the_official_runtime(tts2, frames, words):
    codes = prefix_codes(frames, seed=frames)
    kwargs = dict(prefix_speaker_1=codes, prefix_transcript_1=words, prefix_mode="reference", temperature=0,
                  cfg_scale=1.0)
    (req,) = tts2._requests([SCRIPT], tts2._options(kwargs))
    prefix_entries = len(req.prefix_new_word_steps)
    for include_prefix in (True, False):
        speech = tts2.generate(SCRIPT, include_prefix=include_prefix, **kwargs)
        expected_codes, expected_words = ReferenceRuntime(tts2.model).generate(
            req.entries, codes, list(req.prefix_new_word_steps), prefix_entries, include_prefix
        )
        assert np.array_equal(speech.codes, expected_codes)
        assert speech.timestamps == expected_words
    full = tts2.generate(SCRIPT, include_prefix=True, **kwargs)
    # the prefix's last 16 (codebook 0) / 18 (acoustic) frames are regenerated, the earlier ones kept
    assert np.array_equal(full.codes[: frames - 16, 0], codes[: frames - 16, 0])
    kept = max(frames - 18, 0)
    assert np.array_equal(full.codes[:kept, 1:], codes[:kept, 1:])
    assert not np.array_equal(full.codes[kept:frames], codes[kept:])
    default = tts2.generate(SCRIPT, include_prefix=True, **{**kwargs, "prefix_mode": "faster-dia"})
    assert np.array_equal(default.codes[:frames], codes)


def _run_schedule(generator, joins):
    waiting, results, names, step = list(joins), {}, {}, 0
    while waiting or generator._states:
        while waiting and waiting[0][0] <= step and generator.free_slots:
            _, name, req = waiting.pop(0)
            names[generator.prepare(req).slot] = name
        for state in generator.step():
            results[names[state.slot]] = finish(generator, state)
        step += 1
        assert step < 5000
    return results


def test_both_prefix_modes_replay_and_batch_like_their_solo_runs(tts2):
    """Reference-mode requests (cache one entry past the position) and faster-dia ones share steps recorded
    once per shape: each gets its eager solo tokens, so the new mode reads no host value in the step and
    leaves the default mode's tokens alone."""
    pcm = np.random.default_rng(3).standard_normal(24000).astype(np.float32) * 0.1
    options = [
        dict(prefix_speaker_1=pcm, prefix_transcript_1="[S1] Hello there.", prefix_mode="reference"),
        dict(prefix_speaker_1=pcm, prefix_transcript_1="[S1] Hello there.", cfg_scale=1.0),
        dict(prefix_speaker_1=prefix_codes(20), prefix_transcript_1=[("ok", 0.1, 0.3)], prefix_mode="reference",
             cfg_scale=3.0, max_new_tokens=30),
        dict(),
    ]
    requests = [tts2._requests([SCRIPT], tts2._options({"seed": 40 + i, "prefix_sample_rate": 24000, **o}))[0]
                for i, o in enumerate(options)]
    alone = [_run_schedule(Dia2Generator(tts2.model, max_batch=1, step_mode=EAGER), [(0, "x", r)])["x"]
             for r in requests]
    generator = Dia2Generator(tts2.model, max_batch=2, step_mode=TRACE)
    got = _run_schedule(generator, [(5 * j, j, r) for j, r in enumerate(requests)])
    for i in range(len(requests)):
        assert torch.equal(got[i], alone[i]), f"request {i} changed under replay"
    assert generator.runner.recorded_shapes <= 8


def test_reference_mode_streams_what_it_generates(tts2):
    kwargs = dict(seed=9, prefix_speaker_1=prefix_codes(20), prefix_transcript_1=[("ok", 0.1, 0.3)],
                  prefix_mode="reference")
    full = tts2.generate(SCRIPT, **kwargs)
    chunks = list(tts2.stream(SCRIPT, chunk_frames=3, **kwargs))
    assert len(chunks) > 2
    np.testing.assert_allclose(np.concatenate(chunks), full.audio, atol=1e-4)


def test_bad_prefix_mode_is_a_clear_error(tts2):
    with pytest.raises(InvalidInputError, match="prefix_mode"):
        tts2.generate(SCRIPT, prefix_mode="official")


# ---------------------------------------------------------------------------------- automatic transcripts


@dataclass
class FakeWord:
    word: str
    start: float
    end: float
    probability: float = 1.0


@dataclass
class FakeTranscript:
    text: str
    words: list[FakeWord]


class FakeRecognizer:
    def __init__(self, *words: FakeWord):
        self.words = list(words)
        self.calls: list[tuple[int, int]] = []

    def transcribe(self, audio: np.ndarray, *, sample_rate: int) -> FakeTranscript:
        self.calls.append((len(audio), sample_rate))
        return FakeTranscript(" ".join(w.word.strip() for w in self.words), self.words)


def test_a_prefix_without_transcript_is_transcribed_and_placed_by_word_times(tts2, monkeypatch):
    pcm = np.random.default_rng(5).standard_normal(48000).astype(np.float32) * 0.1  # 2 s: 25 frames
    recognizer = FakeRecognizer(FakeWord(" Hello", 0.32, 0.6), FakeWord(" there", 1.2, 1.5))
    monkeypatch.setattr(tts2, "asr", recognizer)
    (req,) = tts2._requests([SCRIPT], tts2._options(dict(prefix_speaker_1=pcm, prefix_sample_rate=24000)))
    assert recognizer.calls == [(48000, 24000)]
    # "[S1] Hello" (5 tokens) starts at frame round(4.0) = 4, so "there" can start from frame 10; it is at
    # round(15.0) = 15; its end is round(18.75) = 19. Paddings 15 - 4 - 1 and 19 - 15 - 1; steps f - 1 + 3.
    assert req.entries[:2] == [Entry(tts2._encode("[S1] Hello"), "Hello", 10), Entry(tts2._encode("there"), "there", 3)]
    assert req.prefix_new_word_steps == (6, 17)

    # speaker 2's clip is transcribed too; its steps start at speaker 1's 25 frames, without the +3
    (req,) = tts2._requests([SCRIPT], tts2._options(dict(
        prefix_speaker_1=pcm, prefix_transcript_1=[("ok", 0.0, 0.2)], prefix_speaker_2=pcm[:24000],
        prefix_sample_rate=24000,
    )))
    assert recognizer.calls[-1] == (24000, 24000) and len(recognizer.calls) == 2
    assert req.prefix_new_word_steps == (3, 25 + 3, 25 + 14)
    assert req.entries[1].tokens == tts2._encode("[S2] Hello")

    speech = tts2.generate(SCRIPT, seed=2, prefix_speaker_1=pcm, prefix_sample_rate=24000)
    assert [w for w, _ in speech.timestamps] == ["Now", "new", "words."]


def test_a_given_transcript_wins_over_recognition(tts2, monkeypatch):
    pcm = np.random.default_rng(6).standard_normal(24000).astype(np.float32) * 0.1
    recognizer = FakeRecognizer(FakeWord("Wrong", 0.1, 0.3))
    monkeypatch.setattr(tts2, "asr", recognizer)
    (req,) = tts2._requests([SCRIPT], tts2._options(dict(
        prefix_speaker_1=pcm, prefix_transcript_1="[S1] Right.", prefix_sample_rate=24000,
    )))
    assert recognizer.calls == [] and req.entries[0].text == "Right."


def test_prefix_codes_without_transcript_and_no_recognizer_are_clear_errors(tts2, monkeypatch):
    monkeypatch.setattr(tts2, "asr", FakeRecognizer())
    with pytest.raises(InvalidInputError, match="given as codes without its transcript .prefix_transcript_1."):
        tts2.generate(SCRIPT, prefix_speaker_1=prefix_codes(10))

    def missing(pcm, param):
        raise ImportError("No module named 'faster_whisper'")

    monkeypatch.setattr(tts2, "_transcribe", missing)
    with pytest.raises(InvalidInputError, match="no transcript .prefix_transcript_1. and speech recognition is not"):
        tts2.generate(SCRIPT, prefix_speaker_1=np.zeros(2400, np.float32), prefix_sample_rate=24000)

    def refused(pcm, param):
        raise InvalidInputError("Speech recognition needs the faster-whisper package.", param=param)

    def not_downloaded(pcm, param):
        raise ModelNotFoundError("The speech recognition model is not in the Hub cache.", param=param)

    for transcribe, reason in ((refused, "Speech recognition needs"), (not_downloaded, "The speech recognition model")):
        monkeypatch.setattr(tts2, "_transcribe", transcribe)
        with pytest.raises(InvalidInputError, match=f"no transcript .* could not be transcribed: {reason}"):
            tts2.generate(SCRIPT, prefix_speaker_1=np.zeros(2400, np.float32), prefix_sample_rate=24000)
