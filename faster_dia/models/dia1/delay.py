"""The delay pattern: channel c of the decoder sequence runs ``delay[c]`` frames behind channel 0.

Frame 0 of the undelayed sequence is the BOS frame, then come the prompt frames (if any) and the generated
frames. In the delayed layout, position t of channel c holds undelayed frame t - delay[c]; positions before a
channel's first frame hold BOS.
"""

from __future__ import annotations

import torch

UNKNOWN = -1


def delayed_prompt(prompt: torch.Tensor, delay_pattern: tuple[int, ...], bos_token_id: int) -> torch.Tensor:
    """Teacher-forcing table for a request: [T_prompt + 1 + max_delay, C] in the delayed layout, with
    ``UNKNOWN`` where the model must generate. ``prompt`` is [T_prompt, C] undelayed codes (T_prompt may be 0).

    Position t of channel c is known when t - delay[c] <= T_prompt: BOS for t <= delay[c], else prompt
    frame t - delay[c] - 1. Channel 0 is fully known up to T_prompt; the delayed channels stay known up to
    max_delay positions further, while channel 0 already generates."""
    T, C = prompt.shape
    max_delay = max(delay_pattern)
    length = T + 1 + max_delay
    table = torch.full((length, C), UNKNOWN, dtype=torch.long)
    for c, d in enumerate(delay_pattern):
        table[: d + 1, c] = bos_token_id
        table[d + 1 : d + 1 + T, c] = prompt[:, c]
    return table


def revert_delay(delayed: torch.Tensor, delay_pattern: tuple[int, ...], start: int, stop: int) -> torch.Tensor:
    """Undelayed frames ``start`` … ``stop - 1`` from a delayed sequence [T, C]: frame f of channel c is
    delayed position f + delay[c]."""
    frames = torch.arange(start, stop, device=delayed.device)
    columns = [delayed[frames + d, c] for c, d in enumerate(delay_pattern)]
    return torch.stack(columns, dim=-1) if columns else delayed.new_zeros((0, 0))


def clean_codes(codes: torch.Tensor, codebook_size: int = 1024) -> torch.Tensor:
    """Codes outside the codebook (EOS, PAD, BOS) cannot be decoded by DAC; the reference replaces them by 0."""
    return torch.where((codes < 0) | (codes >= codebook_size), torch.zeros_like(codes), codes)
