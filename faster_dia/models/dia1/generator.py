"""Step-by-step generation for Dia-1.6B over a fixed set of batch slots.

The contract (docs/ARCHITECTURE.md, "Generator"): ``prepare(request)`` claims a slot, encodes the text,
fills the slot's cross-attention cache and prefills the voice prompt; ``step()`` advances every running
request by one decoder position in one batched call; ``finish(state)`` returns the request's codes and frees
its slot. Requests in different slots may sit at different positions, have different text and prompt lengths
and different sampling parameters, and join or leave between any two steps.

Per step the host learns only which requests finished (one small device-to-host copy), and the step itself is a
fixed sequence of device operations per step shape, so CUDA can replay it as a graph; everything else
(teacher forcing of the prompt, the EOS tail of the delay pattern, the length limit) is decided on the
device from per-slot tensors.

Decoding rules (reference semantics, transformers' ``DiaForConditionalGeneration.generate``):

* Position 0 is the BOS frame; a prompt of T frames fills positions 1..T; the prompt's delayed channels stay
  teacher-forced up to position T + max_delay while channel 0 already generates.
* When channel 0 emits EOS at position e (or e reaches the forced-stop position), channel c is forced to EOS
  at e + delay[c] and to PAD after it; the request ends once position e + max_delay is written.
* The request's audio is frames T+1 … e-1 of the undelayed sequence.
* ``max_new_tokens`` N allows positions T+1 … T+N; EOS is forced at T + N - max_delay so the tail fits, as
  transformers does, which leaves at most N - max_delay - 1 audio frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InvalidInputError
from ..graphs import StepRunner, batch_bucket, power_of_two_at_least, resolve_mode, round_up
from ..protocol import RequestBase, SlotStateBase
from ..random import seed_key
from ..slots import SlotGenerator
from .config import Dia1Config
from .delay import UNKNOWN, clean_codes, delayed_prompt, revert_delay
from .model import Dia1Model
from .sampling import choose_tokens

_NO_EOS = 1 << 40
#: Script lengths (bytes, prompt transcript included) whose text buckets a warm-up records.
WARMUP_TEXT_LENGTHS = (64, 128, 256)


@dataclass
class Dia1Request(RequestBase):
    """One utterance to generate. ``text`` holds byte tokens (prompt transcript included); ``prompt`` holds
    undelayed DAC codes [T, 9] or is None. ``negative_text`` (byte tokens) is what the unconditional branch of
    classifier-free guidance reads instead of all-zero text, so that guidance steers away from it."""

    text: torch.Tensor
    seed: int
    prompt: torch.Tensor | None = None
    max_new_tokens: int | None = None
    temperature: float = 1.2
    top_p: float = 0.95
    top_k: int = 45
    cfg_scale: float = 3.0
    negative_text: torch.Tensor | None = None


@dataclass(eq=False)
class SlotState(SlotStateBase):
    request: Dia1Request
    prompt_frames: int
    text_length: int
    end_position: int | None = None  # channel-0 EOS position, known once finished
    _delays: tuple[int, ...] = (0,)

    @property
    def final_frames(self) -> int:
        """How many frames of this request's audio are final (all nine channels written)."""
        if self.finished:
            return self.end_position - 1 - self.prompt_frames
        return max(0, self.position - max(self._delays) - self.prompt_frames)


@dataclass
class _InFlight:
    """A launched step whose done flags are on their way to the host: the rows it stepped, the request in
    each row when it was launched, and the generator's release count then (no release since: rows unchanged)."""

    event: torch.cuda.Event | None
    flags: torch.Tensor
    rows: np.ndarray
    by_row: list[SlotState | None]
    releases: int


@dataclass(frozen=True)
class StepShape:
    """Everything the host decides about one step; the device step depends on nothing else."""

    batch: int  # slots 0 … batch-1 are stepped
    kv_length: int  # self-attention keys read per row
    text_length: int  # cross-attention keys read per row
    top_k: int  # candidate set size
    sampling: bool  # False when every request is greedy


def _text_width(request: Dia1Request) -> int:
    """Text keys a request's two rows hold: its text, or the longer of its text and its negative text."""
    width = int(request.text.shape[0])
    return width if request.negative_text is None else max(width, int(request.negative_text.shape[0]))


def max_new_tokens_limit(config: Dia1Config, prompt_frames: int) -> int:
    """The largest ``max_new_tokens`` that fits the decoder's position limit after a prompt."""
    return config.audio_length - 1 - prompt_frames


