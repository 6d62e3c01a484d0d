"""What a result costs (``includeCost`` of the task API), from a price the operator configures.

``--price-per-audio-second`` charges the seconds of audio delivered; ``--price-per-gpu-second`` charges the time
the model spent decoding the result: its decoder steps (one per audio frame) at the model's measured steps per
second. Requests decoded together in a batch each count the whole step time, so a GPU-second price is best set
as the machine's price per second divided by the batch the server usually runs. Both may be set; they add up.
Costs are in the operator's currency, rounded to 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError


@dataclass(frozen=True)
class Pricing:
    per_audio_second: float = 0.0
    per_gpu_second: float = 0.0

    def __post_init__(self) -> None:
        for name in ("per_audio_second", "per_gpu_second"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < float("inf"):
                raise InvalidInputError(f"The price {name} must be a number of 0 or more, got {value!r}.",
                                        param=name)

    def cost(self, *, audio_seconds: float, frames: int, steps_per_second: float) -> float:
        gpu_seconds = frames / steps_per_second if steps_per_second > 0 else 0.0
        return round(self.per_audio_second * audio_seconds + self.per_gpu_second * gpu_seconds, 6)
