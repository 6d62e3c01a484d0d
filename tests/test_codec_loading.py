"""Codec loading is strict: the wrong kind of codec, or a model.safetensors that does not hold exactly the
codec's tensors, is a CheckpointError instead of a codec that decodes noise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import faster_dia
from faster_dia.codecs.dac import DacCodec
from faster_dia.codecs.mimi import MimiCodec
from faster_dia.errors import CheckpointError

#: A tensor of each codec's file, as the published files name it (Mimi's in the flat layout of kyutai/mimi).
DAC_VICTIM = "decoder.conv1.weight"
MIMI_VICTIM = "decoder.layers.0.conv.weight"


def _copy(directory: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(directory, tmp_path / directory.name))


def _edit_weights(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def test_a_mimi_codec_is_not_a_dac_codec(dia2_dirs):
    with pytest.raises(CheckpointError) as error:
        DacCodec.load(dia2_dirs["mimi"])
    message = str(error.value)
    assert str(dia2_dirs["mimi"]) in message
    assert "'mimi' codec" in message and "Dia-1.6B needs a DAC codec ('dac')" in message


def test_a_dac_codec_is_not_a_mimi_codec(tiny_dirs):
    with pytest.raises(CheckpointError) as error:
        MimiCodec.load(tiny_dirs["dac"])
    message = str(error.value)
    assert str(tiny_dirs["dac"]) in message
    assert "'dac' codec" in message and "Dia2 needs a Mimi codec ('mimi')" in message


def test_dia1_with_a_mimi_codec_is_refused(tiny_dirs, dia2_dirs):
    with pytest.raises(CheckpointError, match="'mimi' codec"):
        faster_dia.load(tiny_dirs["dia-1.6b-0626"], codec=dia2_dirs["mimi"], device="cpu")


def test_config_without_model_type_or_json(tiny_dirs, tmp_path):
    directory = _copy(tiny_dirs["dac"], tmp_path)
    _edit_config(directory, lambda raw: raw.pop("model_type"))
    with pytest.raises(CheckpointError, match="has no model_type") as error:
        DacCodec.load(directory)
    assert str(directory / "config.json") in str(error.value)

    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read as JSON") as error:
        DacCodec.load(directory)
    assert str(directory / "config.json") in str(error.value)


@pytest.mark.parametrize(("kind", "codec_class", "victim"), [("dac", DacCodec, DAC_VICTIM), ("mimi", MimiCodec, MIMI_VICTIM)])
def test_missing_extra_and_misshapen_tensors_are_named(tiny_dirs, dia2_dirs, tmp_path, kind, codec_class, victim):
    source = tiny_dirs["dac"] if kind == "dac" else dia2_dirs["mimi"]

    missing = _copy(source, tmp_path / "missing")
    _edit_weights(missing, lambda tensors: tensors.pop(victim))
    with pytest.raises(CheckpointError, match=rf"missing {victim}\b"):
        codec_class.load(missing)

    extra = _copy(source, tmp_path / "extra")
    _edit_weights(extra, lambda tensors: tensors.update({"decoder.extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected decoder\.extra\.weight"):
        codec_class.load(extra)

    misshapen = _copy(source, tmp_path / "misshapen")
    _edit_weights(misshapen, lambda tensors: tensors.update({victim: tensors[victim][:1].clone()}))
    with pytest.raises(CheckpointError, match=rf"wrong shape {victim} \(expected"):
        codec_class.load(misshapen)


@pytest.mark.parametrize("kind", ["dac", "mimi"])
def test_a_correct_codec_decodes_like_from_pretrained(tiny_dirs, dia2_dirs, kind):
    from transformers import DacModel, MimiModel

    directory = tiny_dirs["dac"] if kind == "dac" else dia2_dirs["mimi"]
    codec = (DacCodec if kind == "dac" else MimiCodec).load(directory)
    reference = (DacModel if kind == "dac" else MimiModel).from_pretrained(directory).eval()
    assert codec.model.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(t, reference.state_dict()[name]) for name, t in codec.model.state_dict().items())

    codes = torch.randint(0, codec.codebook_size, (6, codec.num_codebooks), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = reference.decode(audio_codes=codes.T[None]).audio_values.reshape(-1).numpy()
    if kind == "mimi":
        expected = np.clip(expected, -1.0, 1.0)  # MimiCodec clamps, as the Dia2 reference does
    np.testing.assert_array_equal(codec.decode(codes), expected)
