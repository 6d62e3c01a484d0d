"""The decode steps are safe to record once per step shape and replay (what CUDA graphs do).

On this machine the ``trace`` step mode stands in for CUDA-graph capture: each step shape is recorded the
first time it runs, with every host value baked in, and replayed afterwards on whatever requests occupy the
slots. A request must still get exactly the tokens it gets alone in eager mode, and a step that needs a
device-to-host read or host data cannot be recorded at all.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from dia1_requests import SCRIPTS, dia1_request

from faster_dia.models import graphs
from faster_dia.models.dia1.generator import Dia1Generator
from faster_dia.models.dia2.generator import Dia2Generator
from faster_dia.models.graphs import (
    COMPILED,
    COMPILED_CUDA_GRAPHS,
    CUDA_GRAPHS,
    EAGER,
    TRACE,
    NotCapturableError,
    StepRunner,
    batch_bucket,
    power_of_two_at_least,
    resolve_mode,
    round_up,
)
from faster_dia.testing import finish


def _dia1_request(tts, i):
    return dia1_request(tts, i, seed=300 + i, **({"top_k": 100} if i == 4 else {}))


def _run_schedule(generator, joins):
    """Drive ``generator`` by hand: request j may join at step joins[j][0] or later (when a slot is free)."""
    waiting = list(joins)
    results, names, step = {}, {}, 0
    while waiting or generator._states:
        while waiting and waiting[0][0] <= step and generator.free_slots:
            _, name, request = waiting.pop(0)
            names[generator.prepare(request).slot] = name
        for state in generator.step():
            results[names[state.slot]] = finish(generator, state)
        step += 1
        assert step < 5000
    return results


def _assert_replays_give_solo_tokens(generator_class, model, requests, *, slots, join_every):
    """Each request run alone and eagerly, then all of them through ``slots`` slots in trace mode, joining
    every ``join_every`` steps: slots are reused and step shapes change, and every request must get its solo
    tokens. Recorded once per shape and replayed: far fewer recordings than steps."""
    alone = [
        _run_schedule(generator_class(model, max_batch=1, step_mode=EAGER), [(0, "x", r)])["x"] for r in requests
    ]
    generator = generator_class(model, max_batch=slots, step_mode=TRACE)
    got = _run_schedule(generator, [(j * join_every, j, r) for j, r in enumerate(requests)])
    for i in range(len(requests)):
        assert torch.equal(got[i], alone[i]), f"request {i} changed under replay"
    assert 1 <= generator.runner.recorded_shapes <= 6


@pytest.mark.parametrize("variant", ["0626", "original"])
def test_dia1_replayed_steps_give_each_request_its_eager_solo_tokens(tts, tts_original, variant):
    model_tts = tts if variant == "0626" else tts_original
    requests = [_dia1_request(model_tts, i) for i in range(5)]
    _assert_replays_give_solo_tokens(Dia1Generator, model_tts.model, requests, slots=3, join_every=9)


def _dia2_request(tts2, i):
    kwargs = dict(
        seed=500 + i, prefix_speaker_1=None, prefix_transcript_1=None, prefix_speaker_2=None,
        prefix_transcript_2=None, prefix_sample_rate=None, include_prefix=False,
        text_temperature=[0.6, 0.0, 0.9, 0.6][i], text_top_k=[50, 50, 20, 100][i],
        audio_temperature=[0.8, 0.0, 1.0, 0.8][i], audio_top_k=[50, 50, 30, 70][i],
        cfg_scale=[2.0, 1.0, 3.0, 2.0][i], cfg_filter_k=[50, 50, 10, 80][i], max_new_tokens=[None, 40, None, 30][i],
    )
    if i == 2:
        pcm = np.random.default_rng(2).standard_normal(24000).astype(np.float32) * 0.1
        kwargs.update(prefix_speaker_1=pcm, prefix_transcript_1="[S1] Hello there.", prefix_sample_rate=24000)
    script = ["[S1] Hello there. [S2] Hi.", "[S2] A second voice speaks now.", "[S1] Third, short.",
              "[S1] Four words are here. [S2] And more."][i]
    (request,) = tts2._requests([script], tts2._options(kwargs))
    return request


def test_dia2_replayed_frames_give_each_request_its_eager_solo_tokens(tts2):
    # Guided and unguided requests, a prefix, different filters: the step shape changes as they come and go.
    requests = [_dia2_request(tts2, i) for i in range(4)]
    _assert_replays_give_solo_tokens(Dia2Generator, tts2.model, requests, slots=2, join_every=6)


def test_a_step_that_reads_a_device_value_cannot_be_recorded():
    buffer = torch.arange(4.0)

    def reads_value():
        buffer.add_(buffer.max().item())

    def boolean_mask():
        buffer[buffer > 1] = 0

    def host_data():
        buffer[:1] = torch.tensor([5.0])

    for step in (reads_value, boolean_mask, host_data):
        with torch.inference_mode(), pytest.raises(NotCapturableError):
            StepRunner(TRACE).run("shape", step)


def test_a_recorded_step_replays_on_the_current_buffer_contents():
    counter = torch.zeros(2, dtype=torch.long)
    runs = []

    def step():
        runs.append(1)
        counter.add_(counter + 1)

    runner = StepRunner(TRACE)
    with torch.inference_mode():
        for _ in range(3):
            runner.run("a", step)
    assert counter.tolist() == [7, 7]  # 0 -> 1 -> 3 -> 7: replays read the buffer, not a baked value
    assert len(runs) == 1  # the Python function ran once, to record
    assert runner.recorded_shapes == 1


def _fake_cuda(monkeypatch, *, fail: bool):
    """Stand-ins for the CUDA calls the runner makes; returns the log of what the graphs were asked to do."""
    import contextlib

    calls = []

    class FakeStream:
        def wait_stream(self, other):
            pass

    class FakeGraph:
        def capture_begin(self, pool=None, capture_error_mode=None):
            calls.append(("begin", pool, capture_error_mode, gc.isenabled()))
            if fail:
                raise RuntimeError("operation not permitted when stream is capturing")

        def capture_end(self):
            calls.append(("end",))

        def pool(self):
            return "pool"

        def replay(self):
            calls.append(("replay",))

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty_cache",)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append(("synchronize",)))
    return calls


def test_a_failed_cuda_capture_falls_back_to_eager_steps(monkeypatch, caplog):
    """Without a GPU the CUDA calls are stood in for; what is checked is the runner's own logic: the warm-up
    run does the step's work exactly once, a capture that fails is reported, and later steps run eagerly."""
    _fake_cuda(monkeypatch, fail=True)
    runs = []
    runner = StepRunner(CUDA_GRAPHS)
    with caplog.at_level("WARNING", logger="faster_dia.models.graphs"):
        runner.run("a", lambda: runs.append("a"))
    assert runs == ["a"] and runner.mode == EAGER and not runner.bucketed
    assert "CUDA graph capture failed" in caplog.text
    assert gc.isenabled()
    runner.run("a", lambda: runs.append("a"))
    runner.run("b", lambda: runs.append("b"))
    assert runs == ["a", "a", "b"]


