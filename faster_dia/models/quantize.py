"""Quantized transformer weights: int8, int8 with int8 activations, int4 and fp8, swapped in after loading.

The networks keep their weights as plain tensors and multiply with ``F.linear(x, weight)``. A quantized weight is
a tensor subclass (:class:`QuantizedWeight`) that stands where the full-precision weight stood and catches
``F.linear`` through ``__torch_function__``: the network code does not change, and the call becomes the
quantized kernel on plain tensors. Inside a recorded step (CUDA graphs, or the ``trace`` mode of
:mod:`faster_dia.models.graphs`) only those plain kernels are dispatched, so a quantized step records and replays
like any other. Anything but ``F.linear`` on a quantized weight is an error naming the operator.

What is quantized (:data:`TARGETS`): the attention q/k/v and output projections and the MLP gate/up and down
matrices of every transformer layer, the matrices that hold nearly all the weight bytes. Embeddings, the
output heads (logits), Dia-1.6B's cross-attention projections (run once per request for keys/values, and on a
text the model must follow exactly) and Dia2's stacked per-stage depformer matrices (used by ``einsum``) stay
in full precision, as do the codecs.

The kernels, chosen by measurement on CPU (bench/bench_quantize.py) and by what exists on CUDA:

* ``int8``: int8 weights, one scale per output row; activations stay in the compute dtype. CPU:
  ``torch._weight_int8pack_mm`` on bfloat16 activations (its float32 path is a slow reference loop). Elsewhere
  the weight is cast to the compute dtype inside the call and the row scales applied to the output: half the
  memory of bfloat16 at rest, no speed-up.
* ``int8-dynamic`` (CPU): int8 weights, and each call's activations quantized on the fly (one scale per call),
  ``quantized::linear_dynamic`` (fbgemm / oneDNN, the kernel of ``torch.ao.quantization.quantize_dynamic``):
  the fastest CPU mode.
* ``int4``: 4-bit groups of 128 (or 64, 32 where the width needs it) with a bfloat16 scale and zero each,
  ``torch._weight_int4pack_mm`` (tinygemm) on CUDA, ``torch._weight_int4pack_mm_for_cpu`` on CPU; bfloat16
  activations.
* ``fp8`` (CUDA, compute capability 8.9 or higher): float8 e4m3 weights with one scale per matrix,
  activations scaled per call, ``torch._scaled_mm``.

torchao and bitsandbytes were measured and not used: torchao's eager int8 ran slower than float32 here and its
int4 needs another package; bitsandbytes on CPU saves memory only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..loading import QUANTIZE_MODES, cpu_flags

#: Per family: the layer lists of the network and, in each layer, the 2-D weights used by ``F.linear`` that
#: are quantized.
TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "dia1": {
        "enc_layers": ("qkv", "out", "gate_up", "down"),
        "dec_layers": ("self_qkv", "self_out", "gate_up", "down"),
    },
    "dia2": {
        "layers": ("qkv", "out", "gate_up", "down"),
        # The depformer's q/k/v and output are stacked per stage group (3-D, used by einsum): kept.
        "dep_layers": ("gate_up", "down"),
    },
}

#: The largest float8 e4m3 value: a matrix's absolute maximum is scaled onto it.
FP8_MAX = 448.0
#: int4 group sizes the kernels take, most preferred first (larger groups: fewer scales, a little less accurate).
INT4_GROUP_SIZES = (128, 64, 32)


def check_quantize(mode: str | None, device: torch.device, family: str) -> None:
    """Refuse a mode this device or family cannot run, before anything is loaded."""
    if mode is None:
        return
    if mode not in QUANTIZE_MODES:
        raise InvalidInputError(f"Unsupported quantize mode {mode!r}; use one of {', '.join(QUANTIZE_MODES)}.",
                                param="quantize")
    if family not in TARGETS:
        raise InvalidInputError(f"Quantized weights are not supported for {family} models; load it without "
                                "quantize.", param="quantize")
    if mode == "int8-dynamic" and device.type != "cpu":
        raise InvalidInputError(f"int8-dynamic runs on CPU only; on {device.type} use int8, int4 or fp8.",
                                param="quantize")
    if mode == "int4" and device.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"int4 runs on CUDA and CPU only, not on {device.type}.", param="quantize")
    if mode == "int4" and device.type == "cpu" and not hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        raise InvalidInputError(f"int4 on CPU needs a newer torch than {torch.__version__}.", param="quantize")
    if mode == "int4" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        raise InvalidInputError("int4 needs a CUDA GPU with compute capability >= 8.0.", param="quantize")
    if mode == "fp8" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
        where = device.type
        if device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            where = f"a GPU of compute capability {major}.{minor}"
        raise InvalidInputError(f"fp8 needs a CUDA GPU with compute capability >= 8.9 (this is {where}).",
                                param="quantize")


# ------------------------------------------------------------------------------------------------ the subclass


class QuantizedWeight(torch.Tensor):
    """A [out, in] weight held quantized. It reports the compute dtype and the full shape, owns no storage of that
    shape, and supports one operation: being the weight of ``F.linear``."""

    #: The mode name of the subclass.
    mode = ""

    @staticmethod
    def __new__(cls, shape: torch.Size, dtype: torch.dtype, device: torch.device, **_: object):
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device, requires_grad=False)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if not isinstance(weight, QuantizedWeight) or isinstance(x, QuantizedWeight):
                raise TypeError("a quantized weight can only be the weight of F.linear")
            lead = x.shape[:-1]
            out = weight._matmul(x.reshape(-1, x.shape[-1])).view(*lead, weight.shape[0])
            return out if bias is None else out + bias
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)  # metadata (shape, dtype, dim, device); an operator ends in dispatch

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # Not TypeError: torch turns that into NotImplemented for operators such as +, and the message is lost.
        raise RuntimeError(f"{func} on a quantized weight: only F.linear(x, weight) is supported (the quantized "
                           "weights are the transformer's linear layers)")

    def __repr__(self) -> str:  # the default would read elements
        return f"{type(self).__name__}(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, in] in the compute dtype -> x @ W.T [M, out] in the same dtype."""
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        """The weight these quantized values stand for, in float32 (for checks)."""
        raise NotImplementedError

    @property
    def stored_bytes(self) -> int:
        """Bytes the quantized form holds (values, scales, zeros)."""
        raise NotImplementedError


