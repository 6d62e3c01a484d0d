"""Reading checkpoint files strictly, shared by the model families and the codecs: JSON configs, typed config
fields, safetensors and PyTorch weight files, and the check of tensor names and shapes against a config.

Every problem is a :class:`CheckpointError` that names the file, the field or the tensors concerned.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"

#: The default of a required config field.
REQUIRED = object()

# Stand-ins returned for missing required fields so that parsing can go on and report all of them at once.
_PLACEHOLDERS: dict[type, Any] = {int: 0, float: 0.0, bool: False, str: ""}


# --------------------------------------------------------------------------------------------------------
# JSON and config fields
# --------------------------------------------------------------------------------------------------------


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON file at ``path``; ``what`` names it in errors ("model config", "shard index")."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"The {what} {path} cannot be read as JSON ({exc}).") from exc


def json_object(raw: Any, what: str, source: str | Path) -> dict:
    """``raw`` if it is a JSON object, else a CheckpointError naming ``source``."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"The {what} {source} is not a JSON object.")
    return raw


class ConfigReader:
    """Reads typed fields out of the blocks of a model config.

    With ``collect_missing`` a missing required field or block does not stop the reading: it is recorded in
    ``missing`` (and a stand-in value returned) so that :meth:`raise_missing` names all of them in one error.
    Without it, the first missing one raises. A field of the wrong type always raises at once."""

    def __init__(self, source: str, *, collect_missing: bool = False):
        self.source = source
        self.collect_missing = collect_missing
        self.missing: list[str] = []

    def block(self, parent: dict, key: str, where: str) -> dict:
        value = parent.get(key)
        if value is None:
            if not self.collect_missing:
                raise CheckpointError(f"The model config {self.source} has no '{where}{key}' block.")
            self.missing.append(where + key)
            return {}
        if not isinstance(value, dict):
            raise CheckpointError(
                f"The model config {self.source} has '{where}{key}' = {value!r}, expected a block."
            )
        return value

    def value(self, block: dict, key: str, where: str, kind: type, default: Any = REQUIRED) -> Any:
        value = block.get(key)
        if value is None:
            if default is not REQUIRED:
                return default
            if not self.collect_missing:
                raise CheckpointError(f"The model config {self.source} lacks the field '{where}{key}'.")
            self.missing.append(where + key)
            return _PLACEHOLDERS[kind]
        if kind in (int, float):
            # bool is an int subclass; a bool where a number belongs is a broken file, not a number.
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is int and isinstance(value, float) and not value.is_integer():
                ok = False
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise CheckpointError(
                f"The model config {self.source} has '{where}{key}' = {value!r}, expected a {kind.__name__}."
            )
        return kind(value)

    def int_list(self, block: dict, key: str, where: str, default: list[int] | tuple[int, ...]) -> tuple[int, ...]:
        value = block.get(key)
        if value is None:
            return tuple(default)
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise CheckpointError(
                f"The model config {self.source} has '{where}{key}' = {value!r}, expected a list of integers."
            )
        return tuple(value)

    def token_id(self, value: Any, name: str) -> int:
        """One integer id; transformers configs may hold it as a one-element list."""
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, int) or isinstance(value, bool):
            raise CheckpointError(f"The model config {self.source} has {name} = {value!r}, expected one integer.")
        return value

    def raise_missing(self) -> None:
        if self.missing:
            fields = ", ".join(repr(m) for m in self.missing)
            raise CheckpointError(f"The model config {self.source} lacks the required field(s) {fields}.")


class ConfigProblems:
    """What makes a parsed config (a dataclass) unusable, collected so that one CheckpointError names it all."""

    def __init__(self, config: Any, source: str):
        self.config = config
        self.source = source
        self.problems: list[str] = []

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def positive(self, suffixes: tuple[str, ...]) -> None:
        """Every integer field whose name ends in one of ``suffixes`` (sizes, counts) must be positive."""
        for name in (f.name for f in fields(self.config)):
            value = getattr(self.config, name)
            if isinstance(value, int) and not isinstance(value, bool) and name.endswith(suffixes) and value <= 0:
                self.add(f"{name} = {value} must be positive")

    def delays_not_negative(self, delay_pattern: tuple[int, ...]) -> None:
        if any(d < 0 for d in delay_pattern):
            self.add(f"the delay pattern {list(delay_pattern)} has negative entries")

    def grouped_heads(self, heads: int, kv_heads: int, what: str) -> None:
        if kv_heads > 0 and heads % kv_heads:
            self.add(f"the {what} has {heads} query heads, not a multiple of its {kv_heads} KV heads")

    def token_ids(self, names: tuple[str, ...], vocab_size: int, vocabulary: str) -> None:
        for name in names:
            if not 0 <= getattr(self.config, name) < vocab_size:
                self.add(f"{name} = {getattr(self.config, name)} is outside the {vocabulary} vocabulary")

    def raise_any(self) -> None:
        if self.problems:
            raise CheckpointError(f"The model config {self.source} is not usable: " + "; ".join(self.problems) + ".")


# --------------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------------


def read_safetensors(paths: list[Path], weight_map: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files ``paths`` (on the CPU, dtype as stored). With the ``weight_map`` of
    a shard index, each tensor must be in the shard the index names and every indexed tensor must be there."""
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    if name in tensors:
                        raise CheckpointError(
                            f"The tensor {name} appears in more than one shard (again in {path.name})."
                        )
                    if weight_map is not None and weight_map.get(name) != path.name:
                        raise CheckpointError(
                            f"The tensor {name} is in {path.name} but the shard index puts it in "
                            f"{weight_map.get(name) or 'no shard'}."
                        )
                    tensors[name] = handle.get_tensor(name)
        except SafetensorError as exc:
            raise CheckpointError(f"The weight file {path} is not a valid safetensors file ({exc}).") from exc
    if weight_map is not None:
        absent = sorted(name for name in weight_map if name not in tensors)
        if absent:
            raise CheckpointError(f"The shard index lists tensors its shards do not hold: {name_list(absent)}.")
    return tensors


def read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a ``torch.save`` file (``.bin``/``.pth``), loaded without running pickled code."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            # Files written with the legacy (pre-zip) torch.save format cannot be memory-mapped.
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"The weight file {path} cannot be read as a plain PyTorch state dict ({first_line})."
        ) from exc
    # Training scripts often wrap the state dict.
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"The weight file {path} holds a {type(obj).__name__}, not a state dict.")
    not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor) or not isinstance(k, str))
    if not_tensors:
        raise CheckpointError(f"The weight file {path} has entries that are not tensors: {name_list(not_tensors)}.")
    return dict(obj)


# --------------------------------------------------------------------------------------------------------
# Strict checks
# --------------------------------------------------------------------------------------------------------


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped tensor. ``what`` completes
    "The {what} do not match config.json", e.g. "nari-format weights in model.safetensors"."""
    missing = [name for name in expected if name not in tensors]
    unexpected = sorted(name for name in tensors if name not in expected)
    wrong = [
        f"{name} (expected {list(shape)}, found {list(tensors[name].shape)})"
        for name, shape in expected.items()
        if name in tensors and tuple(tensors[name].shape) != shape
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing {name_list(missing)}")
    if unexpected:
        parts.append(f"unexpected {name_list(unexpected)}")
    if wrong:
        parts.append(f"wrong shape {name_list(wrong)}")
    raise CheckpointError(f"The {what} do not match config.json: " + "; ".join(parts) + ".")


def name_list(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