def test_captures_collect_garbage_once_and_leave_the_allocator_cache_alone(monkeypatch):
    """torch.cuda.graph() synchronises, empties the allocator cache (and may collect) on every capture; the
    runner collects once, before its first capture, and keeps the collector off during each capture."""
    calls = _fake_cuda(monkeypatch, fail=False)
    collections = []
    monkeypatch.setattr(graphs.gc, "collect", lambda: collections.append(1))
    runner = StepRunner(CUDA_GRAPHS)
    steps = []
    for shape in ("a", "b", "c", "a"):
        runner.run(shape, lambda shape=shape: steps.append((shape, gc.isenabled())))
    assert len(collections) == 1
    assert not any(c[0] in ("empty_cache", "synchronize") for c in calls)
    begins = [c for c in calls if c[0] == "begin"]
    assert [b[1] for b in begins] == [None, "pool", "pool"]  # one shared pool after the first graph
    assert all(b[2] == "thread_local" and b[3] is False for b in begins)  # collector off while capturing
    assert steps == [("a", True), ("a", False), ("b", True), ("b", False), ("c", True), ("c", False)]
    assert calls[-1] == ("replay",) and gc.isenabled()


def test_prepared_shapes_are_recorded_ahead_and_unseen_ones_after_warm_up_are_not_compiled(monkeypatch):
    compiled = []
    monkeypatch.setattr(graphs, "_compiled", lambda step: compiled.append(step) or step)
    counter = torch.zeros(1)
    runner = StepRunner(COMPILED)
    assert runner.bucketed
    with torch.inference_mode():
        runner.run("first", lambda: counter.add_(1))  # before any warm-up: compiled on first use
        assert len(compiled) == 1 and runner.stalls == 0
        assert runner.prepare("warm", lambda: counter.add_(10)) is True
        assert runner.prepare("warm", lambda: counter.add_(10)) is False  # already recorded: nothing runs
        assert len(compiled) == 2 and counter.item() == 11
        runner.run("warm", lambda: counter.add_(1000))  # replays the prepared step (+10), not this one
        runner.run("unseen", lambda: counter.add_(100))  # after warm-up: recorded, not compiled
        runner.run("unseen", lambda: counter.add_(100))
    assert counter.item() == 221 and len(compiled) == 2 and runner.stalls == 1
    assert runner.recorded_shapes == 3
    assert StepRunner(EAGER).prepare("x", lambda: counter.add_(1)) is False and counter.item() == 221


