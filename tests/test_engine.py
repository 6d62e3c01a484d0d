"""The batching engine: staggered arrivals, slot reuse, cancellation, overload, isolation of failures."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from dia1_requests import SCRIPTS, dia1_request

import faster_dia
from faster_dia.engine import Engine
from faster_dia.errors import CancelledError, InvalidInputError, OverloadedError
from faster_dia.models.dia1.generator import Dia1Generator
from faster_dia.testing import finish

_request = dia1_request


def _alone(tts, request):
    generator = Dia1Generator(tts.model, max_batch=1)
    state = generator.prepare(request)
    while not state.finished:
        generator.step()
    return finish(generator, state)


def _wait(submission, timeout=120):
    kind, payload = submission.events.get(timeout=timeout)
    assert kind == "done", payload
    return payload


def test_staggered_arrivals_give_each_request_its_solo_codes(tts):
    alone = [_alone(tts, _request(tts, i)) for i in range(5)]
    engine = Engine(Dia1Generator(tts.model, max_batch=3))
    subs = engine.submit([_request(tts, 0)])
    for i in range(1, 5):
        # join at different steps of the running batch; with 3 slots the last ones wait for a free slot
        start = engine.steps
        while engine.steps < start + 7 + 5 * i:
            time.sleep(0.001)
        subs += engine.submit([_request(tts, i)])
    for i, sub in enumerate(subs):
        assert torch.equal(_wait(sub), alone[i]), f"request {i}"
    assert engine.generator.free_slots == 3  # every slot came back


def test_more_requests_than_slots_all_complete(tts):
    engine = Engine(Dia1Generator(tts.model, max_batch=2))
    subs = engine.submit([_request(tts, i % 5, seed=i) for i in range(7)])
    assert all(_wait(s).shape[1] == 9 for s in subs)
    assert engine.generator.free_slots == 2


def test_cancel_frees_the_slot_and_others_go_on(tts):
    engine = Engine(Dia1Generator(tts.model, max_batch=2))
    long, other = engine.submit([_request(tts, 2, max_new_tokens=3000, temperature=1.0),
                                 _request(tts, 1)])
    while long.frames < 3:
        time.sleep(0.001)
    long.cancel()
    kind, payload = long.events.get(timeout=60)
    assert kind == "error" and isinstance(payload, CancelledError)
    assert torch.equal(_wait(other), _alone(tts, _request(tts, 1)))
    deadline = time.monotonic() + 10
    while engine.generator.free_slots < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.generator.free_slots == 2


def test_the_queue_bound_raises_overloaded(tts):
    engine = Engine(Dia1Generator(tts.model, max_batch=1), max_queue=2)
    first = engine.submit([_request(tts, 2, max_new_tokens=400)])
    while first[0].state is None:  # admitted into the only slot
        time.sleep(0.001)
    waiting = engine.submit([_request(tts, 1), _request(tts, 0)])
    with pytest.raises(OverloadedError, match="busy"):
        engine.submit([_request(tts, 4)])
    for sub in first + waiting:
        sub.cancel()


def test_a_failing_request_does_not_break_the_others(tts, monkeypatch):
    engine = Engine(Dia1Generator(tts.model, max_batch=2))
    good = _request(tts, 0)
    bad = _request(tts, 1)
    fill_slot = engine.generator._fill_slot

    def fail_for_bad(slot, request, prompt_frames):
        if request is bad:
            raise RuntimeError("out of memory while encoding")
        return fill_slot(slot, request, prompt_frames)

    monkeypatch.setattr(engine.generator, "_fill_slot", fail_for_bad)
    subs = engine.submit([bad, good])
    kind, payload = subs[0].events.get(timeout=60)
    assert kind == "error" and "out of memory" in str(payload)
    assert torch.equal(_wait(subs[1]), _alone(tts, _request(tts, 0)))
    assert engine.generator.free_slots == 2


def test_invalid_requests_fail_at_submit(tts):
    engine = Engine(Dia1Generator(tts.model, max_batch=1))
    with pytest.raises(InvalidInputError):
        engine.submit([_request(tts, 0, max_new_tokens=5)])
    bad_codes = _request(tts, 0)
    bad_codes.prompt = torch.full((10, 9), 5000)
    with pytest.raises(InvalidInputError, match="0..1023"):
        engine.submit([bad_codes])
    assert engine.busy == 0


def test_concurrent_generate_calls_are_batched_and_exact(tiny_dirs):
    tts = faster_dia.load(tiny_dirs["dia-1.6b-0626"], codec=tiny_dirs["dac"], device="cpu", max_batch=4)
    expected = {i: tts.generate(SCRIPTS[i], seed=i, max_new_tokens=100).codes for i in range(4)}
    steps_alone = tts.engine.steps
    results = {}

    def call(i):
        results[i] = tts.generate(SCRIPTS[i], seed=i, max_new_tokens=100).codes

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(np.array_equal(results[i], expected[i]) for i in range(4))
    # Together they took fewer steps than the four solo runs did.
    assert tts.engine.steps - steps_alone < steps_alone


def test_default_batch_size_follows_free_memory():
    from faster_dia.api import default_max_batch, max_batch_for_memory

    GB = 10**9
    assert max_batch_for_memory(80 * GB, 530 * 10**6) == 64  # H100: capped
    assert max_batch_for_memory(20 * GB, 530 * 10**6) == 16  # 18 fit in half: a multiple of 8
    assert max_batch_for_memory(3 * GB, 530 * 10**6) == 2
    assert max_batch_for_memory(100 * 10**6, 530 * 10**6) == 1  # never 0
    assert default_max_batch(torch.device("cpu"), 530 * 10**6) == 4


def test_cache_size_per_request_is_what_a_slot_allocates(tts, tts2):
    from faster_dia.models.dia2.generator import Dia2Generator

    def nbytes(*groups):
        return sum(t.numel() * t.element_size() for group in groups for t in group)

    generator = Dia1Generator(tts.model, max_batch=3)
    cache = generator.cache
    held = nbytes(cache.self_k, cache.self_v, cache.cross_k, cache.cross_v, [generator.tokens])
    assert held == 3 * Dia1Generator.cache_bytes_per_request(tts.model.config, tts.model.dtype)

    generator2 = Dia2Generator(tts2.model, max_batch=3)
    held2 = nbytes(generator2.cache.k, generator2.cache.v, [generator2.grid])
    assert held2 == 3 * Dia2Generator.cache_bytes_per_request(tts2.model.config, tts2.model.dtype)


def test_host_work_per_step_follows_events_not_running_requests(tts, monkeypatch):
    """Running requests cost the engine thread nothing per step: a plain request's progress is read when it
    finishes, a streaming one's about once per chunk, never once per step."""
    from faster_dia.models.dia1.generator import SlotState

    reads = []
    original = SlotState.final_frames

    def counted(self):
        reads.append(self.slot)
        return original.fget(self)

    monkeypatch.setattr(SlotState, "final_frames", property(counted))
    engine = Engine(Dia1Generator(tts.model, max_batch=3))
    plain = engine.submit([_request(tts, 2, max_new_tokens=150), _request(tts, 0, max_new_tokens=150)])
    chunked = engine.submit([_request(tts, 1, max_new_tokens=150)], chunk_frames=16)
    for sub in plain:
        _wait(sub)
    chunks = 0
    while (kind := chunked[0].events.get(timeout=60)[0]) == "frames":
        chunks += 1
    assert kind == "done" and chunks >= 2
    steps = engine.steps
    plain_slots = {s.state.slot for s in plain}
    assert sum(r in plain_slots for r in reads) <= 2 * len(plain)  # read at the end, not every step
    streaming_reads = sum(r == chunked[0].state.slot for r in reads)
    assert streaming_reads <= 2 * chunks + 4 < steps  # about once per chunk


def test_a_streaming_request_that_moves_rows_streams_its_solo_codes(tts):
    """The short request in row 0 ends first and the streaming one, in the highest row, moves into its row
    while a step is in flight; its chunks still join into exactly its solo codes, no frame twice or missing."""
    requests = [_request(tts, 1, max_new_tokens=30), _request(tts, 0, max_new_tokens=60),
                _request(tts, 2, max_new_tokens=120)]
    alone = _alone(tts, _request(tts, 2, max_new_tokens=120))
    engine = Engine(Dia1Generator(tts.model, max_batch=3))
    first = engine.submit(requests[:2])
    streaming = engine.submit(requests[2:], chunk_frames=5)[0]
    chunks = []
    while (event := streaming.events.get(timeout=60))[0] == "frames":
        chunks.append(event[1])
    assert event == ("done", None) and len(chunks) > 3
    assert streaming.state.row == 0  # it moved down when the others left
    assert torch.equal(torch.cat(chunks), alone)
    assert all(_wait(s).shape[0] > 0 for s in first)