def min_new_tokens(config: Dia1Config) -> int:
    """The smallest ``max_new_tokens`` that leaves room for one audio frame, its EOS and the delay tail."""
    return config.max_delay + 2


class Dia1Generator(SlotGenerator[SlotState]):
    """``step_mode`` is ``eager``, ``cuda-graphs`` or ``trace`` (see models/graphs.py); by default CUDA graphs on
    CUDA and eager elsewhere. Running requests occupy the lowest rows (models/slots.py)."""

    dense = True

    def __init__(self, model: Dia1Model, *, max_batch: int, step_mode: str | None = None):
        self.model = model
        self.config = c = model.config
        self._init_slots(max_batch)
        dev = model.device
        self.device = dev
        self.cache = model.new_cache(2 * max_batch)
        # A never-used slot must not have an all-masked text row: SDPA would return NaN for it.
        self.cache.cross_mask[:, 0] = True
        self.tokens = torch.full((max_batch, c.audio_length, c.channels), UNKNOWN, dtype=torch.long, device=dev)
        self.position = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.eos_position = torch.full((max_batch,), _NO_EOS, dtype=torch.long, device=dev)
        self.limit_position = torch.full((max_batch,), _NO_EOS, dtype=torch.long, device=dev)
        self.active = torch.zeros(max_batch, dtype=torch.bool, device=dev)
        self.temperature = torch.zeros(max_batch, dtype=torch.float32, device=dev)
        self.top_p = torch.ones(max_batch, dtype=torch.float32, device=dev)
        self.top_k = torch.ones(max_batch, dtype=torch.long, device=dev)
        self.cfg_scale = torch.zeros(max_batch, dtype=torch.float32, device=dev)
        self.key = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.done = torch.zeros(max_batch, dtype=torch.bool, device=dev)
        self.delays = torch.tensor(c.delay_pattern, dtype=torch.long, device=dev)
        self._slot_index = torch.arange(max_batch, device=dev)
        # Host copies of what the step shape is decided from, indexed by slot (with the slots' activity and
        # positions, see models/slots.py), so a step needs no loop over requests and no extra device reads.
        self._host_text_length = np.zeros(max_batch, dtype=np.int64)
        self._host_top_k = np.zeros(max_batch, dtype=np.int64)
        self._host_sampling = np.zeros(max_batch, dtype=bool)
        # Steps launched whose results are not read yet, per row (see ``step``).
        self._host_ahead = np.zeros(max_batch, dtype=np.int64)
        self._row_arrays += [self._host_text_length, self._host_top_k, self._host_sampling, self._host_ahead]
        self._done_host = [torch.zeros(max_batch, dtype=torch.bool, pin_memory=dev.type == "cuda") for _ in range(2)]
        self._launches = 0
        self._in_flight: _InFlight | None = None
        self.runner = StepRunner(step_mode or resolve_mode(dev, None))

    @staticmethod
    def cache_bytes_per_request(config: Dia1Config, dtype: torch.dtype) -> int:
        """Device memory one batch slot takes: self- and cross-attention caches of its two rows, its tokens."""
        c = config
        self_kv = 2 * c.decoder_kv_heads * c.decoder_head_dim * c.audio_length
        cross_kv = 2 * c.cross_kv_heads * c.cross_head_dim * c.text_length
        return 2 * c.decoder_layers * (self_kv + cross_kv) * dtype.itemsize + c.audio_length * c.channels * 8

    # ------------------------------------------------------------------ admission

    def validate(self, request: Dia1Request) -> tuple[int, int]:
        """Check a request against the model's limits; returns (prompt_frames, max_new_tokens)."""
        c = self.config
        text_length = int(request.text.shape[0])
        if text_length == 0:
            raise InvalidInputError("The script is empty.", param="input")
        if text_length > c.text_length:
            raise InvalidInputError(
                f"The script is {text_length} bytes long (voice prompt transcript included); "
                f"the model accepts at most {c.text_length} bytes.",
                param="input",
            )
        prompt_frames = 0 if request.prompt is None else int(request.prompt.shape[0])
        if request.prompt is not None and (request.prompt.dim() != 2 or request.prompt.shape[1] != c.channels):
            raise InvalidInputError(
                f"Voice prompt codes must have shape [frames, {c.channels}], got {list(request.prompt.shape)}.",
                param="audio_prompt",
            )
        if request.prompt is not None and prompt_frames and (
            int(request.prompt.min()) < 0 or int(request.prompt.max()) >= c.eos_token_id
        ):
            raise InvalidInputError(
                f"Voice prompt codes must lie in 0..{c.eos_token_id - 1}.", param="audio_prompt"
            )
        if int(request.text.min()) < 0 or int(request.text.max()) >= c.text_vocab_size:
            raise InvalidInputError("Script tokens must be bytes (0..255).", param="input")
        negative = request.negative_text
        if negative is not None:
            if negative.dim() != 1 or not 0 < negative.shape[0] <= c.text_length:
                raise InvalidInputError(f"The negative prompt must be 1 to {c.text_length} bytes long.",
                                        param="negative_prompt")
            if int(negative.min()) < 0 or int(negative.max()) >= c.text_vocab_size:
                raise InvalidInputError("Negative prompt tokens must be bytes (0..255).", param="negative_prompt")
        limit = max_new_tokens_limit(c, prompt_frames)
        smallest = min_new_tokens(c)
        if limit < smallest:
            raise InvalidInputError(
                f"The voice prompt is {prompt_frames} frames long; with it the model's limit of {c.audio_length} "
                f"positions leaves no room to generate. Use a prompt shorter than "
                f"{c.audio_length - 1 - smallest} frames.",
                param="audio_prompt",
            )
        n = limit if request.max_new_tokens is None else int(request.max_new_tokens)
        if n < smallest:
            raise InvalidInputError(
                f"max_new_tokens must be at least {smallest} (one frame plus the {c.max_delay}-step delay tail "
                f"and EOS), got {n}.",
                param="max_new_tokens",
            )
        if n > limit:
            raise InvalidInputError(
                f"max_new_tokens={n} does not fit: the model has {c.audio_length} positions"
                + (f", the voice prompt takes {prompt_frames + 1}" if prompt_frames else ", the BOS frame takes 1")
                + f", so at most {limit} new tokens fit.",
                param="max_new_tokens",
            )
        if request.temperature < 0:
            raise InvalidInputError("temperature must be >= 0 (0 means greedy).", param="temperature")
        if not 0 < request.top_p <= 1:
            raise InvalidInputError("top_p must be in (0, 1].", param="top_p")
        if request.top_k < 1:
            raise InvalidInputError("top_k must be a positive integer.", param="top_k")
        if request.cfg_scale < 0:
            raise InvalidInputError("cfg_scale must be >= 0.", param="cfg_scale")
        return prompt_frames, n

    @torch.inference_mode()
    def prepare(self, request: Dia1Request) -> SlotState:
        """Claim a slot for a request that passed ``validate``."""
        c = self.config
        prompt_frames = 0 if request.prompt is None else int(request.prompt.shape[0])
        max_new = max_new_tokens_limit(c, prompt_frames) if request.max_new_tokens is None else int(request.max_new_tokens)

        def fill(row: int) -> SlotState:
            self._fill_slot(row, request, prompt_frames)
            return self._start(row, request, prompt_frames, max_new)

        return self._claim(fill)

    def _start(self, row: int, request: Dia1Request, prompt_frames: int, max_new: int) -> SlotState:
        """The row's per-request parameters, on the device and in the host copies."""
        c = self.config
        self.position[row] = prompt_frames
        self.eos_position[row] = _NO_EOS
        self.limit_position[row] = prompt_frames + max_new - c.max_delay
        self.temperature[row] = request.temperature
        self.top_p[row] = request.top_p
        self.top_k[row] = request.top_k
        self.cfg_scale[row] = request.cfg_scale
        self.key[row] = seed_key(request.seed)
        self.active[row] = True
        text_length = _text_width(request)
        self._host_position[row] = prompt_frames
        self._host_ahead[row] = 0
        self._host_text_length[row] = text_length
        self._host_top_k[row] = request.top_k
        self._host_sampling[row] = request.temperature > 0
        return SlotState(
            request=request, slot=row, row=row, prompt_frames=prompt_frames, text_length=text_length,
            _positions=self._host_position, _delays=c.delay_pattern,
        )

    def _move_row(self, src: int, dst: int) -> None:
        """A request's state from row ``src`` into the free row ``dst``: its two cache rows (self-attention up
        to its position, the cross-attention keys of its text), its tokens and per-request values."""
        c = self.cache
        length = int(self._host_position[src]) + 1
        text = int(self._host_text_length[src])
        pair, into = slice(2 * src, 2 * src + 2), slice(2 * dst, 2 * dst + 2)
        for k in (*c.self_k, *c.self_v):
            k[into, :, :length] = k[pair, :, :length]
        for k in (*c.cross_k, *c.cross_v):
            k[into, :, :text] = k[pair, :, :text]
        c.cross_mask[into] = c.cross_mask[pair]
        for t in (self.tokens, self.position, self.eos_position, self.limit_position, self.active, self.temperature,
                  self.top_p, self.top_k, self.cfg_scale, self.key, self.done):
            t[dst] = t[src]

    def _fill_slot(self, row: int, request: Dia1Request, prompt_frames: int) -> None:
        """Encoder, cross-attention cache and prompt prefill for a request entering ``row``."""
        c, dev = self.config, self.device
        rows = torch.tensor([2 * row, 2 * row + 1], device=dev)

        # Row 2s is conditioned on the text; row 2s+1 is the unconditional branch of CFG: all-zero text
        # under the conditional row's mask, or the negative text, each row padded to the longer and masked.
        text = request.text.to(dev).view(1, -1)
        if request.negative_text is None:
            pair = torch.cat([text, torch.zeros_like(text)], dim=0)
            mask = torch.ones_like(pair, dtype=torch.bool)
        else:
            pair = torch.zeros(2, _text_width(request), dtype=torch.long, device=dev)
            mask = torch.zeros_like(pair, dtype=torch.bool)
            for branch, tokens in enumerate((request.text, request.negative_text)):
                pair[branch, : tokens.shape[0]] = tokens.to(dev)
                mask[branch, : tokens.shape[0]] = True
        self.model.fill_cross_cache(self.cache, rows, self.model.encode(pair, mask), mask)

        prompt = request.prompt if request.prompt is not None else torch.zeros(0, c.channels, dtype=torch.long)
        table = delayed_prompt(prompt.long().cpu(), c.delay_pattern, c.bos_token_id).to(dev)
        self.tokens[row] = UNKNOWN
        self.tokens[row, : table.shape[0]] = table
        if prompt_frames:
            frames = self.tokens[row, :prompt_frames].expand(2, -1, -1)
            positions = torch.arange(prompt_frames, device=dev).expand(2, -1)
            self.model.decode(
                frames, positions, self.cache, rows, kv_length=prompt_frames, text_length=pair.shape[1]
            )

    # ------------------------------------------------------------------ stepping

    @torch.inference_mode()
    def step(self) -> list[SlotState]:
        """Launch the next batched decoder position for every running request, then return the requests that
        finished with the step before it.

        The host runs one step ahead of the device: the step's done flags are copied into pinned host memory
        without waiting, and read only after the next step is queued, so the device never idles while the
        host reports. A request that finished at step n is therefore stepped once more at step n+1; its row is
        inactive on the device by then (the step that ends a request switches it off), so that step changes
        nothing of it, and its position and codes are those of step n. Host positions count the steps whose
        results have been read; ``_host_ahead`` counts a row's steps still in flight."""
        running = self._running_rows()
        launched = None
        if running.size:
            shape = self._shape(running)
            self.runner.run(shape, lambda: self._device_step(shape))
            launched = self._copy_done(shape.batch, running)
            self._host_ahead[running] += 1
        finished = self._collect(self._in_flight) if self._in_flight is not None else []
        self._in_flight = launched
        return finished

    def _copy_done(self, batch: int, rows: np.ndarray) -> _InFlight:
        """Start the copy of a launched step's done flags to the host (the step's one device-to-host transfer)."""
        flags = self._done_host[self._launches % 2]  # two buffers: one being read while the next is written
        self._launches += 1
        flags[:batch].copy_(self.done[:batch], non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return _InFlight(event, flags, rows, self._by_row[:], self._releases)

    def _collect(self, step: _InFlight) -> list[SlotState]:
        """The results of an earlier launched step: positions advanced, requests that finished with it."""
        if step.event is not None:
            step.event.synchronize()
        done = step.flags.numpy()
        if step.releases == self._releases:
            # Nobody left since the launch, so every row holds the request it held then; the ones still
            # active on the host are those that did not end at the step before (which left their rows as they
            # were). No loop over running requests.
            live = step.rows[self._host_active[step.rows]]
            self._host_ahead[live] -= 1
            self._host_position[live] += 1
            ended = [(int(row), self._by_row[row]) for row in live[done[live]]]
        else:
            ended = []
            for launch_row in step.rows:
                state = step.by_row[launch_row]
                if state.finished or self._states.get(state.slot) is not state:
                    continue  # reported already (it ended at the step before, which this one left alone), or released
                row = state.row  # it may have moved to a lower row since the launch
                self._host_ahead[row] -= 1
                self._host_position[row] += 1
                if done[launch_row]:
                    ended.append((row, state))
        for row, state in ended:
            state.finished = True
            state.end_position = state.position - self.config.max_delay
            self._host_active[row] = False
        return [state for _, state in ended]

    def _shape(self, running: np.ndarray) -> StepShape:
        """The step shape for the running slots: exact, or rounded up to buckets when steps are replayed."""
        c = self.config
        batch = int(running[-1]) + 1
        kv_length = int((self._host_position[running] + self._host_ahead[running]).max()) + 1
        text_length = int(self._host_text_length[running].max())
        top_k = min(int(self._host_top_k[running].max()), c.audio_vocab_size)
        if not self.runner.bucketed:
            return StepShape(batch, kv_length, text_length, top_k, bool(self._host_sampling[running].any()))
        return StepShape(
            batch=batch_bucket(batch, self.max_batch),
            kv_length=round_up(kv_length, 256, c.audio_length),
            text_length=power_of_two_at_least(text_length, 64, c.text_length),
            top_k=power_of_two_at_least(top_k, 64, c.audio_vocab_size),
            sampling=True,
        )

    def warmup_shapes(self) -> list[StepShape]:
        """Every kv bucket a request can reach, for scripts up to 256 bytes at the default top-k, in every batch
        bucket: short positions first (every request passes them), then longer texts, then larger batches."""
        c = self.config
        batches = sorted({batch_bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)})
        kv_lengths = sorted({round_up(n, 256, c.audio_length) for n in range(1, c.audio_length + 1, 256)})
        texts = sorted({power_of_two_at_least(n, 64, c.text_length) for n in WARMUP_TEXT_LENGTHS})
        top_k = power_of_two_at_least(Dia1Request.top_k, 64, c.audio_vocab_size)
        return [StepShape(batch, kv, text, top_k, True) for kv in kv_lengths for text in texts for batch in batches]

    def _device_step(self, shape: StepShape) -> None:
        """One decoder position for slots 0 … shape.batch-1, reading and writing only the generator's buffers
        (capturable: no host values but ``shape``, no device-to-host reads). Inactive slots in the range are
        computed and discarded."""
        c = self.config
        B = shape.batch
        span = slice(0, B)
        slots = self._slot_index[:B]
        position = self.position[span]
        active = self.active[span]

        # Rows 2s and 2s+1 (conditional, unconditional) both read slot s's frame at its position.
        frame = self.tokens[slots, position].clamp_min(0)
        logits = self.model.decode(
            frame[:, None].expand(B, 2, c.channels).reshape(2 * B, 1, c.channels),
            position[:, None].expand(B, 2).reshape(2 * B, 1),
            self.cache,
            slice(0, 2 * B),
            kv_length=shape.kv_length,
            text_length=shape.text_length,
        ).view(B, 2, c.channels, c.audio_vocab_size)

        nxt = position + 1
        token = choose_tokens(
            logits[:, 0], logits[:, 1], variant=c.variant, cfg_scale=self.cfg_scale[span],
            temperature=self.temperature[span], top_p=self.top_p[span], top_k=self.top_k[span],
            max_top_k=shape.top_k, keys=self.key[span], positions=nxt,
            eos_token_id=c.eos_token_id, sampling=shape.sampling,
        )

        # EOS in channel 0 (or the forced stop) starts the delay tail: channel c ends d_c steps later.
        eos_now = (token[:, 0] == c.eos_token_id) | (nxt >= self.limit_position[span])
        eos_position = torch.where(
            active & eos_now & (self.eos_position[span] == _NO_EOS), nxt, self.eos_position[span]
        )
        since_eos = (nxt - eos_position)[:, None]
        token = torch.where(since_eos == self.delays, c.eos_token_id, token)
        token = torch.where(since_eos > self.delays, c.pad_token_id, token)
        # Teacher forcing of the prompt's delayed channels wins over anything sampled.
        write_at = nxt.clamp_max(c.audio_length - 1)
        known = self.tokens[slots, write_at]
        token = torch.where(known != UNKNOWN, known, token)
        self.tokens[slots, write_at] = torch.where(active[:, None], token, known)
        self.eos_position[span] = eos_position
        self.position[span] = torch.where(active, nxt, position)
        done = active & (nxt == eos_position + c.max_delay)
        self.done[span] = done
        self.active[span] = active & ~done

    # ------------------------------------------------------------------ results

    def frames(self, state: SlotState, start: int, stop: int) -> torch.Tensor:
        """Final audio frames [start, stop) of the request (0 = first generated frame), delay reverted, codes
        outside the codebook replaced by 0. Valid for stop <= state.final_frames."""
        first = state.prompt_frames + 1
        codes = revert_delay(self.tokens[state.row], self.config.delay_pattern, first + start, first + stop)
        return clean_codes(codes)