def test_step_shape_buckets():
    assert [batch_bucket(n, 64) for n in (1, 2, 3, 5, 8, 9, 17, 33, 64)] == [1, 2, 4, 8, 8, 16, 24, 40, 64]
    assert batch_bucket(5, 6) == 6
    assert [round_up(n, 256, 3072) for n in (1, 256, 257, 3071)] == [256, 256, 512, 3072]
    assert [power_of_two_at_least(n, 64, 1024) for n in (1, 64, 65, 700, 1024)] == [64, 64, 128, 1024, 1024]


def test_cuda_graphs_are_the_default_on_cuda_only(monkeypatch):
    monkeypatch.delenv(graphs.COMPILE_ENV, raising=False)
    assert resolve_mode(torch.device("cpu"), None) == EAGER
    assert resolve_mode(torch.device("cuda"), None) == CUDA_GRAPHS
    assert resolve_mode(torch.device("cuda"), False) == EAGER
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_mode(torch.device("cpu"), True)
    with pytest.raises(ValueError, match="unknown step mode"):
        StepRunner("fast")


def test_compiling_is_chosen_by_name_or_by_the_environment(monkeypatch):
    monkeypatch.delenv(graphs.COMPILE_ENV, raising=False)
    assert resolve_mode(torch.device("cpu"), None, compile=True) == COMPILED
    assert resolve_mode(torch.device("cuda"), None, compile=True) == COMPILED_CUDA_GRAPHS
    monkeypatch.setenv(graphs.COMPILE_ENV, "1")
    assert resolve_mode(torch.device("cpu"), None) == COMPILED
    assert resolve_mode(torch.device("cuda"), None) == COMPILED_CUDA_GRAPHS
    assert resolve_mode(torch.device("cuda"), None, compile=False) == CUDA_GRAPHS
    monkeypatch.setenv(graphs.COMPILE_ENV, "maybe")
    with pytest.raises(ValueError, match="FASTER_DIA_COMPILE must be 1 or 0"):
        resolve_mode(torch.device("cpu"), None)


