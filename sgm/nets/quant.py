"""Weight-only quantization of Linear and Conv2d layers: fp8 (e4m3fn / e5m2) or int8 storage.

Weights are stored in one byte per element and turned back into the compute dtype (the input's:
bf16/fp32 on CPU, fp16/bf16 on CUDA) right before each matmul or convolution; activations,
biases and norms stay in the compute dtype. Per output channel c (Dettmers et al. 2022,
"LLM.int8()", absmax scaling):

    s_c = max_j |W_cj| / q_max          W_cj ~ s_c * Q_cj,   Q = round(W / s)   (int8: q_max = 127)

fp8 weights are scaled the same way with q_max = the format's largest finite value (448 for
e4m3fn, 57344 for e5m2), which keeps small weights out of fp8's subnormal range; weights that
already are fp8 values (an fp8 checkpoint file) are kept exactly as stored, without a scale.

A quantized layer keeps its class's state dict keys (``weight`` holds the stored bytes;
``weight_scale`` (C_out,) float32 is added where a scale exists). LoRA is run as an extra
low-rank path beside the stored weight (``y = W x + strength * scale * up(down(x))``, Hu et al.
2021, eq. 3 applied to activations), so patching never requantizes and unpatching restores the
layer exactly. Moving a quantized module (``.to(device)`` or ``.to(dtype)``) keeps the storage
dtype.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sgm.devices import PackedConv2d

logger = logging.getLogger(__name__)


class WeightDtype(str, Enum):
    """How the diffusion model's Linear/Conv2d weights are stored (``--weight-dtype``)."""

    DEFAULT = "default"  # the compute dtype: no quantization
    FP8_E4M3FN = "fp8_e4m3fn"
    FP8_E5M2 = "fp8_e5m2"
    INT8 = "int8"

    @property
    def storage(self) -> torch.dtype | None:
        return {WeightDtype.FP8_E4M3FN: torch.float8_e4m3fn, WeightDtype.FP8_E5M2: torch.float8_e5m2,
                WeightDtype.INT8: torch.int8}.get(self)


WEIGHT_DTYPE_NAMES: tuple[str, ...] = tuple(w.value for w in WeightDtype)


def parse_weight_dtype(name: str, where: str = "weight dtype") -> WeightDtype:
    """The :class:`WeightDtype` called ``name``; an unknown name raises a ValueError listing the choices."""
    try:
        return WeightDtype(name)
    except ValueError:
        hint = " (ComfyUI's fp8_e4m3fn_fast is fp8_e4m3fn here)" if name == "fp8_e4m3fn_fast" else ""
        raise ValueError(f"{where} {name!r} is not one of {', '.join(WEIGHT_DTYPE_NAMES)}{hint}") from None


def _q_max(storage: torch.dtype) -> float:
    return 127.0 if storage == torch.int8 else float(torch.finfo(storage).max)


