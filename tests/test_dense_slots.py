"""Running requests occupy the lowest rows, so a step costs what is running; Dia-1.6B's host reads a step's
results only after the next step is launched. Each request still gets exactly its solo tokens."""

from __future__ import annotations

import torch
from dia1_requests import dia1_request

from faster_dia.models.dia1.generator import Dia1Generator
from faster_dia.models.dia2.generator import Dia2Generator
from faster_dia.models.graphs import EAGER
from faster_dia.testing import finish


def _batches(generator):
    """Record each step's batch (the rows it computes) next to the number of requests in the generator."""
    seen = []
    run = generator.runner.run

    def counted(shape, step):
        seen.append((shape.batch, len(generator._states)))
        run(shape, step)

    generator.runner.run = counted
    return seen


def _solo(generator_class, model, request):
    generator = generator_class(model, max_batch=1, step_mode=EAGER)
    state = generator.prepare(request)
    while not state.finished:
        generator.step()
    return finish(generator, state)


def _run_dense(generator, requests, join_at):
    """Requests join at the given steps; finished ones are released in the order they are reported."""
    results, step, waiting = {}, 0, list(zip(join_at, range(len(requests)), strict=True))
    names = {}
    while waiting or generator._states:
        while waiting and waiting[0][0] <= step and generator.free_slots:
            _, i = waiting.pop(0)
            names[id(generator.prepare(requests[i]))] = i
        for state in generator.step():
            results[names[id(state)]] = finish(generator, state)
        step += 1
        assert step < 5000
    return results


def test_dia1_requests_move_down_into_freed_rows_and_keep_their_tokens(tts):
    # Short requests in the low rows finish first; the longest, last admitted, moves down each time.
    requests = [dia1_request(tts, i, max_new_tokens=n) for i, n in ((1, 20), (0, 30), (4, 40), (2, 150))]
    alone = [_solo(Dia1Generator, tts.model, r) for r in requests]
    generator = Dia1Generator(tts.model, max_batch=4, step_mode=EAGER)
    batches = _batches(generator)
    got = _run_dense(generator, requests, [0, 0, 0, 0])
    for i in range(len(requests)):
        assert torch.equal(got[i], alone[i]), f"request {i}"
    # A step computes the rows in use, never a finished row below a running one.
    assert all(batch <= live for batch, live in batches)
    assert batches[-1] == (1, 1) and max(b for b, _ in batches) == 4
    assert generator.free_slots == 4 and not generator._host_active.any()


def test_dia1_host_reads_a_step_after_launching_the_next(tts):
    generator = Dia1Generator(tts.model, max_batch=2, step_mode=EAGER)
    state = generator.prepare(dia1_request(tts, 1, max_new_tokens=20))
    calls = 0
    while not state.finished:
        assert generator.step() in ([], [state])
        calls += 1
        # The launched step's flags are pending; the position counts only the steps whose results were read.
        assert generator._in_flight is not None
        assert state.position == state.prompt_frames + calls - 1
    # 20 new tokens at most: reported one call after the step that ended it, which changed nothing in its row.
    assert calls == state.end_position + 15 - state.prompt_frames + 1
    assert torch.equal(finish(generator, state), _solo(Dia1Generator, tts.model, dia1_request(tts, 1, max_new_tokens=20)))


def test_dia2_requests_move_down_into_freed_rows_and_keep_their_tokens(tts2):
    scripts = ["[S1] Hi.", "[S2] Yes, well, a longer line."]

    def requests():  # a request's text machine is built from its entries: fresh ones for each run
        return [tts2._requests([s], tts2._options({"seed": 7 + i, "max_new_tokens": 2 + 6 * i}))[0]
                for i, s in enumerate(scripts)]

    alone = [_solo(Dia2Generator, tts2.model, r) for r in requests()]
    generator = Dia2Generator(tts2.model, max_batch=2, step_mode=EAGER)
    batches = _batches(generator)
    got = _run_dense(generator, requests(), [0, 0])
    for i in range(len(scripts)):
        assert torch.equal(got[i], alone[i]), f"request {i}"
    assert all(batch <= live for batch, live in batches) and batches[-1] == (1, 1)