def test_load_and_the_command_line_choose_the_compiled_step(tiny_dirs, monkeypatch):
    """``load(compile=True)`` (``--compile``) gives the engine a compiling step runner; nothing is compiled until a
    step runs. A compile option that is not a bool is refused before anything loads."""
    import faster_dia
    from faster_dia.cli import build_parser
    from faster_dia.errors import InvalidInputError
    from faster_dia.loading import check_load_options

    monkeypatch.delenv(graphs.COMPILE_ENV, raising=False)
    compiled = faster_dia.load(tiny_dirs["dia-1.6b-0626"], codec=tiny_dirs["dac"], device="cpu", compile=True)
    try:
        runner = compiled.engine.generator.runner
        assert runner.mode == COMPILED and runner.recorded_shapes == 0
    finally:
        compiled.close()
    with pytest.raises(InvalidInputError, match="compile must be True, False or None"):
        check_load_options(compile="yes")
    assert build_parser().parse_args(["serve", "--compile"]).compile is True
    assert build_parser().parse_args(["serve"]).compile is None


def test_a_compiled_step_gives_the_eager_tokens(tts):
    """Inductor (C++ on this machine) compiles the Dia-1.6B step once for its bucketed shape (one request, so one
    shape and one compile: the compile is what takes the time); the sampled request run through it gets exactly
    its eager tokens (float32: inductor's fused kernels change no token here)."""
    request = _dia1_request(tts, 0)
    alone = _run_schedule(Dia1Generator(tts.model, max_batch=1, step_mode=EAGER), [(0, "x", request)])["x"]
    generator = Dia1Generator(tts.model, max_batch=1, step_mode=COMPILED)
    got = _run_schedule(generator, [(0, "x", request)])["x"]
    assert torch.equal(got, alone)
    assert generator.runner.recorded_shapes == 1


# ---------------------------------------------------------------------------- on a CUDA device, when present

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_cuda_graph_replays_match_recorded_operator_replays(tiny_dirs, dia2_dirs):
    """The same schedule with the same step shapes, once replayed as CUDA graphs and once operator by operator:
    the tokens must be identical, so the capture itself adds nothing and loses nothing."""
    import faster_dia

    tts_gpu = faster_dia.load(tiny_dirs["dia-1.6b-0626"], codec=tiny_dirs["dac"], device="cuda", dtype="float32")
    requests = [_dia1_request(tts_gpu, i) for i in range(5)]
    runs = {}
    for mode in (TRACE, CUDA_GRAPHS):
        generator = Dia1Generator(tts_gpu.model, max_batch=3, step_mode=mode)
        runs[mode] = _run_schedule(generator, [(j * 9, j, r) for j, r in enumerate(requests)])
    for i in range(5):
        assert torch.equal(runs[TRACE][i], runs[CUDA_GRAPHS][i]), f"Dia-1.6B request {i}"

    tts2_gpu = faster_dia.load(dia2_dirs["dia2"], codec=dia2_dirs["mimi"], device="cuda", dtype="float32")
    requests = [_dia2_request(tts2_gpu, i) for i in range(4)]
    runs = {}
    for mode in (TRACE, CUDA_GRAPHS):
        generator = Dia2Generator(tts2_gpu.model, max_batch=2, step_mode=mode)
        runs[mode] = _run_schedule(generator, [(j * 6, j, r) for j, r in enumerate(requests)])
    for i in range(4):
        assert torch.equal(runs[TRACE][i], runs[CUDA_GRAPHS][i]), f"Dia2 request {i}"


@needs_cuda
def test_the_api_uses_cuda_graphs_on_cuda(tiny_dirs):
    import faster_dia

    tts_gpu = faster_dia.load(tiny_dirs["dia-1.6b-0626"], codec=tiny_dirs["dac"], device="cuda", max_batch=4)
    assert tts_gpu.engine.generator.runner.mode == CUDA_GRAPHS
    speeches = tts_gpu.generate([SCRIPTS[0], SCRIPTS[1], SCRIPTS[2]], seed=[1, 2, 3], max_new_tokens=80)
    assert all(s.codes.shape[0] > 0 and np.isfinite(s.audio).all() for s in speeches)
    assert tts_gpu.engine.generator.runner.recorded_shapes >= 1
    streamed = np.concatenate([chunk for chunk in tts_gpu.stream(SCRIPTS[0], seed=1, max_new_tokens=80)])
    assert np.allclose(streamed, speeches[0].audio, atol=1e-4)
