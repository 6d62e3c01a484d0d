"""Recording the common step shapes at load (``load(warmup=...)``): on this machine the trace step mode stands
in for CUDA-graph capture. A warm-up records the shapes it lists and nothing else changes; a request afterwards
gets exactly its eager tokens and meets no new shape."""

from __future__ import annotations

import pytest
import torch
from dia1_requests import dia1_request

from faster_dia.errors import InvalidInputError
from faster_dia.loading import check_load_options
from faster_dia.models.dia1.generator import Dia1Generator
from faster_dia.models.dia2.generator import Dia2Generator
from faster_dia.models.graphs import EAGER, TRACE
from faster_dia.testing import finish


def _run(generator, request):
    state = generator.prepare(request)
    while not state.finished:
        generator.step()
    return finish(generator, state)


def _buffers(generator, names):
    return {name: getattr(generator, name).clone() for name in names}


def _warm_then_request(generator_class, model, make_request, buffers):
    alone = _run(generator_class(model, max_batch=1, step_mode=EAGER), make_request())
    generator = generator_class(model, max_batch=1, step_mode=TRACE)
    shapes = generator.warmup_shapes()
    assert len(set(shapes)) == len(shapes)
    assert generator.warm_up(0, progress=False) == (0, len(shapes))  # out of time before the first
    before = _buffers(generator, buffers)
    assert generator.warm_up(600, progress=False) == (len(shapes), 0)
    assert generator.runner.recorded_shapes == len(shapes)
    for name, value in before.items():  # idle rows compute and discard: no position, token or flag moved
        assert torch.equal(getattr(generator, name), value), name
    assert generator.free_slots == 1 and not generator._host_active.any()
    got = _run(generator, make_request())
    assert torch.equal(got, alone)
    assert generator.runner.recorded_shapes == len(shapes)  # every shape the request met was warm
    return generator


def test_dia1_warm_up_records_its_shapes_and_changes_no_request(tts):
    generator = _warm_then_request(
        Dia1Generator, tts.model, lambda: dia1_request(tts, 0, max_new_tokens=60),
        ["tokens", "position", "eos_position", "active", "done"],
    )
    # every kv bucket of the 3072 positions, for texts up to 64, 128 and 256 bytes, batch 1
    assert len(generator.warmup_shapes()) == 12 * 3
    state = generator.prepare(dia1_request(tts, 1))
    with pytest.raises(RuntimeError, match="before any request"):
        generator.warm_up(1, progress=False)
    generator.release(state)


def test_dia2_warm_up_records_its_shapes_and_changes_no_request(tts2):
    def request():
        return tts2._requests(["[S1] Hi there."], tts2._options({"seed": 3, "max_new_tokens": 4}))[0]

    generator = _warm_then_request(Dia2Generator, tts2.model, request, ["grid", "position", "active", "text_tokens"])
    reach = tts2.config.max_context_steps + 1
    assert {s.kv_length for s in generator.warmup_shapes()} == set(range(256, -(-reach // 256) * 256 + 1, 256))


def test_warm_up_options_are_checked():
    check_load_options(warmup=True, warmup_seconds=5)
    with pytest.raises(InvalidInputError, match="warmup must be"):
        check_load_options(warmup="yes")
    with pytest.raises(InvalidInputError, match="warmup_seconds"):
        check_load_options(warmup_seconds=-1)
