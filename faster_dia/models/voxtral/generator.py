"""Step-by-step text generation for Voxtral over a fixed set of batch slots (the Generator protocol).

``prepare`` claims a slot, runs the audio encoder and projector on the request's mel chunks, puts the audio
vectors where the prompt holds audio placeholder tokens, and prefills every prompt position but the last into
the slot's cache rows. Each ``step`` then feeds every running slot's latest token at its own position and
writes the next one, so the first ``step`` after ``prepare`` produces the first generated token. The
"frames" of a request are its generated token ids (a stop token is not one of them).

Sampling is per request (temperature 0 is greedy; otherwise temperature and top-p) with counter-based random
draws keyed by the request's seed and position, so a request's tokens never depend on its neighbours. Per step
the host reads one small array: which slots finished and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import InvalidInputError
from ..graphs import StepRunner, batch_bucket, resolve_mode, round_up
from ..protocol import RequestBase, SlotStateBase
from ..random import seed_key, uniform_noise
from ..slots import SlotGenerator
from .model import VoxtralModel

#: Extra stop token ids a request may name (beyond the model's EOS).
MAX_STOP_TOKENS = 8
#: Why a request ended, as the host reads it after each step.
RUNNING, STOPPED, LENGTH = 0, 1, 2


@dataclass
class VoxtralRequest(RequestBase):
    """One conversation to continue. ``input_ids`` [T] is the tokenized prompt with ``audio_token_id``
    placeholders; ``features`` [chunks, mel_bins, mel_frames] holds the mel chunks whose projected vectors
    replace the placeholders, in order (None when the prompt has no audio)."""

    input_ids: torch.Tensor
    seed: int = 0
    features: torch.Tensor | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()


@dataclass(eq=False)
class VoxtralSlotState(SlotStateBase):
    request: VoxtralRequest
    prompt_tokens: int
    #: "stop" (EOS or a stop token) or "length", once finished.
    finish_reason: str | None = None
    generated: int = field(default=0)

    @property
    def final_frames(self) -> int:
        """Generated tokens so far (every written token is final)."""
        if self.finished:
            return self.generated
        return self.position - (self.prompt_tokens - 1)


@dataclass(frozen=True)
class StepShape:
    batch: int
    kv_length: int
    sampling: bool


def choose_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, keys: torch.Tensor,
                  positions: torch.Tensor, *, sampling: bool) -> torch.Tensor:
    """Next token per row of ``logits`` [B, V] (float32): argmax where ``temperature`` is 0, otherwise a
    Gumbel-max draw from the top-p filtered distribution at that temperature."""
    greedy = logits.argmax(dim=-1)
    if not sampling:
        return greedy
    B, V = logits.shape
    probs = (logits / temperature.clamp_min(1e-5)[:, None]).softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest prefix whose mass reaches top_p (the most likely token always stays).
    outside = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p[:, None]
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    ids = torch.arange(V, device=logits.device).expand(B, 1, V)
    noise = uniform_noise(keys, positions, ids)[:, 0]
    sampled = (probs.log() - (-noise.log()).log()).argmax(dim=-1)
    return torch.where(temperature > 0, sampled, greedy)


class VoxtralGenerator(SlotGenerator[VoxtralSlotState]):
    """``max_seq_len`` bounds prompt plus generated tokens per request (the cache is allocated for it once);
    ``step_mode`` as in models/graphs.py."""

    def __init__(self, model: VoxtralModel, *, max_batch: int, max_seq_len: int = 4096,
                 step_mode: str | None = None):
        self.model = model
        self.config = c = model.config
        self._init_slots(max_batch)
        self.max_seq_len = min(max_seq_len, c.max_position_embeddings)
        dev = self.device = model.device
        self.cache = model.new_cache(max_batch, self.max_seq_len)
        self.tokens = torch.zeros(max_batch, self.max_seq_len, dtype=torch.long, device=dev)
        self.position = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.limit_position = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.active = torch.zeros(max_batch, dtype=torch.bool, device=dev)
        self.temperature = torch.zeros(max_batch, dtype=torch.float32, device=dev)
        self.top_p = torch.ones(max_batch, dtype=torch.float32, device=dev)
        self.key = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.stop_ids = torch.full((max_batch, MAX_STOP_TOKENS + 1), -1, dtype=torch.long, device=dev)
        self.ended = torch.zeros(max_batch, dtype=torch.int8, device=dev)
        self._slot_index = torch.arange(max_batch, device=dev)
        self._host_sampling = np.zeros(max_batch, dtype=bool)
        self.runner = StepRunner(step_mode or resolve_mode(dev, None))

    @staticmethod
    def cache_bytes_per_request(model_config, dtype: torch.dtype, max_seq_len: int) -> int:
        c = model_config
        return 2 * c.layers * c.kv_heads * c.head_dim * max_seq_len * dtype.itemsize + 8 * max_seq_len

    # ------------------------------------------------------------------ admission

    def validate(self, request: VoxtralRequest) -> int:
        """Check a request against the model's limits; returns its max_new_tokens."""
        c = self.config
        ids = request.input_ids
        if ids.dim() != 1 or ids.shape[0] == 0:
            raise InvalidInputError("The prompt is empty.", param="messages")
        T = int(ids.shape[0])
        if int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size:
            raise InvalidInputError(f"Prompt tokens must lie in 0..{c.vocab_size - 1}.", param="messages")
        if int(ids[-1]) == c.audio_token_id:
            raise InvalidInputError("The prompt must not end with audio.", param="messages")
        placeholders = int((ids == c.audio_token_id).sum())
        chunks = 0
        if request.features is not None:
            f = request.features
            if f.dim() != 3 or tuple(f.shape[1:]) != (c.num_mel_bins, c.mel_frames):
                raise InvalidInputError(
                    f"Audio features must have shape [chunks, {c.num_mel_bins}, {c.mel_frames}], got "
                    f"{list(f.shape)}.", param="messages")
            chunks = int(f.shape[0])
        if placeholders != chunks * c.audio_tokens_per_chunk:
            raise InvalidInputError(
                f"The prompt has {placeholders} audio placeholders but its {chunks} audio chunk(s) make "
                f"{chunks * c.audio_tokens_per_chunk}.", param="messages")
        room = self.max_seq_len - T
        if room < 1:
            raise InvalidInputError(
                f"The conversation is {T} tokens long (audio included); the model accepts at most "
                f"{self.max_seq_len - 1} so that one token can be generated.", param="messages")
        n = room if request.max_new_tokens is None else int(request.max_new_tokens)
        if n < 1:
            raise InvalidInputError(f"max_tokens must be at least 1, got {n}.", param="max_tokens")
        if n > room:
            raise InvalidInputError(
                f"max_tokens={n} does not fit: the conversation takes {T} of the {self.max_seq_len} positions, "
                f"which leaves {room}.", param="max_tokens")
        if not request.temperature >= 0:
            raise InvalidInputError("temperature must be 0 or more.", param="temperature")
        if not 0 < request.top_p <= 1:
            raise InvalidInputError("top_p must be in (0, 1].", param="top_p")
        if len(request.stop_token_ids) > MAX_STOP_TOKENS:
            raise InvalidInputError(f"At most {MAX_STOP_TOKENS} stop tokens.", param="stop")
        return n

    def prompt_embeddings(self, request: VoxtralRequest) -> torch.Tensor:
        """The decoder's input vectors [T, hidden] for the prompt: token embeddings with the audio placeholders
        replaced by the projected audio, in order."""
        ids = request.input_ids.to(self.device)
        x = self.model.embed(ids)
        if request.features is not None and request.features.shape[0]:
            audio = self.model.encode_audio(request.features)
            x = x.masked_scatter((ids == self.config.audio_token_id)[:, None], audio.to(x.dtype))
        return x

    @torch.inference_mode()
    def prepare(self, request: VoxtralRequest) -> VoxtralSlotState:
        max_new = self.validate(request)
        return self._claim(lambda slot: self._start(slot, request, max_new))

    def _start(self, slot: int, request: VoxtralRequest, max_new: int) -> VoxtralSlotState:
        T = int(request.input_ids.shape[0])
        if T > 1:
            x = self.prompt_embeddings(request)[: T - 1]
            positions = torch.arange(T - 1, device=self.device)[None]
            self.model.decode(x[None], positions, self.cache, self._slot_index[slot: slot + 1], kv_length=T - 1,
                              last_only=True)
        self.tokens[slot, T - 1] = int(request.input_ids[-1])
        self.position[slot] = T - 1
        self.limit_position[slot] = T - 1 + max_new
        self.temperature[slot] = float(request.temperature)
        self.top_p[slot] = float(request.top_p)
        self.key[slot] = seed_key(int(request.seed))
        stops = (self.config.eos_token_id, *request.stop_token_ids)
        self.stop_ids[slot] = -1
        self.stop_ids[slot, : len(stops)] = torch.tensor(stops, device=self.device)
        self.ended[slot] = RUNNING
        self.active[slot] = True
        self._host_position[slot] = T - 1
        self._host_sampling[slot] = request.temperature > 0
        return VoxtralSlotState(slot, request=request, prompt_tokens=T, _positions=self._host_position)

    # ------------------------------------------------------------------ steps

    @torch.inference_mode()
    def step(self) -> list[VoxtralSlotState]:
        running = self._running_slots()
        if running.size == 0:
            return []
        shape = self._shape(running)
        self.runner.run(shape, lambda: self._device_step(shape))
        self._host_position[running] += 1
        finished = []
        ended = self.ended[: shape.batch].cpu().numpy()  # the step's one device-to-host copy
        for slot in np.flatnonzero(ended):
            state = self._states[int(slot)]
            state.finished = True
            stopped = ended[slot] == STOPPED
            state.finish_reason = "stop" if stopped else "length"
            state.generated = int(self._host_position[slot]) - (state.prompt_tokens - 1) - int(stopped)
            self._host_active[slot] = False
            finished.append(state)
        return finished

    def _shape(self, running: np.ndarray) -> StepShape:
        batch = int(running[-1]) + 1
        kv_length = int(self._host_position[running].max()) + 1
        sampling = bool(self._host_sampling[running].any())
        if not self.runner.bucketed:
            return StepShape(batch, kv_length, sampling)
        return StepShape(batch_bucket(batch, self.max_batch), round_up(kv_length, 256, self.max_seq_len), True)

    def _device_step(self, shape: StepShape) -> None:
        """One token for slots 0 … shape.batch-1 from the generator's buffers only (capturable); inactive slots
        in the range are computed and discarded."""
        B = shape.batch
        span = slice(0, B)
        slots = self._slot_index[:B]
        position = self.position[span]
        active = self.active[span]
        token_in = self.tokens[slots, position]
        logits = self.model.decode(self.model.embed(token_in)[:, None], position[:, None], self.cache,
                                   slice(0, B), kv_length=shape.kv_length)[:, 0]
        nxt = position + 1
        token = choose_tokens(logits, self.temperature[span], self.top_p[span], self.key[span], nxt,
                              sampling=shape.sampling)
        write_at = nxt.clamp_max(self.max_seq_len - 1)
        self.tokens[slots, write_at] = torch.where(active, token, self.tokens[slots, write_at])
        self.position[span] = torch.where(active, nxt, position)
        stopped = (token[:, None] == self.stop_ids[span]).any(dim=-1)
        at_limit = nxt >= self.limit_position[span]
        ended = torch.where(stopped, STOPPED, torch.where(at_limit, LENGTH, RUNNING)).to(torch.int8)
        self.ended[span] = torch.where(active, ended, torch.zeros_like(ended))
        self.active[span] = active & (ended == RUNNING)

    # ------------------------------------------------------------------ results

    def frames(self, state: VoxtralSlotState, start: int, stop: int) -> torch.Tensor:
        """Generated token ids [start, stop) of the request (0 = the first generated token)."""
        first = state.prompt_tokens
        return self.tokens[state.slot, first + start: first + stop]
