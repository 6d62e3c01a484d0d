"""Shared fixtures: tiny random checkpoints in the published layouts, written once per test session."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Servers built without an explicit voice library use the default one: keep it out of the user's home.
os.environ.setdefault("FASTER_DIA_VOICES_DIR", tempfile.mkdtemp(prefix="faster-dia-voices-"))
# Likewise the task API's job store and result files.
os.environ.setdefault("FASTER_DIA_DATA_DIR", tempfile.mkdtemp(prefix="faster-dia-data-"))

import pytest  # noqa: E402
import torch  # noqa: E402

from faster_dia.testing import write_tiny_checkpoint  # noqa: E402

# A larger EOS logit makes the tiny random model end its utterances after a few dozen frames, so generation
# tests see natural EOS, the delay tail and different lengths per script.
EOS_LOGIT_SCALE = 2.0


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    kinds = ["dia-1.6b", "dia-1.6b-pth", "dia-1.6b-0626", "dia-1.6b-0626-bin"]
    dirs = {k: write_tiny_checkpoint(k, root / k, eos_logit_scale=EOS_LOGIT_SCALE) for k in kinds}
    dirs["dac"] = write_tiny_checkpoint("dac", root / "dac")
    return dirs


@pytest.fixture(scope="session")
def tts(tiny_dirs):
    import faster_dia

    return faster_dia.load(tiny_dirs["dia-1.6b-0626"], codec=tiny_dirs["dac"], device="cpu")


@pytest.fixture(scope="session")
def tts_original(tiny_dirs):
    import faster_dia

    return faster_dia.load(tiny_dirs["dia-1.6b"], codec=tiny_dirs["dac"], device="cpu")


@pytest.fixture(scope="session")
def dia2_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-dia2")
    return {"dia2": write_tiny_checkpoint("dia2", root / "dia2"), "mimi": write_tiny_checkpoint("mimi", root / "mimi")}


@pytest.fixture(scope="session")
def tts2(dia2_dirs):
    import faster_dia

    return faster_dia.load(dia2_dirs["dia2"], codec=dia2_dirs["mimi"], device="cpu")
