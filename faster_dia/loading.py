"""``faster_dia.load``: a checkpoint's files → the family that recognises its config → a loaded model.

The registry is the list :data:`FAMILIES`: each entry is a family package with ``FAMILY`` (its name),
``recognizes(config) -> bool`` and ``load(model, **options)``. Importing a family package costs nothing;
its heavy modules are imported by its ``load``. config.json is read once, here, before torch is imported, so
a missing model is reported at once.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, InvalidInputError
from .hub import open_repo

if TYPE_CHECKING:
    import torch

    from .speech import SpeechModel

log = logging.getLogger(__name__)

DEFAULT_MODEL = "nari-labs/Dia-1.6B-0626"

#: The model families, in the order their ``recognizes`` is asked. A new family is one package and one line.
FAMILIES = (
    "faster_dia.models.voxtral",
    "faster_dia.models.dia2",
    "faster_dia.models.dia1",
)

DTYPE_NAMES = ("float32", "bfloat16", "float16")

#: Quantized weight modes of ``load(quantize=...)`` (faster_dia.models.quantize): int8 weights (any device),
#: int8 weights and activations (CPU), int4 weights (CUDA, CPU), float8 (CUDA, compute capability 8.9+).
QUANTIZE_MODES = ("int8", "int8-dynamic", "int4", "fp8")

#: Requests decoded together by default off CUDA, and at most by default on CUDA.
DEFAULT_MAX_BATCH_CPU = 4
DEFAULT_MAX_BATCH_CUDA_LIMIT = 64


def family_of(config: Any, source: str) -> Any:
    """The family package whose ``recognizes`` accepts ``config`` (a parsed config.json)."""
    if isinstance(config, dict):
        for name in FAMILIES:
            family = importlib.import_module(name)
            if family.recognizes(config):
                return family
    known = ", ".join(importlib.import_module(name).FAMILY for name in FAMILIES)
    raise CheckpointError(f"{source} is not the config of a supported model family ({known}).")


def public_id(model: str | os.PathLike) -> str:
    """The name a model goes by (``model_id``, the server's listings): a Hub id as given, a local directory
    by its name, so that logs and listings do not show where the files are."""
    path = Path(model)
    return path.resolve().name if path.is_dir() else str(model)


#: The files a family's config may be in: transformers' config.json, or Mistral's native params.json.
CONFIG_FILES = ("config.json", "params.json")


def read_config(model: str | os.PathLike, revision: str | None = None) -> tuple[dict[str, Any], str]:
    """The parsed config of a model reference (config.json, else a native params.json), and its path."""
    repo = open_repo(model, revision=revision)
    name = next((n for n in CONFIG_FILES if repo.has(n)), CONFIG_FILES[0])  # missing: the error names config.json
    path = repo.get(name)
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def pick_device(device: str | torch.device | None) -> torch.device:
    import torch

    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidInputError(f"Unknown device {device!r}: {exc}", param="device") from exc
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_dtype_name(dtype: Any) -> None:
    """Refuse an unknown dtype name before anything is loaded."""
    if isinstance(dtype, str) and dtype not in DTYPE_NAMES:
        raise InvalidInputError(f"Unsupported dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}.", param="dtype")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``flags`` on x86, ``Features`` on Arm, from /proc/cpuinfo); empty where there is
    no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX on x86, the BF16 extension on Arm).
    Without it torch converts to float32 and back, and bfloat16 runs slower than float32."""
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & cpu_flags())


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    import torch

    dtypes = {name: getattr(torch, name) for name in DTYPE_NAMES}
    if dtype is None:
        native_bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native_bf16 else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in dtypes.values():
            return dtype
        raise InvalidInputError(f"Unsupported dtype {dtype}; use one of {', '.join(dtypes)}.", param="dtype")
    check_dtype_name(dtype)
    if dtype not in dtypes:
        raise InvalidInputError(f"Unsupported dtype {dtype!r}; use one of {', '.join(dtypes)}.", param="dtype")
    return dtypes[dtype]


