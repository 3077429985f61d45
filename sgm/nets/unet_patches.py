"""Model patches that change what the UNet computes between its blocks or in its attention.

A patch here is a frozen description (recorded on a MODEL value, weights untouched) that is
*bound* to a UNet and its noise levels only while a sampler runs (:func:`unet_patches_applied`),
through ``UNetModel.block_hooks`` (``sgm.nets.unet.BlockHooks``). Outside that block the UNet is
exactly the one loaded: another MODEL value sharing it sees no patch.

* :class:`FreeU` -- Si et al. 2024, "FreeU: Free Lunch in Diffusion U-Net" (CVPR): in the decoder,
  the backbone features h are amplified by b and the skip features' lowest frequencies are damped
  by s before they are concatenated. Version 2 scales h by a per-pixel factor that follows the
  features' channel mean (the paper's "structure-related" scaling, eq. 3-4).
* :class:`DeepShrink` -- kohya's "Deep Shrink" (sd-scripts ``gen_img``): the features after input
  block N are downscaled while the timestep is in a window of the sampling, and brought back to the
  skip's size where the decoder meets them (high resolutions without duplicated subjects).
* HyperTile and ToMe (``sgm.nets.attention_patches``) bind the same way and change the
  self-attention layers for the duration.

(The attention multipliers are weight patches: ``sgm.io.attention_multiply``.)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sgm.nets.unet import BlockHooks

RESIZE_METHODS: tuple[str, ...] = ("bicubic", "nearest-exact", "bilinear", "area", "bislerp")


# ---------------------------------------------------------------------------- FreeU


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """x (B, C, H, W) with its spatial frequencies |k_y|, |k_x| in [-threshold, threshold) multiplied
    by ``scale`` (FreeU's skip filter, Si et al. 2024, eq. 6-7): after ``fftshift`` these are the
    2*threshold rows and columns around the centre. Computed in float32, returned in x's dtype."""
    dtype = x.dtype
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = x.shape[-2:]
    mask = torch.ones(height, width, device=x.device)
    crow, ccol = height // 2, width // 2
    mask[max(crow - threshold, 0):crow + threshold, max(ccol - threshold, 0):ccol + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(dtype)


@dataclass(frozen=True)
class FreeU:
    """FreeU's factors: b1/s1 for the decoder blocks whose backbone has 4x the UNet's base width
    (SD: 1280 channels), b2/s2 for those with 2x (640). ``version`` 2 scales the backbone by
    ``1 + (b - 1) * m`` with m the min-max normalised channel mean of h per image (FreeU v2)."""

    b1: float
    b2: float
    s1: float
    s2: float
    version: Literal[1, 2] = 1

    def bind(self, unet: nn.Module, model_sampling: Any) -> BlockHooks:
        base = int(getattr(unet, "model_channels"))
        return _FreeUHooks(self, {4 * base: (self.b1, self.s1), 2 * base: (self.b2, self.s2)})


def freeu_backbone(h: torch.Tensor, b: float, version: Literal[1, 2]) -> torch.Tensor:
    """h (B, C, H, W) with its first C/2 channels scaled: by b (v1), or by 1 + (b - 1) * m where m
    (B, 1, H, W) is h's channel mean min-max normalised over each image's pixels (v2)."""
    half = h.shape[1] // 2
    if b == 1.0:
        return h
    if version == 1:
        factor: torch.Tensor | float = b
    else:
        mean = h.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        low = mean.amin(dim=(-2, -1), keepdim=True)
        high = mean.amax(dim=(-2, -1), keepdim=True)
        # an image whose channel mean is flat everywhere gets m = 0 (not 0/0)
        factor = (b - 1) * ((mean - low) / (high - low).clamp_min(torch.finfo(mean.dtype).tiny)) + 1
    return torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)


class _FreeUHooks(BlockHooks):
    def __init__(self, patch: FreeU, scales: dict[int, tuple[float, float]]) -> None:
        self.patch, self.scales = patch, scales

    def before_output_block(self, h: torch.Tensor, skip: torch.Tensor, index: int,
                            timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scales.get(int(h.shape[1]))
        if scale is None:
            return h, skip
        b, s = scale
        return freeu_backbone(h, b, self.patch.version), skip if s == 1.0 else fourier_filter(skip, 1, s)


# ---------------------------------------------------------------------------- Deep Shrink


def resize(x: torch.Tensor, height: int, width: int, method: str) -> torch.Tensor:
    """x (B, C, H, W) resized to (height, width) by ``method`` (one of RESIZE_METHODS but bislerp)."""
    if method == "bislerp":
        raise ValueError("resize method 'bislerp' is not supported here; use bicubic, bilinear, area or "
                         "nearest-exact")
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; choose one of {RESIZE_METHODS[:-1]}")
    align = {"align_corners": False} if method in ("bicubic", "bilinear") else {}
    return F.interpolate(x, size=(height, width), mode=method, **align).to(x.dtype)


@dataclass(frozen=True)
class DeepShrink:
    """Downscale the features after input block ``block`` by ``factor`` while the timestep lies in the
    [start, end] fractions of sampling (0 = pure noise); ``after_skip``: the block's own skip keeps
    the full size (else it is downscaled too). Decoder features are resized back to their skip's size
    with ``upscale_method`` wherever the two differ."""

    block: int
    factor: float
    start: float = 0.0
    end: float = 0.35
    after_skip: bool = True
    downscale_method: str = "bicubic"
    upscale_method: str = "bicubic"

    def __post_init__(self) -> None:
        for method in (self.downscale_method, self.upscale_method):
            resize(torch.zeros(1, 1, 1, 1), 1, 1, method)  # rejects bislerp / unknown names now
        if self.factor <= 0:
            raise ValueError(f"Deep Shrink factor must be > 0, got {self.factor}")

    def bind(self, unet: nn.Module, model_sampling: Any) -> BlockHooks:
        blocks = len(getattr(unet, "input_blocks"))
        if not 0 <= self.block < blocks:
            raise ValueError(f"Deep Shrink block {self.block} does not exist: this UNet has input blocks "
                             f"0..{blocks - 1}")
        return _DeepShrinkHooks(self, timestep_window(model_sampling, self.start, self.end))


def timestep_window(model_sampling: Any, start: float, end: float) -> tuple[float, float]:
    """(lowest, highest) model timestep of the [start, end] fractions of sampling (0 = pure noise). A
    fraction is linear in the timestep (``sgm.sampling.sigma_ops.percent_to_sigma``); 0 and 1 reach past
    both ends, so a window that starts at 0 or ends at 1 holds every timestep a schedule may give."""
    t_max = float(model_sampling.timestep(torch.tensor(float(model_sampling.sigma_max))))
    t_min = float(model_sampling.timestep(torch.tensor(float(model_sampling.sigma_min))))

    def at(percent: float) -> float:
        if percent <= 0.0:
            return math.inf
        if percent >= 1.0:
            return -math.inf
        return t_min + (1.0 - percent) * (t_max - t_min)

    return at(end), at(start)


class _DeepShrinkHooks(BlockHooks):
    def __init__(self, patch: DeepShrink, window: tuple[float, float]) -> None:
        self.patch, self.window = patch, window

    def _active(self, timesteps: torch.Tensor) -> bool:
        low, high = self.window
        return low <= float(timesteps.reshape(-1)[0]) <= high

    def _shrink(self, h: torch.Tensor, index: int, timesteps: torch.Tensor) -> torch.Tensor:
        if index != self.patch.block or not self._active(timesteps):
            return h
        height, width = (max(1, round(n * (1.0 / self.patch.factor))) for n in h.shape[-2:])
        return resize(h, height, width, self.patch.downscale_method)

    def after_input_block(self, h: torch.Tensor, index: int, timesteps: torch.Tensor) -> torch.Tensor:
        return h if self.patch.after_skip else self._shrink(h, index, timesteps)

    def after_skip(self, h: torch.Tensor, index: int, timesteps: torch.Tensor) -> torch.Tensor:
        return self._shrink(h, index, timesteps) if self.patch.after_skip else h

    def before_output_block(self, h: torch.Tensor, skip: torch.Tensor, index: int,
                            timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if h.shape[-2:] != skip.shape[-2:]:
            h = resize(h, *skip.shape[-2:], method=self.patch.upscale_method)
        return h, skip


# ---------------------------------------------------------------------------- applying


def _forward_owner(unet: nn.Module) -> nn.Module:
    """The module whose ``forward`` runs: a compiled copy (``sgm.nets.compile``) runs the model it was
    made from, so hooks go there."""
    from sgm.nets.compile import compiled_forward

    forward = compiled_forward(unet)
    return unet if forward is None else forward.module


@contextlib.contextmanager
def unet_patches_applied(unet: nn.Module, model_sampling: Any, patches: Sequence[Any]) -> Iterator[None]:
    """Install ``patches`` (each with ``bind(unet, model_sampling) -> BlockHooks``) on ``unet`` for the
    block's duration, after any installed already, in order; the previous hooks come back on exit."""
    if not patches:
        yield
        return
    owner = _forward_owner(unet)
    if not hasattr(owner, "block_hooks"):
        raise ValueError(f"{type(owner).__name__} takes no block patches (FreeU, Deep Shrink need the "
                         "SD 1.x / 2.x / SDXL UNet)")
    before = owner.block_hooks
    hooks = tuple(p.bind(owner, model_sampling) for p in patches)
    detach: list[Callable[[], None]] = []
    try:
        # Hooks that also act inside the blocks (HyperTile, ToMe: self-attention). Attached last to first,
        # so the first one added sees the attention's inputs first and wraps the ones added after it.
        for hook in reversed(hooks):
            if hasattr(hook, "attach"):
                detach.append(hook.attach())
        owner.block_hooks = tuple(before) + hooks
        yield
    finally:
        owner.block_hooks = before
        for undo in reversed(detach):
            undo()


# ---------------------------------------------------------------------------- compute dtype

COMPUTE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compute_dtype_applied(name: str | None, device: torch.device | str,
                          unet: nn.Module) -> contextlib.AbstractContextManager:
    """Run ``unet`` in the compute dtype ``name`` for the block's duration: fp16 / bf16 through
    ``torch.autocast`` (convolutions and matrix products cast per operation, normalisations stay in
    float32; the stored weights are untouched); fp32 needs float32 weights (autocast cannot widen);
    None or "default": the weights' own dtype."""
    if name in (None, "default"):
        return contextlib.nullcontext()
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; choose default, {', '.join(COMPUTE_DTYPES)}")
    time_embed = getattr(unet, "time_embed", None)  # the UNet computes in this layer's dtype
    weights = time_embed[0].weight.dtype if time_embed is not None else next(unet.parameters()).dtype
    dtype = COMPUTE_DTYPES[name]
    if dtype == weights:
        return contextlib.nullcontext()
    if dtype == torch.float32:
        raise ValueError(f"the model's weights are {str(weights).removeprefix('torch.')}: it cannot compute in "
                         "fp32 without a float32 copy; load it in fp32 (the dtype setting) instead")
    return torch.autocast(torch.device(device).type, dtype=dtype)
