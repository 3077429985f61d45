"""Operations on latents (B, C, H, W) that ComfyUI's LATENT_OPERATION nodes make, and the latent
concatenation / cut of its LatentConcat / LatentCut.

An operation is a frozen value called on a latent (``op(latent) -> latent``, same shape). It is
applied either to a latent directly (LatentApplyOperation) or, inside classifier-free guidance, to
the guidance D_c - D_u of every step (``sgm.sampling.guiders_extra.LatentOperationCFG``).

Both operations split each latent pixel's channel vector into its length ("magnitude", over C)
and direction, as ComfyUI's do:

* :class:`TonemapReinhard` compresses the lengths with Reinhard's operator L / (1 + L), scaled so
  that lengths around ``top = multiplier (mean + 5 std)`` (statistics of the item's lengths) keep
  most of their value: L' = top (L / top) / (1 + L / top).
* :class:`Sharpen` unsharp-masks the directions with a Gaussian kernel and puts the lengths back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

TONEMAP_EPS = 1e-10  # keeps the direction finite where a latent pixel is 0 (ComfyUI's constants)
SHARPEN_EPS = 1e-6

Axis = Literal["x", "y"]


@dataclass(frozen=True)
class TonemapReinhard:
    """Reinhard tonemapping of the per-pixel channel lengths (see the module); ``multiplier`` scales
    the length that maps to half of itself (bigger: gentler)."""

    multiplier: float = 1.0

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        length = torch.linalg.vector_norm(latent, dim=1, keepdim=True) + TONEMAP_EPS  # (B, 1, H, W)
        direction = latent / length
        dims = list(range(1, length.ndim))
        # torch.std is the unbiased (n - 1) estimate, as ComfyUI's
        top = (length.std(dim=dims, keepdim=True) * 5 + length.mean(dim=dims, keepdim=True)) * self.multiplier
        scaled = length / top
        return direction * (scaled / (scaled + 1.0) * top)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """(size, size) Gaussian weights summing to 1, on a grid spanning [-1, 1] in both directions
    (so ``sigma`` is relative to the kernel's half-width, as ComfyUI's blur and sharpen use it)."""
    axis = torch.linspace(-1.0, 1.0, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    weights = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return weights / weights.sum()


@dataclass(frozen=True)
class Sharpen:
    """Unsharp masking of the per-pixel directions: the kernel is delta + 10 alpha (delta - G) with G
    the (2 radius + 1)^2 Gaussian of :func:`gaussian_kernel`; edges are reflected."""

    radius: int = 9
    sigma: float = 1.0
    alpha: float = 0.1

    def kernel(self) -> torch.Tensor:
        size = 2 * self.radius + 1
        kernel = gaussian_kernel(size, self.sigma) * (-10.0 * self.alpha)
        kernel[self.radius, self.radius] += 1.0 - kernel.sum()  # the weights sum to 1
        return kernel

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        height, width = latent.shape[-2:]
        if self.radius >= min(height, width):
            raise ValueError(f"sharpen_radius {self.radius} needs a latent larger than it in both directions "
                             f"(edges are mirrored); this one is {width}x{height} latent pixels: lower the radius")
        length = torch.linalg.vector_norm(latent, dim=1, keepdim=True) + SHARPEN_EPS  # (B, 1, H, W)
        direction = latent / length
        channels = latent.shape[1]
        weights = self.kernel().to(latent)[None, None].expand(channels, 1, -1, -1)  # (C, 1, k, k)
        padded = F.pad(direction, (self.radius,) * 4, mode="reflect")
        return length * F.conv2d(padded, weights, groups=channels)


# ----------------------------------------------------------------------------- concat / cut


def _axis_dim(axis: str, node_id: str) -> int:
    if axis == "x":
        return -1
    if axis == "y":
        return -2
    raise ValueError(f"{node_id}: dim {axis!r} is not an axis of an image latent (B, C, H, W); 't' is the "
                     "time axis of video latents, which this program does not have: use x or y")


def concat_latents(first: torch.Tensor, second: torch.Tensor, dim: str, node_id: str = "LatentConcat"
                   ) -> torch.Tensor:
    """``first`` and ``second`` (B, C, H, W) side by side along ``dim``: "x" (second to the right),
    "y" (second below), "-x" / "-y" (second first). The second's batch is repeated or cut to the first's;
    the other sizes must agree."""
    axis = _axis_dim(dim.lstrip("-"), node_id)
    if second.shape[0] != first.shape[0]:
        times = -(-first.shape[0] // second.shape[0])
        second = second.repeat(times, *([1] * (second.ndim - 1)))[:first.shape[0]]
    other = -2 if axis == -1 else -1
    if first.shape[1] != second.shape[1] or first.shape[other] != second.shape[other]:
        raise ValueError(f"{node_id}: samples1 is {tuple(first.shape[1:])} and samples2 {tuple(second.shape[1:])} "
                         f"(C, H, W); joining along {dim.lstrip('-')} needs the same channels and "
                         f"{'height' if other == -2 else 'width'}: resize one first (LatentUpscale)")
    parts = (second, first.to(second)) if dim.startswith("-") else (first, second.to(first))
    return torch.cat(parts, dim=axis)


def cut_range(size: int, index: int, amount: int) -> tuple[int, int]:
    """ComfyUI's LatentCut bounds on an axis of ``size``: (start, length). A negative index counts from
    the end; the start is clamped into the axis and the length to what is left after it."""
    if index >= 0:
        start = min(index, size - 1)
        return start, min(size - start, amount)
    start = max(index, -size)
    return size + start, min(-start, amount)


def cut_latent(latent: torch.Tensor, dim: str, index: int, amount: int, node_id: str = "LatentCut"
               ) -> torch.Tensor:
    """``amount`` rows ("y") or columns ("x") of ``latent`` (..., H, W) from ``index`` (see :func:`cut_range`)."""
    axis = _axis_dim(dim, node_id)
    start, length = cut_range(latent.shape[axis], index, amount)
    return latent.narrow(axis, start, length).clone()
