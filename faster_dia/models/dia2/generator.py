"""Frame-by-frame generation for Dia2 over a fixed set of batch slots (the Generator contract of
docs/ARCHITECTURE.md, as for Dia-1.6B).

One step t, for every running request at once: the transformer reads text tokens (main, second) and the
delayed audio column t, predicts the action (new word / pad) and codebook 0 for column t+1; the depformer
then predicts codebooks 1..31 one stage at a time. Actions go to each request's text state machine on the
host (the one device-to-host transfer per step), which gives the text tokens of step t+1.

The delayed grid: codebook k at column t holds aligned frame t - delay[k]; columns before delay[k] hold BOS.
A voice prefix fills aligned frames 0 … P-1. Two ways to condition on it (``Dia2Request.prefix_mode``):

* ``"faster-dia"`` (default): every grid cell the prefix determines is teacher-forced, including the delayed
  cells past column P; positions 0 … P-2 are prefilled with the teacher-forced text, and position P-1 is the
  first real step, run once. Each prefix word's new word is forced exactly once (see ``PrefixActions``), at
  its step or, when that is not possible there, at the first step after it where it is.
* ``"reference"``: the official runtime's warm-up, quirks included: steps 0 … P-1 are teacher-forced (so the
  text is one step ahead of the faster-dia mode), then position P-1 runs a second time as the first real
  step, so the cache holds two entries for it and every later step sits one cache entry past its position;
  the delayed prefix cells at columns >= P are regenerated; the result starts at frame P-1.

A request ends ``flush_tail`` steps after its state machine ran out of words (or at the context limit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InvalidInputError
from ..graphs import StepRunner, batch_bucket, power_of_two_at_least, resolve_mode, round_up
from ..protocol import RequestBase, SlotStateBase
from ..random import draw_keys, seed_key
from ..slots import SlotGenerator
from .model import Dia2Model
from .sampling import STREAMS, choose
from .text import FRAME_RATE, Entry, PrefixActions, TextStateMachine

log = logging.getLogger(__name__)

UNKNOWN = -1
#: Steps run after the last word: the longest delay (so its audio is complete) plus a little silence.
FLUSH_EXTRA = 6
#: How a voice prefix conditions generation: faster-dia's teacher forcing, or the official runtime's warm-up.
PREFIX_MODES = ("faster-dia", "reference")


@dataclass
class Dia2Request(RequestBase):
    entries: list[Entry]
    seed: int
    prefix_codes: torch.Tensor | None = None  # [P, 32] aligned Mimi codes of the voice prefix
    # One forced new-word step per prefix entry; the prefix entries are the first ones of ``entries``.
    prefix_new_word_steps: tuple[int, ...] = ()
    prefix_mode: str = "faster-dia"  # one of PREFIX_MODES
    max_new_frames: int | None = None
    text_temperature: float = 0.6
    text_top_k: int = 50
    audio_temperature: float = 0.8
    audio_top_k: int = 50
    cfg_scale: float = 2.0
    cfg_filter_k: int = 50
    initial_padding: int = 2
    include_prefix: bool = False
    #: The script arrives while the request runs (``append_text``, then ``close_text``).
    text_streaming: bool = False


@dataclass(eq=False)
class Dia2SlotState(SlotStateBase):
    request: Dia2Request
    machine: TextStateMachine
    prefix_frames: int
    crop: int  # first aligned frame of the result
    limit: int  # last grid column this request may write
    prefix: PrefixActions = PrefixActions(())
    prefix_words: int = 0  # the transcript's first words that are the prefix's
    text: tuple[int, int] = (1, 3)  # (main, second) text tokens fed at ``position``
    last_column: int | None = None
    hit_limit: bool = False
    waiting_for_text: bool = False  # held in its slot, not stepped, until more text (or its end) arrives
    _max_delay: int = 18

    @property
    def final_frames(self) -> int:
        """Aligned frames of the result whose 32 codebooks are all written."""
        last = self.position if self.last_column is None else self.last_column
        return max(0, last - self._max_delay + 1 - self.crop)

    @property
    def forcing_prefix(self) -> bool:
        """Whether this step's action is still the prefix's (faster-dia mode: until every prefix word is in)."""
        return not self.prefix.reference and self.prefix.pending(self.machine)

    @property
    def timestamps(self) -> list[tuple[str, float]]:
        """(word, start second) of the result's words. The prefix's words are the transcript's first ones (the
        machine consumes its queue in order), dropped unless the result includes the prefix. A word starts at
        the step that consumed it; the one consumed by the first free step (P-1, whose action gives the text
        of the first generated frame P) is one frame before the faster-dia result, so it starts at 0."""
        words = self.machine.transcript if self.request.include_prefix else self.machine.transcript[self.prefix_words:]
        return [(word, round(max(step - self.crop, 0) / FRAME_RATE, 3)) for word, step in words]


@dataclass(frozen=True)
class Dia2StepShape:
    """Everything the host decides about one step; the device step depends on nothing else."""

    batch: int  # slots 0 … batch-1 are stepped
    guided: bool  # some request uses guidance: every slot runs a conditional and an unconditional row
    all_guided: bool  # every request does: candidates come from the guidance filter alone
    kv_length: int
    shifted: bool  # some request's cache entries sit one past their position (reference prefix mode)
    filter_k: int  # the largest cfg_filter_k
    text_top_k: int
    audio_top_k: int
    text_sampling: bool
    audio_sampling: bool


class Dia2Generator(SlotGenerator[Dia2SlotState]):
    """``step_mode`` is ``eager``, ``cuda-graphs`` or ``trace`` (see models/graphs.py); by default CUDA graphs on
    CUDA and eager elsewhere. The whole frame (transformer step, 31 depformer stages, 32 samplings) is one
    recorded step. Running requests occupy the lowest rows (models/slots.py).

    Unlike Dia-1.6B's, this step is synchronous: the text tokens of step n+1 come from each request's text state
    machine on the host, fed with the actions of step n, so the host cannot launch a step before it has read
    the one before (running a step ahead would need the state machine on the device)."""

    dense = True

    def __init__(self, model: Dia2Model, *, max_batch: int, max_prefix_frames: int = 750,
                 step_mode: str | None = None):
        self.model = model
        self.config = c = model.config
        self._init_slots(max_batch)
        self.device = dev = model.device
        self.max_positions = c.max_context_steps + max_prefix_frames + 1
        self.max_prefix_frames = max_prefix_frames
        self.cache = model.new_cache(2 * max_batch, self.max_positions)
        self._dep_caches: dict[int, object] = {}
        self.grid = torch.full((max_batch, self.max_positions, c.num_codebooks), UNKNOWN, dtype=torch.long, device=dev)
        self.position = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.cache_shift = torch.zeros(max_batch, dtype=torch.long, device=dev)  # cache entry - position
        self.active = torch.zeros(max_batch, dtype=torch.bool, device=dev)
        self.key = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self.cfg_scale = torch.ones(max_batch, device=dev)
        self.text_temperature = torch.ones(max_batch, device=dev)
        self.text_top_k = torch.ones(max_batch, dtype=torch.long, device=dev)
        self.audio_temperature = torch.ones(max_batch, device=dev)
        self.audio_top_k = torch.ones(max_batch, dtype=torch.long, device=dev)
        self.cfg_filter_k = torch.ones(max_batch, dtype=torch.long, device=dev)
        self.text_tokens = torch.zeros(max_batch, 2, dtype=torch.long, device=dev)  # (main, second) per slot
        self.action = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self._blank_text = torch.tensor([c.text_zero_token_id, c.text_pad_token_id], device=dev)
        self.delays = torch.tensor(c.delay_pattern, dtype=torch.long, device=dev)
        self._slot_index = torch.arange(max_batch, device=dev)
        self._streams = torch.arange(c.num_codebooks + 1, device=dev)  # the random draws of a step (see STREAMS)
        # Host copies of what the step shape is decided from, indexed by slot (see models/slots.py).
        self._host_text = np.zeros((max_batch, 2), dtype=np.int64)
        self._host_cache_shift = np.zeros(max_batch, dtype=np.int64)
        self._host_guided = np.zeros(max_batch, dtype=bool)
        self._host_filter_k = np.zeros(max_batch, dtype=np.int64)
        self._host_text_top_k = np.zeros(max_batch, dtype=np.int64)
        self._host_audio_top_k = np.zeros(max_batch, dtype=np.int64)
        self._host_text_sampling = np.zeros(max_batch, dtype=bool)
        self._host_audio_sampling = np.zeros(max_batch, dtype=bool)
        self._row_arrays += [self._host_text, self._host_cache_shift, self._host_guided, self._host_filter_k,
                             self._host_text_top_k, self._host_audio_top_k, self._host_text_sampling,
                             self._host_audio_sampling]
        self.runner = StepRunner(step_mode or resolve_mode(dev, None))

    @staticmethod
    def cache_bytes_per_request(config, dtype: torch.dtype, max_prefix_frames: int = 750) -> int:
        """Device memory one batch slot takes: the transformer cache of its two rows, its token grid."""
        c = config
        positions = c.max_context_steps + max_prefix_frames + 1
        kv = 2 * c.decoder_kv_heads * c.decoder_head_dim * positions
        return 2 * c.decoder_layers * kv * dtype.itemsize + positions * c.num_codebooks * 8

    # ------------------------------------------------------------------ admission

    def validate(self, request: Dia2Request) -> None:
        c = self.config
        if not request.text_streaming and not any(e.tokens for e in request.entries):
            raise InvalidInputError("The script has no words to speak.", param="input")
        prefix = 0 if request.prefix_codes is None else int(request.prefix_codes.shape[0])
        if prefix > self.max_prefix_frames:
            raise InvalidInputError(
                f"The voice prefixes are {prefix / FRAME_RATE:.1f} s long; at most {self.max_prefix_frames / FRAME_RATE:.0f} s "
                "fit in the context.", param="prefix_speaker_1",
            )
        if request.prefix_codes is not None and (
            request.prefix_codes.dim() != 2 or request.prefix_codes.shape[1] != c.num_codebooks
        ):
            raise InvalidInputError(f"Prefix codes must have shape [frames, {c.num_codebooks}].", param="prefix_speaker_1")
        if request.prefix_mode not in PREFIX_MODES:
            raise InvalidInputError(
                f"prefix_mode must be one of {', '.join(PREFIX_MODES)}; got {request.prefix_mode!r}.", param="prefix_mode"
            )
        if request.prefix_new_word_steps and (
            not prefix or len(request.prefix_new_word_steps) > len(request.entries)
            or min(request.prefix_new_word_steps) < 0
        ):
            raise InvalidInputError("Prefix new-word steps need prefix codes and one prefix entry each, from step 0.",
                                    param="prefix_speaker_1")
        tokens = sum(len(e.tokens) for e in request.entries)
        if tokens + request.initial_padding + c.max_delay + FLUSH_EXTRA > c.max_context_steps:
            raise InvalidInputError(
                f"The script needs at least {tokens} steps of text but the model's context holds "
                f"{c.max_context_steps} steps ({c.max_context_steps / FRAME_RATE:.0f} s); shorten it.", param="input",
            )
        if request.max_new_frames is not None and request.max_new_frames < 1:
            raise InvalidInputError("max_new_tokens must be a positive number of frames.", param="max_new_tokens")
        if request.max_new_frames is not None and request.max_new_frames > c.max_context_steps:
            raise InvalidInputError(
                f"max_new_tokens={request.max_new_frames} does not fit: Dia2 generates at most "
                f"{c.max_context_steps} frames ({c.max_context_steps / FRAME_RATE:.0f} s at {FRAME_RATE} frames per second).",
                param="max_new_tokens",
            )
        for name in ("text_temperature", "audio_temperature"):
            if getattr(request, name) < 0:
                raise InvalidInputError(f"{name} must be >= 0 (0 means greedy).", param=name)
        for name in ("text_top_k", "audio_top_k", "cfg_filter_k"):
            if getattr(request, name) < 1:
                raise InvalidInputError(f"{name} must be a positive integer.", param=name)
        if request.cfg_scale <= 0:
            raise InvalidInputError("cfg_scale must be > 0 (1 disables guidance).", param="cfg_scale")

    @torch.inference_mode()
    def prepare(self, request: Dia2Request) -> Dia2SlotState:
        """Claim a slot for a request that passed ``validate``."""
        return self._claim(lambda row: self._fill_slot(row, request))

    def _move_row(self, src: int, dst: int) -> None:
        """A request's state from row ``src`` into the free row ``dst``: its two cache rows up to its last
        entry, its grid and per-request values."""
        length = int(self._host_position[src] + self._host_cache_shift[src]) + 1
        pair, into = slice(2 * src, 2 * src + 2), slice(2 * dst, 2 * dst + 2)
        for k in (*self.cache.k, *self.cache.v):
            k[into, :, :length] = k[pair, :, :length]
        for t in (self.grid, self.position, self.cache_shift, self.active, self.key, self.cfg_scale, self.cfg_filter_k,
                  self.text_temperature, self.text_top_k, self.audio_temperature, self.audio_top_k,
                  self.text_tokens, self.action):
            t[dst] = t[src]

    def _fill_slot(self, slot: int, request: Dia2Request) -> Dia2SlotState:
        """The request's text machine, grid, prefix warm-up and per-request values, in row ``slot``."""
        c, dev = self.config, self.device
        machine = TextStateMachine(
            list(request.entries), config=c, initial_padding=request.initial_padding,
            streaming=request.text_streaming,
        )
        prefix = request.prefix_codes
        P = 0 if prefix is None else int(prefix.shape[0])
        reference = P > 0 and request.prefix_mode == "reference"
        actions = PrefixActions(tuple(request.prefix_new_word_steps), reference=reference)

        # The grid: BOS before each codebook's delay, the prefix's aligned frames where they fall (in reference
        # mode only before column P: the steps overwrite the later ones).
        grid = self.grid[slot]
        grid.fill_(UNKNOWN)
        columns = torch.arange(self.max_positions, device=dev)[:, None]
        grid.copy_(torch.where(columns < self.delays, c.audio_bos_token_id, UNKNOWN).expand_as(grid))
        if P:
            frames = prefix.to(dev).long()
            for k, d in enumerate(c.delay_pattern):
                n = P - d if reference else P
                if n > 0:
                    grid[d : d + n, k] = frames[:n, k]

        # Warm-up over the prefix: the actions are known (new word at the listed steps), so the text for every
        # warm-up step comes from the state machine first and the transformer prefills all of them at once.
        # faster-dia: steps 0 … P-2, and P-1 is the first real step. Reference: steps 0 … P-1, then P-1 again.
        start = max(P - 1, 0)  # position of the first real step
        warm = P if reference else start
        text = [(c.text_bos_token_id, c.text_pad_token_id)]
        for t in range(warm):
            text.append(machine.process(t, actions.action(t, machine), forced=True))
        if warm:
            rows = torch.tensor([2 * slot, 2 * slot + 1], device=dev)
            main = torch.tensor([[m for m, _ in text[:warm]], [c.text_zero_token_id] * warm], device=dev)
            second = torch.tensor([[s for _, s in text[:warm]], [c.text_pad_token_id] * warm], device=dev)
            audio = grid[:warm].clamp_min(0).expand(2, -1, -1)
            positions = torch.arange(warm, device=dev).expand(2, -1)
            self.model.decode(main, second, audio, positions, self.cache, rows, kv_length=warm)
        shift = warm - start  # 1 in reference mode: the cache already holds an entry for position P-1

        # The first frame after the prefix: P, or P-1 in reference mode (which regenerates it). The last
        # column leaves room for a cache entry ``shift`` past it (inactive slots still write one).
        first = start if reference else P
        limit = self.max_positions - 1 - shift
        if request.max_new_frames is not None:
            limit = min(limit, first + request.max_new_frames + c.max_delay - 1)
        limit = min(limit, first + c.max_context_steps)
        self.position[slot] = start
        self.cache_shift[slot] = shift
        self.active[slot] = True
        self.key[slot] = seed_key(request.seed)
        self.cfg_scale[slot] = request.cfg_scale
        self.cfg_filter_k[slot] = request.cfg_filter_k
        self.text_temperature[slot] = request.text_temperature
        self.text_top_k[slot] = request.text_top_k
        self.audio_temperature[slot] = request.audio_temperature
        self.audio_top_k[slot] = request.audio_top_k
        self._host_position[slot] = start
        self._host_cache_shift[slot] = shift
        self._host_text[slot] = text[warm]
        self._host_guided[slot] = request.cfg_scale != 1.0
        self._host_filter_k[slot] = request.cfg_filter_k
        self._host_text_top_k[slot] = request.text_top_k
        self._host_audio_top_k[slot] = request.audio_top_k
        self._host_text_sampling[slot] = request.text_temperature > 0
        self._host_audio_sampling[slot] = request.audio_temperature > 0
        return Dia2SlotState(
            request=request, slot=slot, row=slot, machine=machine, prefix_frames=P,
            crop=0 if (request.include_prefix or not P) else first, limit=limit,
            prefix=actions, prefix_words=sum(1 for e in request.entries[: actions.entries] if e.tokens),
            text=text[warm], _positions=self._host_position, _max_delay=c.max_delay,
        )

    # ------------------------------------------------------------------ stepping

    def _dep_cache(self, rows: int):
        if rows not in self._dep_caches:
            self._dep_caches[rows] = self.model.new_depformer_cache(rows)
        return self._dep_caches[rows]

    @torch.inference_mode()
    def step(self) -> list[Dia2SlotState]:
        """Advance every running request by one frame in one batched call; returns the requests that finished
        with it.

        The host part is the text state machine of each running request (the reference's design: the next
        step's text tokens depend on this step's action through the script's words)."""
        self._hold_requests_short_of_text()
        running = self._running_rows()
        if running.size == 0:
            return []
        c = self.config
        shape = self._shape(running)
        self.text_tokens[: shape.batch].copy_(torch.from_numpy(self._host_text[: shape.batch]))
        self.runner.run(shape, lambda: self._device_step(shape))
        actions = self.action[: shape.batch].tolist()  # the step's one device-to-host copy
        self._host_position[running] += 1
        finished = []
        for slot in running.tolist():  # rows
            s = self._by_row[slot]
            position = s.position
            if s.forcing_prefix:  # a prefix word is still owed: the model's action is not used yet
                s.text = s.machine.process(position - 1, s.prefix.action(position - 1, s.machine), forced=True)
            else:
                s.text = s.machine.process(position - 1, actions[slot])
            self._host_text[slot] = s.text
            end = s.machine.end_step
            if end is not None and position >= end + c.max_delay + FLUSH_EXTRA:
                s.finished, s.last_column = True, position
            elif position >= s.limit:
                s.finished, s.last_column, s.hit_limit = True, position, True
                if s.request.max_new_frames is None:
                    log.warning("request reached the %d-step context limit before its script ended", c.max_context_steps)
            if s.finished:
                self._host_active[slot] = False
                self.active[slot] = False
                finished.append(s)
        return finished

    # ------------------------------------------------------------------ text that arrives while speaking

    def append_text(self, request: Dia2Request, state: Dia2SlotState | None, entries: list[Entry]) -> None:
        """More of a streamed script (engine thread only): queued for the running request, or added to the
        request's entries if it has not been admitted yet."""
        if state is None:
            request.entries.extend(entries)
            return
        if state.finished or state.machine.closed:
            return
        state.machine.append(entries)
        self._resume_if_ready(state)

    def close_text(self, request: Dia2Request, state: Dia2SlotState | None) -> None:
        """The streamed script is complete: the request may run out of words and end."""
        if state is None:
            request.text_streaming = False
            return
        if not state.finished:
            state.machine.close()
            self._resume_if_ready(state)

    def _hold_requests_short_of_text(self) -> None:
        """A streamed request whose text ran dry waits in its slot, not stepped, until more arrives: no end of
        speech and no filler while the writer is still writing."""
        for row in self._running_rows().tolist():
            state = self._by_row[row]
            if state.request.text_streaming and not state.forcing_prefix and not state.machine.ready():
                state.waiting_for_text = True
                self._host_active[row] = False
                self.active[row] = False

    def _resume_if_ready(self, state: Dia2SlotState) -> None:
        if state.waiting_for_text and state.machine.ready() and self._states.get(state.slot) is state:
            state.waiting_for_text = False
            self._host_active[state.row] = True
            self.active[state.row] = True

    def _shape(self, running: np.ndarray) -> Dia2StepShape:
        """The step shape for the running slots: exact, or rounded up to buckets when steps are replayed."""
        c = self.config
        guided = self._host_guided[running]
        shape = Dia2StepShape(
            batch=int(running[-1]) + 1,
            guided=bool(guided.any()),
            all_guided=bool(guided.all()),
            kv_length=int((self._host_position[running] + self._host_cache_shift[running]).max()) + 1,
            shifted=bool(self._host_cache_shift[running].any()),
            filter_k=int(self._host_filter_k[running].max()),
            text_top_k=int(self._host_text_top_k[running].max()),
            audio_top_k=int(self._host_audio_top_k[running].max()),
            text_sampling=bool(self._host_text_sampling[running].any()),
            audio_sampling=bool(self._host_audio_sampling[running].any()),
        )
        if not self.runner.bucketed:
            return shape
        vocab = max(c.audio_vocab_size, c.action_vocab_size)
        return Dia2StepShape(
            batch=batch_bucket(shape.batch, self.max_batch),
            guided=shape.guided,
            all_guided=shape.all_guided,
            kv_length=round_up(shape.kv_length, 256, self.max_positions),
            shifted=shape.shifted,
            filter_k=power_of_two_at_least(shape.filter_k, 64, vocab),
            text_top_k=power_of_two_at_least(shape.text_top_k, 64, vocab),
            audio_top_k=power_of_two_at_least(shape.audio_top_k, 64, vocab),
            text_sampling=True,
            audio_sampling=True,
        )

    def warmup_shapes(self) -> list[Dia2StepShape]:
        """The kv buckets of a request without a prefix up to the context limit, at the default guidance and
        top-k, in every batch bucket: short positions first (every request passes them), then larger batches."""
        c = self.config
        vocab = max(c.audio_vocab_size, c.action_vocab_size)
        batches = sorted({batch_bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)})
        reach = min(c.max_context_steps + 1, self.max_positions)
        kv_lengths = sorted({round_up(n, 256, self.max_positions) for n in range(1, reach + 1, 256)} |
                            {round_up(reach, 256, self.max_positions)})
        def k(value: int) -> int:
            return power_of_two_at_least(value, 64, vocab)

        return [Dia2StepShape(batch=batch, guided=True, all_guided=True, kv_length=kv, shifted=False,
                              filter_k=k(Dia2Request.cfg_filter_k), text_top_k=k(Dia2Request.text_top_k),
                              audio_top_k=k(Dia2Request.audio_top_k), text_sampling=True, audio_sampling=True)
                for kv in kv_lengths for batch in batches]

    def _device_step(self, shape: Dia2StepShape) -> None:
        """One frame for slots 0 … shape.batch-1, reading and writing only the generator's buffers (capturable:
        no host values but ``shape``, no device-to-host reads). Inactive slots in the range are computed and
        discarded."""
        c = self.config
        B = shape.batch
        span = slice(0, B)
        slots = self._slot_index[:B]
        per_slot = 2 if shape.guided else 1
        rows = slice(0, 2 * B) if shape.guided else slice(0, 2 * B, 2)
        position = self.position[span]
        active = self.active[span]

        text = self.text_tokens[:B]
        if shape.guided:  # the unconditional row reads (zero, pad) as its text, every step
            text = torch.stack([text, self._blank_text.expand(B, 2)], dim=1).view(2 * B, 2)
        audio = self.grid[slots, position].clamp_min(0)
        audio = audio[:, None].expand(B, per_slot, c.num_codebooks).reshape(B * per_slot, c.num_codebooks)
        row_positions = position[:, None].expand(B, per_slot).reshape(B * per_slot)
        if shape.shifted:
            entries = (position + self.cache_shift[span])[:, None].expand(B, per_slot).reshape(B * per_slot)
            hidden, action_logits, cb0_logits = self.model.decode(
                text[:, :1], text[:, 1:], audio[:, None], row_positions[:, None], self.cache, rows,
                kv_length=shape.kv_length, cache_entries=entries[:, None],
            )
        else:
            hidden, action_logits, cb0_logits = self.model.decode(
                text[:, :1], text[:, 1:], audio[:, None], row_positions[:, None], self.cache, rows,
                kv_length=shape.kv_length,
            )
        hidden = hidden[:, 0]

        def split(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            if not shape.guided:
                return logits, None
            pair = logits.view(B, 2, -1)
            return pair[:, 0], pair[:, 1]

        nxt = position + 1
        # The per-row part of the random hash for all 33 draws of this step at once (stream 0 the action, 1 + k
        # codebook k), rather than inside each sampling.
        keys = draw_keys(self.key[span], nxt[:, None] * STREAMS + self._streams)
        common = dict(
            cfg_scale=self.cfg_scale[span], cfg_filter_k=self.cfg_filter_k[span], max_filter_k=shape.filter_k,
            all_guided=shape.all_guided,
        )
        self.action[span] = choose(
            *split(action_logits[:, 0]), temperature=self.text_temperature[span], top_k=self.text_top_k[span],
            max_top_k=shape.text_top_k, keys=keys[:, 0], sampling=shape.text_sampling, **common,
        )
        audio_kwargs = dict(
            temperature=self.audio_temperature[span], top_k=self.audio_top_k[span],
            max_top_k=shape.audio_top_k, sampling=shape.audio_sampling, **common,
        )
        token = choose(
            *split(cb0_logits[:, 0]), keys=keys[:, 1], banned=(c.audio_bos_token_id, c.audio_pad_token_id),
            **audio_kwargs,
        )
        codes = [token]
        dep_cache = self._dep_cache(B * per_slot)
        for stage in range(c.num_codebooks - 1):
            logits = self.model.depformer_step(
                hidden, token[:, None].expand(B, per_slot).reshape(-1), stage, dep_cache,
                text_main=text[:, 0], text_second=text[:, 1],
            )
            token = choose(*split(logits), keys=keys[:, 2 + stage], **audio_kwargs)
            codes.append(token)
        frame = torch.stack(codes, dim=-1)

        write_at = nxt.clamp_max(self.max_positions - 1)
        known = self.grid[slots, write_at]
        frame = torch.where(known != UNKNOWN, known, frame)
        self.grid[slots, write_at] = torch.where(active[:, None], frame, known)
        self.position[span] = torch.where(active, nxt, position)

    # ------------------------------------------------------------------ results

    def frames(self, state: Dia2SlotState, start: int, stop: int) -> torch.Tensor:
        """Aligned frames [start, stop) of the result [n, 32] (0 = first frame after the crop)."""
        first = state.crop + start
        index = torch.arange(first, state.crop + stop, device=self.device)
        cols = index[:, None] + self.delays
        return self.grid[state.row][cols, torch.arange(self.config.num_codebooks, device=self.device)].clamp_min(0)