def max_batch_for_memory(free_bytes: int, per_request_bytes: int) -> int:
    """Batch slots whose caches fit in half of ``free_bytes`` (the rest is left for activations, the codec and
    other processes): a multiple of 8 from 8 up, at least 1, at most DEFAULT_MAX_BATCH_CUDA_LIMIT."""
    slots = int(free_bytes // 2 // max(per_request_bytes, 1))
    if slots >= 8:
        slots -= slots % 8
    return max(1, min(slots, DEFAULT_MAX_BATCH_CUDA_LIMIT))


def default_max_batch(device: torch.device, per_request_bytes: int) -> int:
    """The ``max_batch`` used when none is given: sized to the GPU's free memory on CUDA, 4 elsewhere."""
    import torch

    if device.type != "cuda":
        return DEFAULT_MAX_BATCH_CPU
    free, _ = torch.cuda.mem_get_info(device)
    return max_batch_for_memory(free, per_request_bytes)


def check_load_options(*, dtype: Any = None, max_batch: Any = None, max_queue: Any = None,
                       cuda_graphs: Any = None, quantize: Any = None, warmup: Any = None,
                       warmup_seconds: Any = 120.0, compile: Any = None) -> None:
    """The checks of ``load``'s options that need neither torch nor the model, for callers (the command line,
    the server) that want to refuse bad options before loading anything."""
    check_dtype_name(dtype)
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise InvalidInputError(f"Unsupported quantize mode {quantize!r}; use one of {', '.join(QUANTIZE_MODES)}.",
                                param="quantize")
    if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
        raise InvalidInputError(f"cuda_graphs must be True, False or None, got {cuda_graphs!r}.", param="cuda_graphs")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise InvalidInputError(f"max_batch must be a positive integer, got {max_batch!r}.", param="max_batch")
    if max_queue is not None and (isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0):
        raise InvalidInputError(f"max_queue must be 0 or a positive integer, got {max_queue!r}.", param="max_queue")
    if compile is not None and not isinstance(compile, bool):
        raise InvalidInputError(f"compile must be True, False or None, got {compile!r}.", param="compile")
    if warmup is not None and not isinstance(warmup, bool):
        raise InvalidInputError(f"warmup must be True, False or None, got {warmup!r}.", param="warmup")
    if isinstance(warmup_seconds, bool) or not isinstance(warmup_seconds, int | float) or not warmup_seconds >= 0:
        raise InvalidInputError(f"warmup_seconds must be a number of seconds >= 0, got {warmup_seconds!r}.",
                                param="warmup_seconds")


def load(
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    codec: str | os.PathLike | None = None,
    revision: str | None = None,
    codec_revision: str | None = None,
    max_batch: int | None = None,
    max_queue: int | None = None,
    cuda_graphs: bool | None = None,
    voices: Any = None,
    asr: Any = None,
    quantize: str | None = None,
    warmup: bool | None = None,
    warmup_seconds: float = 120.0,
    compile: bool | None = None,
) -> SpeechModel:
    """Load a Dia checkpoint (Hub id or local directory) and its codec, ready to generate. The family is read
    from config.json: Dia-1.6B checkpoints use the DAC codec (default ``descript/dac_44khz``), Dia2
    checkpoints Mimi (``kyutai/mimi``).

    ``max_batch`` is how many requests are decoded together (caches for that many are allocated once;
    default: on CUDA as many as half the free GPU memory holds after loading, up to 64; 4 elsewhere);
    ``max_queue`` bounds the requests waiting for a slot (default 16 per slot, at least 64). ``cuda_graphs``
    replays each decode step shape as a CUDA graph (default: on for CUDA devices; CUDA only). ``voices`` is
    the voice library ``voice=`` names are looked up in (a directory or a ``faster_dia.VoiceLibrary``);
    ``asr`` the speech recognizer for voice prompts without a transcript (a loaded one, a Whisper size or a
    CTranslate2 directory; default: ``faster_dia.asr``'s default, loaded on first need).

    ``quantize`` stores the transformer's linear weights quantized (``faster_dia.models.quantize``): ``"int8"``
    (int8 weights; any device), ``"int8-dynamic"`` (int8 weights and activations; CPU, the fastest there),
    ``"int4"`` (CUDA, CPU) or ``"fp8"`` (CUDA GPUs of compute capability 8.9 or higher); None keeps them in
    ``dtype``. The compute dtype defaults to bfloat16 on CUDA and on CPUs with native bfloat16, float32
    elsewhere.

    ``warmup`` records the common decode step shapes (CUDA graphs) at load, with a progress bar, so that the
    first requests do not wait for captures; at most ``warmup_seconds``, the rest is recorded on first use.
    Default: on where steps are replayed on CUDA, off elsewhere.

    ``compile`` compiles each recorded decode step shape with ``torch.compile`` (inductor; on CUDA the compiled
    step is then captured as a CUDA graph): fewer, fused kernels, at seconds to minutes of compiling per shape
    (see ``faster_dia.models.graphs``). Default: the ``FASTER_DIA_COMPILE`` environment variable, off when unset."""
    check_load_options(dtype=dtype, max_batch=max_batch, max_queue=max_queue, cuda_graphs=cuda_graphs,
                       quantize=quantize, warmup=warmup, warmup_seconds=warmup_seconds, compile=compile)
    config, source = read_config(model, revision)
    family = family_of(config, source)

    from .models.graphs import resolve_mode

    dev = pick_device(device)
    if cuda_graphs and dev.type != "cuda":
        raise InvalidInputError(f"CUDA graphs need a CUDA device; the model would run on {dev.type}.",
                                param="cuda_graphs")
    if quantize is not None:
        from .models.quantize import check_quantize

        check_quantize(quantize, dev, family.FAMILY)
    tts = family.load(model, revision=revision, device=dev, dtype=pick_dtype(dtype, dev), codec=codec,
                      codec_revision=codec_revision, max_batch=max_batch, max_queue=max_queue,
                      step_mode=resolve_mode(dev, cuda_graphs, compile))
    tts.model_id = public_id(model)
    tts.quantize = quantize
    if quantize is not None:
        # Before the first step: a recorded step (CUDA graph, trace) must see the quantized weights.
        from .models.quantize import quantize_model

        report = quantize_model(tts.model, family.FAMILY, quantize)
        log.info("%s: %s", tts.model_id, report)
    generator = tts.engine.generator
    if warmup if warmup is not None else dev.type == "cuda" and generator.runner.bucketed:
        # Last: a recorded step bakes in the weights it sees (quantized ones included).
        generator.warm_up(warmup_seconds)
    if voices is not None:
        from .voices import VoiceLibrary

        tts.voices = voices if isinstance(voices, VoiceLibrary) else VoiceLibrary(voices)
    if asr is not None:
        tts.asr = asr
    return tts
