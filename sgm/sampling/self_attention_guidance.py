"""Self-Attention Guidance (Hong et al. 2023, "Improving Sample Quality of Diffusion Models Using
Self-Attention Guidance", ICCV), as a guidance patch (``sgm.sampling.guidance_patches``).

At each step the unconditional estimate D_u = D(x, sigma; negative prompt) is computed while the
middle block's self-attention map A (heads averaged) is recorded. Pixels that many queries attend
to (column sums of A above 1, the paper's "salient" mask M, eq. 11) are blurred in D_u:

    D_blur = M * G_blur(D_u) + (1 - M) * D_u
    x_blur = D_blur + (x - D_u)                    (the same noise, on the degraded image)
    D      = D_guided + s (D_blur - D(x_blur, sigma; negative prompt))

which in noise space is eq. 12's s * (eps(x_blur) - eps(x)) correction. The Gaussian has a
9-pixel kernel with standard deviation ``blur_sigma`` (latent pixels), reflect-padded.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sgm.sampling.guidance_patches import (Denoiser, GuidanceInputs, _Wrapper, attention_replaced,
                                           middle_self_attentions)

BLUR_KERNEL = 9
SALIENCY_THRESHOLD = 1.0


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """x (B, C, H, W) blurred by a separable normalised Gaussian of ``kernel_size`` taps, reflect-padded."""
    half = (kernel_size - 1) * 0.5
    taps = torch.linspace(-half, half, kernel_size, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]
    pad = kernel_size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, kernel_size), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, kernel_size, 1), groups=channels)


def salient_mask(attention: torch.Tensor, shape: tuple[int, int], size: tuple[int, int],
                 threshold: float = SALIENCY_THRESHOLD) -> torch.Tensor:
    """attention (B, Tq, Tk) softmax rows, Tk = h*w tokens of a (h, w) = ``shape`` map -> (B, 1, *size)
    mask: 1 where a key's total attention over queries exceeds ``threshold``, nearest-upsampled."""
    mask = (attention.sum(dim=1) > threshold).to(attention.dtype)  # (B, Tk)
    mask = mask.reshape(attention.shape[0], 1, *shape)
    return F.interpolate(mask, size=size, mode="nearest")


class AttentionRecorder:
    """An ``attention_override`` that computes attention explicitly and keeps its map, heads averaged:
    ``probabilities`` (B, Tq, Tk) of the last layer it ran in."""

    def __init__(self) -> None:
        self.probabilities: torch.Tensor | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        batch, _, inner = q.shape
        d = inner // heads
        q, k, v = (t.view(batch, -1, heads, d).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, d)
        probabilities = ((q @ k.transpose(-1, -2)) / math.sqrt(d)).float().softmax(dim=-1)  # (B, heads, Tq, Tk)
        self.probabilities = probabilities.mean(dim=1)
        out = probabilities.to(v.dtype) @ v  # (B, heads, Tq, d)
        return out.transpose(1, 2).reshape(batch, -1, inner)


@contextlib.contextmanager
def _input_shape_of(module: nn.Module, shapes: list[tuple[int, int]]) -> Iterator[None]:
    handle = module.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape[-2:])))
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class SelfAttentionGuidance:
    """SAG at ``scale`` (0 = off) with a Gaussian blur of ``blur_sigma`` latent pixels."""

    scale: float
    blur_sigma: float

    def __post_init__(self) -> None:
        if self.blur_sigma <= 0:
            raise ValueError(f"SAG blur_sigma must be > 0, got {self.blur_sigma}")

    def wrap(self, denoiser: Denoiser, inputs: GuidanceInputs) -> Denoiser:
        if self.scale == 0:
            return denoiser
        return SelfAttentionGuidanceDenoiser(denoiser, inputs, self.scale, self.blur_sigma)


class SelfAttentionGuidanceDenoiser(_Wrapper):
    """``inner``'s estimate + scale * (D_blur - D(x_blur)) (module docstring), the reference passes with
    the negative prompt (the positive one where there is no negative)."""

    def __init__(self, inner: Denoiser, inputs: GuidanceInputs, scale: float, blur_sigma: float) -> None:
        from sgm.sampling.guidance_extra import TimestepRangeDenoiser, has_timestep_ranges
        from sgm.sampling.guiders import GuidedDenoiser

        super().__init__(inner)
        self.scale, self.blur_sigma = float(scale), float(blur_sigma)
        self.layers = middle_self_attentions(inputs.unet)
        self.middle = inputs.unet.middle_block
        conditions = list(inputs.negative) or list(inputs.positive)
        kind = TimestepRangeDenoiser if has_timestep_ranges(conditions) else GuidedDenoiser
        self.reference = kind(inputs.unet, inputs.model_sampling, conditions, None, cfg=1.0,
                              inpaint_concat=inputs.inpaint_concat)

    def _change(self, x: torch.Tensor, sigma: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        recorder, shapes = AttentionRecorder(), []
        with attention_replaced(self.layers, recorder), _input_shape_of(self.middle, shapes):
            reference = self.reference(x, sigma)  # (B, C, H, W)
        if recorder.probabilities is None or len(shapes) != 1 or recorder.probabilities.shape[0] != x.shape[0]:
            # the conditions ran in several calls (areas, masks): no single map to read the saliency from
            raise ValueError("Self-Attention Guidance needs the reference prompt in one full-frame UNet call; "
                             "it does not support area- or mask-restricted negative conditioning")
        mask = salient_mask(recorder.probabilities, shapes[-1], tuple(x.shape[-2:])).to(reference)
        degraded = mask * gaussian_blur(reference, BLUR_KERNEL, self.blur_sigma) + (1 - mask) * reference
        estimate = self.reference(degraded + (x - reference), sigma)
        return guided + self.scale * (degraded - estimate)

    def _own_calls(self) -> int:
        return int(getattr(self.reference, "unet_calls", 0))
