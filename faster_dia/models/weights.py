"""Strict checking of checkpoint tensors against the shapes a config implies, shared by the families."""

from __future__ import annotations

import torch

from ..errors import CheckpointError


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