class Int8Weight(QuantizedWeight):
    """int8 values, one float scale per output row (symmetric, 127 = the row's absolute maximum)."""

    mode = "int8"

    def __init__(self, shape, dtype, device, *, values: torch.Tensor, scale: torch.Tensor):
        self.values = values  # int8 [out, in]
        self.scale = scale  # float32 [out]
        # The CPU kernel is fast on bfloat16 activations only (its float32 path is a reference loop).
        self._kernel_dtype = torch.bfloat16 if device.type == "cpu" else dtype
        self._kernel_scale = scale.to(self._kernel_dtype)

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Weight:
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        values = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(weight.shape, weight.dtype, weight.device, values=values, scale=scale)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.values, self._kernel_scale).to(x.dtype)
        return F.linear(x, self.values.to(x.dtype)) * self._kernel_scale.to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        return self.values.float() * self.scale[:, None]

    @property
    def stored_bytes(self) -> int:
        return self.values.nbytes + self.scale.nbytes


class Int8DynamicWeight(QuantizedWeight):
    """int8 weights (one scale per output row) in the CPU quantized engine's packed layout; each call quantizes its
    activations to 8 bits on the fly and multiplies in int8: ``quantized::linear_dynamic``, the kernel of
    ``torch.ao.quantization.quantize_dynamic``.

    The kernel takes one activation scale per call, the largest magnitude among all the rows of the batch, so a
    request's numbers (and, near a tie, its tokens) depend slightly on the requests decoded with it. Per-row
    activation scales through ``torch._int_mm`` avoid that, but that product ran 2-4x slower than this kernel on
    the benchmark's matrices at 2 and 8 rows, and a decode step with it no faster than float32."""

    mode = "int8-dynamic"

    def __init__(self, shape, dtype, device, *, packed: object, scale: torch.Tensor, reduce_range: bool):
        self.packed = packed  # the engine's packed weight (a script object holding its own int8 copy)
        self.scale = scale  # float32 [out]
        # Without VNNI the x86 kernels add pairs of u8 x s8 products in int16, which saturates on full 8-bit
        # activations; torch's own dynamic linear then quantizes activations to 7 bits, and so does this.
        self.reduce_range = reduce_range

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8DynamicWeight:
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated; their kernels are still the fastest
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(q, None)
        flags = cpu_flags()
        reduce_range = "avx2" in flags and not {"avx512_vnni", "avx_vnni", "amx_int8"} & flags
        return cls(weight.shape, weight.dtype, weight.device, packed=packed, scale=scale, reduce_range=reduce_range)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range).to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        weight, _ = torch.ops.quantized.linear_unpack(self.packed)
        return weight.dequantize()

    @property
    def stored_bytes(self) -> int:
        return self.shape[0] * self.shape[1] + self.scale.nbytes  # the packed int8 values and the row scales


