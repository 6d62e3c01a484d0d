"""Audio codecs (DAC for Dia-1.6B, Mimi for Dia2): transformers models, loaded as strictly as the Dia models."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar, TypeVar

import numpy as np
import torch

from ..errors import CheckpointError
from ..hub import open_repo
from ..models.checkpoint_io import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    check_tensors,
    json_object,
    read_json,
    read_safetensors,
)

C = TypeVar("C", bound="TransformersCodec")


class TransformersCodec:
    """What the codec wrappers share: strict loading of their transformers model, and the device it is on.
    A subclass names its transformers class, config ``model_type``, default Hub repo and the family that needs it."""

    transformers_class: ClassVar[str]
    label: ClassVar[str]
    model_type: ClassVar[str]
    needed_by: ClassVar[str]
    default_repo: ClassVar[str]
    file_prefixes: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, model, *, name: str):
        self.model = model.eval()
        self.name = name

    @classmethod
    def load(
        cls: type[C],
        codec: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        device: str | torch.device = "cpu",
    ) -> C:
        """The codec from a Hub id or local directory (default :attr:`default_repo`), in float32 on ``device``."""
        import transformers

        model, name = load_transformers_codec(
            getattr(transformers, cls.transformers_class),
            codec or cls.default_repo,
            revision=revision,
            device=device,
            label=cls.label,
            model_type=cls.model_type,
            needed_by=cls.needed_by,
            file_prefixes=cls.file_prefixes,
        )
        return cls(model, name=name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    #: Frames on either side that an output sample depends on (the decoder's reach), for decoding in pieces.
    left_context: ClassVar[int]
    right_context: ClassVar[int]
    #: Padded frames one batched decode call may hold (bounds the decoder's activations).
    batch_frames: ClassVar[int] = 8192
    hop_length: int
    num_codebooks: int

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [frames, num_codebooks] -> mono float32 audio of frames * hop_length samples."""
        return self._decode_batch(codes[None])[0] if codes.shape[0] else np.zeros(0, dtype=np.float32)

    def _decode_batch(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [batch, frames, num_codebooks] -> float32 audio [batch, frames * hop_length]."""
        raise NotImplementedError

    @torch.inference_mode()
    def decode_many(self, codes: Sequence[torch.Tensor], *, batched: bool | None = None) -> list[np.ndarray]:
        """Each item of ``codes`` decoded as :meth:`decode` would, in few batched calls: the items, longest
        last, are padded to the longest of their call and trimmed after. Where the decoder reaches right
        (``right_context`` frames: DAC's convolutions are not causal), an item shorter than its call heard the
        padding in its last frames; those are decoded again alone with ``left_context`` frames of history, as
        the incremental decoder does, so every sample equals the single decode to float rounding.

        ``batched`` defaults to on for a codec on CUDA, where one call keeps the GPU busy instead of launching
        per result; a CPU is busy either way, and the padding would be extra work (bench/bench_dense.py)."""
        if batched is None:
            batched = self.device.type == "cuda"
        if not batched:
            return [self.decode(c) for c in codes]
        hop = self.hop_length
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(codes)
        order = sorted((i for i in range(len(codes)) if codes[i].shape[0]), key=lambda i: codes[i].shape[0])
        while order:
            group = [order.pop(0)]
            while order and (len(group) + 1) * codes[order[0]].shape[0] <= self.batch_frames:
                group.append(order.pop(0))
            longest = codes[group[-1]].shape[0]
            batch = torch.zeros(len(group), longest, self.num_codebooks, dtype=torch.long)
            for row, i in enumerate(group):
                batch[row, : codes[i].shape[0]] = codes[i].long().cpu()
            audio = self._decode_batch(batch)
            for row, i in enumerate(group):
                n = codes[i].shape[0]
                samples = audio[row, : n * hop].copy()
                if n < longest and self.right_context:
                    start = max(n - self.right_context, 0)
                    lo = max(start - self.left_context, 0)
                    samples[start * hop :] = self.decode(codes[i][lo:n])[(start - lo) * hop :]
                out[i] = samples
        return out


def load_transformers_codec(
    model_class,
    codec: str | os.PathLike,
    *,
    revision: str | None,
    device,
    label: str,
    model_type: str,
    needed_by: str,
    file_prefixes: tuple[tuple[str, str], ...] = (),
):
    """A transformers-format codec (config.json + model.safetensors) from a Hub id or directory, in float32:
    codecs are small, and reduced precision audibly colours the waveform. Returns (model, repo name).

    transformers' ``from_pretrained`` only warns about missing or unexpected weights, which turns a wrong
    directory into a codec that decodes noise. Here config.json must name ``model_type``, and
    model.safetensors must hold exactly the model's tensors with their shapes, or a CheckpointError says what
    differs. ``file_prefixes`` maps the model's tensor-name prefixes to the file's where transformers renames
    them on load (first match wins)."""
    from transformers.utils import logging as hf_logging

    repo = open_repo(codec, revision=revision, what="codec")
    config_path = repo.get(CONFIG_FILE)
    raw = json_object(read_json(config_path, "codec config"), "codec config", config_path)
    found = raw.get("model_type")
    wanted = f"{needed_by} needs a {label} codec ({model_type!r})"
    if not isinstance(found, str) or not found:
        raise CheckpointError(f"The codec config {config_path} has no model_type; {wanted}.")
    if found != model_type:
        raise CheckpointError(f"The codec {repo.name} is a {found!r} codec; {wanted}.")
    weights_path = repo.get(SAFETENSORS_FILE)
    tensors = read_safetensors([weights_path])

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading a small codec needs no bar of its own
    try:
        try:
            config = model_class.config_class.from_dict(raw)
            # Names and shapes only (on the meta device: no memory, no initialisation). state_dict() leaves out
            # the buffers transformers derives from the config and never saves.
            with torch.device("meta"):
                expected = {name: tuple(t.shape) for name, t in model_class(config).state_dict().items()}
        except Exception as exc:  # transformers raises many kinds; the user needs one sentence
            raise CheckpointError(f"Could not load the {label} codec from {repo.name}: {exc}") from exc
        in_file = {name: _file_name(name, file_prefixes) for name in expected}
        check_tensors(
            tensors,
            {in_file[name]: shape for name, shape in expected.items()},
            f"{label} codec weights in {weights_path}",
        )
        try:
            # from_pretrained builds the modules without initialising them; the strict load then makes the
            # checked file, not transformers' lenient loader, the source of every tensor.
            model = model_class.from_pretrained(config_path.parent, config=config)
        except Exception as exc:
            raise CheckpointError(f"Could not load the {label} codec from {repo.name}: {exc}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # assign: the module takes the file's tensors as they are (no copy); float32 and the device come next.
    model.load_state_dict({name: tensors[in_file[name]] for name in expected}, strict=True, assign=True)
    return model.to(device=device, dtype=torch.float32), repo.name


def _file_name(name: str, prefixes: tuple[tuple[str, str], ...]) -> str:
    for model_prefix, file_prefix in prefixes:
        if name.startswith(model_prefix):
            return file_prefix + name[len(model_prefix) :]
    return name