def quantize_weight(weight: torch.Tensor, storage: torch.dtype,
                    scaled: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``weight`` (C_out, ...) as ``storage`` plus a per-output-channel float32 scale (or None).

    ``scaled=None`` (fp8): no scale where every value is already exactly an fp8 value (an fp8
    file loaded in a wider dtype), else a scale. int8 always has a scale.
    """
    w = weight.detach()
    if storage != torch.int8 and scaled is None:
        scaled = not torch.equal(w.to(storage).to(w.dtype), w)
    if storage != torch.int8 and not scaled:
        return w.to(storage), None
    flat = w.float().flatten(1)  # (C_out, fan_in)
    scale = flat.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / _q_max(storage)  # (C_out,)
    ratio = flat / scale[:, None]
    stored = ratio.round().clamp(-127, 127).to(torch.int8) if storage == torch.int8 else ratio.to(storage)
    return stored.reshape(w.shape), scale


def dequantize_weight(stored: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``stored`` in ``dtype``, times its per-output-channel ``scale`` where there is one."""
    weight = stored.to(dtype)
    if scale is None:
        return weight
    return weight * scale.to(dtype).reshape(-1, *([1] * (stored.dim() - 1)))


@dataclass(frozen=True, eq=False)
class LowRankPath:
    """A LoRA beside a quantized weight: ``strength * up @ down`` (up (out, r), down (r, in[, kh, kw]));
    ``rows`` places it on a row slice of the output."""

    up: torch.Tensor
    down: torch.Tensor
    strength: float
    rows: tuple[int, int] | None = None


class QuantizedWeight:
    """What quantized Linear and Conv2d share: storage, dequantization, device moves, LoRA paths."""

    weight: nn.Parameter
    weight_scale: torch.Tensor | None

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_weight(self.weight, self.weight_scale, dtype)

    def _apply(self, fn: Callable, recurse: bool = True):  # type: ignore[override]
        # fp8 weights are floating point, so module.to(bf16) would widen them: put the storage
        # dtypes back (exact: every fp8 value is a bf16/fp16/fp32 value).
        stored, scale = self.weight.dtype, None if self.weight_scale is None else self.weight_scale.dtype
        result = super()._apply(fn, recurse)  # type: ignore[misc]
        if self.weight.dtype != stored:
            self.weight.data = self.weight.data.to(stored)
        if scale is not None and self.weight_scale is not None and self.weight_scale.dtype != scale:
            self.weight_scale = self.weight_scale.to(scale)
        return result

    # ------------------------------------------------------------------ LoRA

    def add_low_rank(self, up: torch.Tensor, down: torch.Tensor, strength: float,
                     rows: tuple[int, int] | None = None) -> LowRankPath:
        """Run ``strength * up @ down`` beside the stored weight until :meth:`remove_low_rank`."""
        out_features = self.weight.shape[0] if rows is None else rows[1] - rows[0]
        fan_in = self.weight[0].numel()
        if up.shape[0] != out_features or down.shape[0] != up.shape[1] or down[0].numel() != fan_in:
            raise ValueError(
                f"LoRA up {tuple(up.shape)} / down {tuple(down.shape)} does not fit a weight of "
                f"{tuple(self.weight.shape)}; the LoRA was trained for another model")
        path = LowRankPath(up.detach(), down.detach(), float(strength), rows)
        paths = self.__dict__.setdefault("_low_rank", [])
        paths.append(path)
        return path

    def remove_low_rank(self, path: LowRankPath) -> None:
        paths = self.__dict__.get("_low_rank", [])
        self.__dict__["_low_rank"] = [p for p in paths if p is not path]

    def _with_low_rank(self, x: torch.Tensor, y: torch.Tensor, dim: int,
                       run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``y`` plus every LoRA path; ``dim`` is the output-channel dimension of ``y``."""
        for path in self.__dict__.get("_low_rank", ()):
            up = path.up.to(device=x.device, dtype=x.dtype)
            down = path.down.to(device=x.device, dtype=x.dtype)
            delta = run(x, up, down) * path.strength  # y's shape, with out_rows channels
            if path.rows is None:
                y = y + delta
            else:
                start, end = path.rows
                y = torch.cat([y.narrow(dim, 0, start), y.narrow(dim, start, end - start) + delta,
                               y.narrow(dim, end, y.shape[dim] - end)], dim)
        return y


class QuantLinear(QuantizedWeight, nn.Linear):
    """nn.Linear with a one-byte weight (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if (self.weight.dtype == torch.int8 and x.device.type == "cpu" and self.weight_scale is not None
                and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and not torch.is_grad_enabled()):
            # ATen's CPU int8-weight matmul: no dequantized copy of W is made
            y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.weight_scale.to(x.dtype))
            y = y.reshape(*x.shape[:-1], y.shape[-1])
            if bias is not None:
                y = y + bias
        else:
            y = F.linear(x, self.dequantized_weight(x.dtype), bias)
        if "_low_rank" in self.__dict__:
            y = self._with_low_rank(x, y, -1, lambda x, up, down: F.linear(F.linear(x, down.flatten(1)),
                                                                            up.flatten(1)))
        return y


class QuantConv2d(QuantizedWeight, nn.Conv2d):
    """nn.Conv2d with a one-byte weight (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        y = self._conv_forward(x, self.dequantized_weight(x.dtype), bias)
        if "_low_rank" in self.__dict__:
            y = self._with_low_rank(x, y, 1, self._conv_path)
        return y

    def _conv_path(self, x: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        if self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("LoRA on a quantized grouped or non-zero-padded convolution is not supported")
        down = down.reshape(down.shape[0], *self.weight.shape[1:])  # (r, in, kh, kw)
        hidden = F.conv2d(x, down, None, self.stride, self.padding, self.dilation)
        return F.conv2d(hidden, up.reshape(up.shape[0], up.shape[1], 1, 1))


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, QuantizedWeight)


def default_skip(conv_names: list[str]) -> Callable[[str, nn.Module], bool]:
    """Keep in full precision: the first and the last convolution (the image-space ends: few
    weights, most sensitive, the usual choice for diffusion UNets) and the timestep MLP
    (``time_embed``: tiny, and ``UNetModel`` reads its compute dtype from its first weight)."""
    ends = {conv_names[0], conv_names[-1]} if conv_names else set()
    return lambda name, module: name in ends or name == "time_embed" or name.startswith("time_embed.")


def quantize_module(module: nn.Module, weight_dtype: WeightDtype | str,
                    skip: Callable[[str, nn.Module], bool] | None = None) -> nn.Module:
    """Store every Linear and Conv2d weight of ``module`` as ``weight_dtype``, in place; returns ``module``.

    ``skip(name, layer)`` keeps a layer in full precision (default: the first and last conv).
    ``WeightDtype.DEFAULT`` changes nothing. Quantizing an already quantized layer is an error.
    """
    weight_dtype = parse_weight_dtype(weight_dtype) if isinstance(weight_dtype, str) else weight_dtype
    storage = weight_dtype.storage
    if storage is None:
        return module
    layers = [(name, layer) for name, layer in module.named_modules()
              if type(layer) in (nn.Linear, nn.Conv2d, PackedConv2d)]
    if any(is_quantized(layer) for _, layer in module.named_modules()):
        raise ValueError("this module is already quantized; load it again to quantize it another way")
    skip = skip or default_skip([name for name, layer in layers if isinstance(layer, nn.Conv2d)])
    count = 0
    for name, layer in layers:
        if skip(name, layer):
            continue
        stored, scale = quantize_weight(layer.weight, storage)
        layer.__class__ = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        layer.__dict__.pop("_pack_cache", None)
        memory_format = (torch.channels_last if stored.dim() == 4
                         and layer.weight.is_contiguous(memory_format=torch.channels_last)
                         and not layer.weight.is_contiguous() else torch.contiguous_format)
        layer.weight = nn.Parameter(stored.contiguous(memory_format=memory_format), requires_grad=False)
        layer.register_buffer("weight_scale", scale)
        count += 1
    logger.debug("quantized %d layers of %s to %s", count, type(module).__name__, weight_dtype.value)
    return module


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``module`` (what its weights hold in memory)."""
    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))