class Int4Weight(QuantizedWeight):
    """4-bit values in groups of ``group_size`` along the input axis, each group with a scale and a zero:
    w = (q - 8) * scale + zero, q in 0..15 (the layout of the tinygemm kernels)."""

    mode = "int4"

    def __init__(self, shape, dtype, device, *, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
                 group_size: int, q: torch.Tensor | None = None):
        self.packed = packed
        self.scales_and_zeros = scales_and_zeros  # bfloat16 [in / group_size, out, 2]
        self.group_size = group_size
        self._q = q  # the unpacked values, kept only for dequantize() in checks

    @staticmethod
    def fits(weight: torch.Tensor) -> bool:
        out_features, in_features = weight.shape
        return out_features % 16 == 0 and any(in_features % g == 0 for g in INT4_GROUP_SIZES)

    @classmethod
    def from_float(cls, weight: torch.Tensor, *, keep_values: bool = False) -> Int4Weight:
        out_features, in_features = weight.shape
        group = next(g for g in INT4_GROUP_SIZES if in_features % g == 0)
        w = weight.detach().float().view(out_features, in_features // group, group)
        low, high = w.amin(dim=-1), w.amax(dim=-1)
        scale = ((high - low) / 15).clamp(min=1e-6)
        q = torch.round((w - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
        q = q.view(out_features, in_features)
        zero = low + 8 * scale
        scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        if weight.device.type == "cpu":
            packed = torch._convert_weight_to_int4pack_for_cpu(q, 2)
        else:
            inner_k_tiles = next(t for t in (8, 4, 2) if in_features % (16 * t) == 0)
            packed = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), inner_k_tiles)
        return cls(weight.shape, weight.dtype, weight.device, packed=packed, scales_and_zeros=scales_and_zeros,
                   group_size=group, q=q if keep_values else None)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16)
        if x.device.type == "cpu":
            y = torch._weight_int4pack_mm_for_cpu(xb, self.packed, self.group_size, self.scales_and_zeros)
        else:
            y = torch._weight_int4pack_mm(xb, self.packed, self.group_size, self.scales_and_zeros)
        return y.to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        if self._q is None:
            raise RuntimeError("this int4 weight was packed without keeping its values")
        out_features, in_features = self.shape
        scale, zero = self.scales_and_zeros.float().transpose(0, 1).unbind(-1)  # [out, groups] each
        q = self._q.view(out_features, -1, self.group_size).float()
        return ((q - 8) * scale[..., None] + zero[..., None]).view(out_features, in_features)

    @property
    def stored_bytes(self) -> int:
        return self.shape[0] * self.shape[1] // 2 + self.scales_and_zeros.nbytes


