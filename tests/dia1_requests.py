"""Five different Dia-1.6B requests (texts, sampling parameters, lengths, one voice prompt) shared by the
engine and step-capture tests."""

from __future__ import annotations

import numpy as np

SCRIPTS = [
    "[S1] Did you hear? (laughs) [S2] I did.",
    "[S2] Short.",
    "[S1] A somewhat longer third line for this batch, with more words.",
    "[S2] Fourth. [S1] Yes.",
    "[S1] Five is the last one (sighs).",
]


def dia1_request(tts, i, **overrides):
    """Request ``i`` (0-4) for ``tts``; keyword arguments replace its parameters."""
    params = dict(seed=100 + i, audio_prompt=None, audio_prompt_transcript=None, audio_prompt_sample_rate=None,
                  temperature=[1.2, 0.0, 0.9, 1.5, 1.2][i], top_p=[0.95, 0.95, 0.8, 1.0, 0.9][i],
                  top_k=[45, 45, 20, 60, 45][i], cfg_scale=[3.0, 3.0, 2.0, 4.0, 1.0][i],
                  max_new_tokens=[120, 90, 150, 60, 100][i])
    if i == 3:
        params.update(audio_prompt=np.random.default_rng(3).integers(0, 1024, (30, 9)),
                      audio_prompt_transcript="[S1] A prompt.")
    params.update(overrides)
    return tts._request(SCRIPTS[i], **params)
