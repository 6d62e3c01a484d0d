"""Scripts of any length: cut at the right places, one voice across chunks, joined without clicks, streamed in
order, reproducible; the runaway guard and the padding of very short scripts."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from servers import WAIT, running

from faster_dia.longform import MAX_LEAD_SECONDS, MAX_PAUSE_SECONDS, SILENCE_LEVEL, Stitcher
from faster_dia.models.dia1.tts import LONG_FORM_CHUNK_BYTES, _padded, runaway_cap
from faster_dia.script import encode_script, split_script
from faster_dia.server import create_app

SENTENCES = [
    "The morning train was late again, and nobody on the platform seemed surprised.",
    "A man in a grey coat read the same page of his newspaper for the third time.",
    "Two students argued quietly about an exam that had not even been written yet.",
    "Somewhere behind them a dog barked twice, then thought better of it.",
    "When the train finally arrived, it was full, and the doors opened with a sigh.",
]


def long_script(turns: int = 20) -> str:
    return " ".join(f"[S{1 + i % 2}] {SENTENCES[i % 5]} {SENTENCES[(i + 2) % 5]}" for i in range(turns))


# ---------------------------------------------------------------------- cutting


def test_chunks_end_at_turns_then_sentences_then_clauses_and_keep_their_speaker():
    script = ("[S1] One two three. Four five six, seven eight nine; ten. [S2] Eleven twelve. "
              "Thirteen fourteen fifteen sixteen seventeen.")
    assert split_script(script, lambda c: len(c) <= 200) == [script]
    assert split_script(script, lambda c: len(c) <= 60) == [
        "[S1] One two three. Four five six, seven eight nine; ten.",
        "[S2] Eleven twelve.",
        "[S2] Thirteen fourteen fifteen sixteen seventeen."]
    assert split_script(script, lambda c: len(c) <= 30) == [
        "[S1] One two three.", "[S1] Four five six,", "[S1] seven eight nine; ten.", "[S2] Eleven twelve.",
        "[S2] Thirteen fourteen fifteen", "[S2] sixteen seventeen."]
    # Text before the first tag is speaker 1's; a break tag is never cut and stays with the words before it.
    assert split_script('Hi there. Oh <break time="1s"/> There.', lambda c: len(c) <= 30) == [
        "[S1] Hi there.", '[S1] Oh <break time="1s"/>', "[S1] There."]


def test_a_long_script_is_cut_into_chunks_that_fit(tts):
    script = long_script()
    chunks = split_script(script, lambda c: tts._chunk_fits(c, tts._options({})))
    assert len(chunks) >= 10
    assert all(c.startswith(("[S1] ", "[S2] ")) for c in chunks)
    assert all(len(encode_script(c)) <= LONG_FORM_CHUNK_BYTES for c in chunks)
    words = lambda text: [w for w in text.split() if w not in ("[S1]", "[S2]")]  # noqa: E731
    assert [w for c in chunks for w in words(c)] == words(script)  # nothing lost, nothing repeated


# ---------------------------------------------------------------------- speaking


def _submit_steps(tts, monkeypatch) -> list[tuple[int, int]]:
    """(engine step, number of requests) of every submission."""
    steps = []
    submit = tts.engine.submit

    def recorded(requests, **kwargs):
        steps.append((tts.engine.steps, len(requests)))
        return submit(requests, **kwargs)

    monkeypatch.setattr(tts.engine, "submit", recorded)
    return steps


@pytest.mark.parametrize("continuity", ["first", "previous"])
def test_both_continuity_modes_reproduce_and_batch_as_promised(tts, monkeypatch, continuity):
    script = long_script()
    steps = _submit_steps(tts, monkeypatch)
    first = tts.generate(script, seed=11, continuity=continuity)
    chunks = sum(n for _, n in steps)
    assert chunks >= 10 and first.seed == 11 and first.duration > 0
    if continuity == "first":
        # Chunk 0 alone; the other chunks, all prompted with chunk 0, join the engine together.
        assert [n for _, n in steps] == [1, chunks - 1] and steps[0][0] < steps[1][0]
    else:  # one after the other
        assert [n for _, n in steps] == [1] * chunks and len({step for step, _ in steps}) == chunks
    again = tts.generate(script, seed=11, continuity=continuity)
    assert np.array_equal(first.audio, again.audio) and np.array_equal(first.codes, again.codes)
    streamed = np.concatenate(list(tts.stream(script, seed=11, continuity=continuity)))
    np.testing.assert_allclose(streamed, first.audio, atol=1e-4)


def test_later_chunks_are_prompted_with_the_reference(tts, monkeypatch):
    requests = []
    build = tts._requests

    def recorded(scripts, options):
        made = build(scripts, options)
        requests.extend(made)
        return made

    monkeypatch.setattr(tts, "_requests", recorded)
    speech = tts.generate(long_script(8), seed=2, continuity="first")
    assert requests[0].prompt is None
    reference = requests[1].prompt
    assert reference is not None and all(np.array_equal(r.prompt, reference) for r in requests[1:])
    assert np.array_equal(reference.numpy(), speech.codes[: reference.shape[0]])  # chunk 0's own codes


def test_the_openai_route_speaks_4000_characters(tts):
    script = long_script(60)[:4000]
    with running(create_app(tts)) as url:
        response = httpx.post(f"{url}/v1/audio/speech", timeout=WAIT * 4, json={
            "input": script, "seed": 3, "response_format": "pcm", "max_new_tokens": 40})
    assert response.status_code == 200, response.text
    assert len(response.content) > 24000  # well over a second of audio from many chunks


def test_dia2_words_sit_on_one_timeline(tts2):
    script = long_script(10)
    speech = tts2.generate(script, seed=5, max_new_tokens=100)
    starts = [start for _, start in speech.timestamps]
    assert len(starts) > 20 and starts == sorted(starts)
    # Words decided in a chunk's last frames may be spoken past its frame limit (18 frames of delay).
    assert starts[-1] <= speech.duration + 18 / 12.5


# ---------------------------------------------------------------------- guards


def test_the_runaway_guard_caps_requests_by_their_text(tts):
    options = tts._options({"seed": 1})
    (request,) = tts._requests(["[S1] A short line of text."], options)
    assert request.max_new_tokens == runaway_cap(len(encode_script("[S1] A short line of text.")))
    (unguarded,) = tts._requests(["[S1] A short line of text."], {**options, "runaway_guard": False})
    assert unguarded.max_new_tokens is None
    (given,) = tts._requests(["[S1] A short line of text."], {**options, "max_new_tokens": 50})
    assert given.max_new_tokens == 50


def test_very_short_scripts_get_a_closing_speaker_tag():
    assert _padded("[S1] Hi.") == "[S1] Hi. [S2]"
    assert _padded("[S2] Oh (laughs) yes!") == "[S2] Oh (laughs) yes! [S1]"
    assert _padded("[S1] Three whole words.") == "[S1] Three whole words."
    assert _padded("[S1] Hi. [S2]") == "[S1] Hi. [S2]"


def test_joins_cut_long_silences_and_fade():
    rate = 1000
    stitcher = Stitcher(rate)
    loud = np.full(200, 0.5, np.float32)
    quiet = np.zeros(2000, np.float32)
    out = []
    stitcher.start_chunk()
    out += [stitcher.push(loud), stitcher.push(quiet), stitcher.end_chunk()]
    stitcher.start_chunk()
    out += [stitcher.push(np.concatenate([quiet, loud])), stitcher.end_chunk()]
    audio = np.concatenate(out)
    silent = np.abs(audio) <= SILENCE_LEVEL
    runs, run = [], 0
    for s in silent:
        run = run + 1 if s else 0
        runs.append(run)
    # The 2 s pause and 2 s lead became at most MAX_PAUSE_SECONDS + MAX_LEAD_SECONDS.
    assert max(runs) <= (MAX_PAUSE_SECONDS + MAX_LEAD_SECONDS) * rate + 1
    assert audio.size < 200 + 200 + (MAX_PAUSE_SECONDS + MAX_LEAD_SECONDS) * rate + 2
    # A chunk that ends in sound is faded out, not cut off: no click at the join.
    stitcher.start_chunk()
    ending = [stitcher.push(loud), stitcher.end_chunk()]
    assert ending[1].size and abs(ending[1][-1]) < 0.05 and np.concatenate(ending).size == 200


def test_the_users_voice_prompt_is_every_chunks_reference(tts, monkeypatch):
    requests = []
    build = tts._requests

    def recorded(scripts, options):
        made = build(scripts, options)
        requests.extend(made)
        return made

    monkeypatch.setattr(tts, "_requests", recorded)
    prompt = np.random.default_rng(0).integers(0, 1024, (20, 9))
    tts.generate(long_script(6), seed=2, audio_prompt=prompt, audio_prompt_transcript="[S1] A prompt.",
                 max_new_tokens=30)
    assert len(requests) > 1 and all(np.array_equal(r.prompt.numpy(), prompt) for r in requests)