class Fp8Weight(QuantizedWeight):
    """float8 e4m3 weights with one float32 scale per matrix; each call scales its activations per tensor onto
    the float8 range and multiplies with ``torch._scaled_mm``."""

    mode = "fp8"

    def __init__(self, shape, dtype, device, *, values: torch.Tensor, scale: torch.Tensor):
        self.values = values  # float8_e4m3fn [out, in], row-major, so values.t() is the column-major operand
        self.scale = scale  # float32 scalar

    @staticmethod
    def fits(weight: torch.Tensor) -> bool:
        return weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0  # _scaled_mm's alignment

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Fp8Weight:
        w = weight.detach().float()
        scale = (w.abs().amax() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        values = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return cls(weight.shape, weight.dtype, weight.device, values=values, scale=scale)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        x_scale = (xf.abs().amax() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        xq = (xf / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return torch._scaled_mm(xq, self.values.t(), scale_a=x_scale, scale_b=self.scale, out_dtype=x.dtype)

    def dequantize(self) -> torch.Tensor:
        return self.values.float() * self.scale

    @property
    def stored_bytes(self) -> int:
        return self.values.nbytes + self.scale.nbytes


#: The weight class of each mode.
WEIGHT_CLASSES: dict[str, type[QuantizedWeight]] = {
    cls.mode: cls for cls in (Int8Weight, Int8DynamicWeight, Int4Weight, Fp8Weight)
}


def quantize_weight(weight: torch.Tensor, mode: str) -> QuantizedWeight | None:
    """The quantized form of a [out, in] weight, or None where the mode's kernel cannot take its shape."""
    cls = WEIGHT_CLASSES[mode]
    fits = getattr(cls, "fits", None)
    if fits is not None and not fits(weight):
        return None
    return cls.from_float(weight)


# ------------------------------------------------------------------------------------------------ a network


def weight_bytes(model: nn.Module) -> int:
    """Bytes of a network's weights: its parameters, and the quantized weights in their stored form."""
    total = sum(p.nbytes for p in model.parameters())
    for module in model.modules():
        total += sum(w.stored_bytes for w in vars(module).values() if isinstance(w, QuantizedWeight))
    return total


@dataclass(frozen=True)
class QuantizeReport:
    mode: str
    quantized: int  # matrices replaced
    kept: int  # matrices of the targets whose shape the kernel cannot take (left in full precision)
    bytes_before: int
    bytes_after: int

    def __str__(self) -> str:
        kept = f", {self.kept} kept in full precision (shape)" if self.kept else ""
        return (f"{self.mode}: {self.quantized} weight matrices quantized{kept}; weights "
                f"{self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB")


def target_weights(model: nn.Module, family: str) -> list[tuple[nn.Module, str]]:
    """(module, attribute) of every weight :data:`TARGETS` names in ``model``, in layer order."""
    found = []
    for list_name, names in TARGETS[family].items():
        for layer in getattr(model, list_name):
            for name in names:
                weight = getattr(layer, name)
                if weight.dim() == 2:
                    found.append((layer, name))
    return found


@torch.no_grad()
def quantize_model(model: nn.Module, family: str, mode: str) -> QuantizeReport:
    """Replace the target weights of a loaded network by their quantized form, in place (call before the
    first step, so that no recorded step holds the old tensors)."""
    before = weight_bytes(model)
    quantized = kept = 0
    for layer, name in target_weights(model, family):
        q = quantize_weight(getattr(layer, name), mode)
        if q is None:
            kept += 1
            continue
        # Out of the parameters (a tensor subclass is not a Parameter), into the layer's attributes, where
        # `layer.name` finds it just the same; the full-precision tensor is freed.
        layer._parameters.pop(name, None)
        object.__setattr__(layer, name, q)
        quantized += 1
    if quantized == 0:
        raise InvalidInputError(f"No weight of this model has a shape the {mode} kernels take.", param="quantize")
    return QuantizeReport(mode, quantized, kept, before, weight_bytes(model))
