"""Pixel operations on images, masks and latents: blur, sharpen, Canny edges, mask morphology,
compositing, outpainting pads.

Conventions (as between the nodes): an image is (B, H, W, C) float in [0, 1]; a mask is
(B, H, W) float in [0, 1] (any leading shape is flattened to a batch); a latent is
(B, C, h, w). Nothing here modifies its input.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

MaskOperation = Literal["multiply", "add", "subtract", "and", "or", "xor"]
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """(H, W), (B, H, W), (B, 1, H, W), ... -> (B, H, W)."""
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


# --------------------------------------------------------------------------- filters


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """(size, size) Gaussian weights summing to 1; ``sigma`` is measured in units of the kernel's
    half-width (the kernel spans -1..1), as ComfyUI's ImageBlur / ImageSharpen take it."""
    axis = torch.linspace(-1.0, 1.0, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    weights = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def _filter(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of (B, H, W, C) with a (k, k) kernel, edges reflected."""
    channels, radius = image.shape[-1], kernel.shape[-1] // 2
    x = image.permute(0, 3, 1, 2)
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"  # reflect needs radius < size
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    weight = kernel.to(x).expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=channels).permute(0, 2, 3, 1)


def blur(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """Gaussian blur with a (2 radius + 1)^2 kernel (``gaussian_kernel``); radius 0 is a copy."""
    if radius <= 0:
        return image.clone()
    return _filter(image, gaussian_kernel(2 * radius + 1, sigma))


def sharpen(image: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """Unsharp masking in one kernel: identity + 10 alpha (identity - Gaussian), clamped to [0, 1]
    (the kernel sums to 1, so flat regions keep their value)."""
    if radius <= 0:
        return image.clone()
    size = 2 * radius + 1
    kernel = gaussian_kernel(size, sigma) * -(alpha * 10.0)
    kernel[radius, radius] += 1.0 - kernel.sum()
    return _filter(image, kernel).clamp(0.0, 1.0)


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, 1, H, W) luma (one channel is taken as it is)."""
    if image.shape[-1] == 1:
        return image.permute(0, 3, 1, 2)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b)[:, None]


def _conv_same(x: torch.Tensor, kernel: torch.Tensor, mode: str = "replicate") -> torch.Tensor:
    radius = kernel.shape[-1] // 2
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    return F.conv2d(x, kernel.to(x)[None, None])


def canny(image: torch.Tensor, low_threshold: float, high_threshold: float, *,
          blur_sigma: float = 1.0, blur_size: int = 5) -> torch.Tensor:
    """Canny edges (Canny 1986) of (B, H, W, C) images -> (B, H, W) in {0, 1}.

    1. luma, Gaussian blur (``blur_size``^2 kernel, ``blur_sigma`` in pixels);
    2. Sobel gradients normalised by 1/8 (so a 0 -> 1 step edge has magnitude 0.5 per axis);
    3. non-maximum suppression along the gradient direction quantised to 0/45/90/135 degrees;
    4. double threshold: magnitude > high is an edge, low < magnitude <= high a weak candidate;
    5. hysteresis: weak pixels 8-connected to edges become edges, repeated until nothing changes.
    """
    if not 0.0 < low_threshold <= high_threshold:
        raise ValueError(f"need 0 < low_threshold <= high_threshold, got {low_threshold} and {high_threshold}")
    gray = to_gray(image.float())  # (B, 1, H, W)
    axis = torch.arange(blur_size, dtype=torch.float32) - blur_size // 2
    g1 = torch.exp(-axis**2 / (2 * blur_sigma**2))
    g1 = g1 / g1.sum()
    smooth = _conv_same(gray, torch.outer(g1, g1), mode="reflect" if min(gray.shape[-2:]) > blur_size // 2
                        else "replicate")
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    gx, gy = _conv_same(smooth, sobel_x), _conv_same(smooth, sobel_x.t())
    magnitude = torch.sqrt(gx * gx + gy * gy + 1e-12)

    # Non-maximum suppression: compare with both neighbours along the gradient.
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180.0
    sector = (torch.round(angle / 45.0) % 4).long()  # 0: horizontal gradient, 1: 45, 2: vertical, 3: 135
    offsets = [(0, 1), (1, 1), (1, 0), (1, -1)]  # (dy, dx) along the gradient per sector (y down)
    padded = F.pad(magnitude, (1, 1, 1, 1))
    height, width = magnitude.shape[-2:]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for index, (dy, dx) in enumerate(offsets):
        ahead = padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        behind = padded[..., 1 - dy:1 - dy + height, 1 - dx:1 - dx + width]
        is_max = (magnitude > ahead) & (magnitude >= behind)  # ties: keep one of a plateau's pair
        keep |= (sector == index) & is_max
    thin = torch.where(keep, magnitude, torch.zeros_like(magnitude))

    strong = thin > high_threshold
    weak = (thin > low_threshold) & ~strong
    while True:
        grown = F.max_pool2d(strong.float(), 3, stride=1, padding=1) > 0
        new = strong | (grown & weak)
        if torch.equal(new, strong):
            break
        strong = new
    return strong[:, 0].float()


# --------------------------------------------------------------------------- masks


def _dilate(mask: torch.Tensor, cross: bool) -> torch.Tensor:
    """One 3x3 grey dilation of (B, H, W): a square or (``cross``) plus-shaped footprint, edges
    replicated."""
    x = F.pad(mask[:, None], (1, 1, 1, 1), mode="replicate")
    if not cross:
        return F.max_pool2d(x, 3, stride=1)[:, 0]
    h, w = mask.shape[-2:]
    shifts = [x[..., 1:1 + h, 1:1 + w], x[..., 0:h, 1:1 + w], x[..., 2:2 + h, 1:1 + w],
              x[..., 1:1 + h, 0:w], x[..., 1:1 + h, 2:2 + w]]
    return torch.stack(shifts).amax(dim=0)[:, 0]


def grow_mask(mask: torch.Tensor, expand: int, tapered_corners: bool = True) -> torch.Tensor:
    """Grey dilation (``expand`` > 0) or erosion (< 0) repeated |expand| times with a 3x3 footprint;
    tapered corners use the plus-shaped one (corners grow diagonally one step in two)."""
    out = as_mask_batch(mask).float()
    for _ in range(abs(expand)):
        out = _dilate(out, tapered_corners) if expand > 0 else -_dilate(-out, tapered_corners)
    return out.clone()


def feather_mask(mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    """Fade the mask linearly to its edges: the i-th column from the left (i = 0, 1, ...) is scaled by
    (i + 1) / left, and likewise for each side (ramps multiply where they overlap)."""
    out = as_mask_batch(mask).clone().float()
    height, width = out.shape[-2:]
    left, right, top, bottom = min(left, width), min(right, width), min(top, height), min(bottom, height)
    columns, rows = torch.ones(width), torch.ones(height)
    if left:
        columns[:left] *= torch.arange(1, left + 1) / left
    if right:
        columns[width - right:] *= torch.arange(right, 0, -1) / right
    if top:
        rows[:top] *= torch.arange(1, top + 1) / top
    if bottom:
        rows[height - bottom:] *= torch.arange(bottom, 0, -1) / bottom
    return out * rows[:, None] * columns[None, :]


def mask_composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                   operation: MaskOperation) -> torch.Tensor:
    """Combine ``source`` into ``destination`` at (x, y) (source's top-left), clipped to the
    destination; the result is clamped to [0, 1]. and / or / xor work on masks rounded to 0 / 1."""
    out = as_mask_batch(destination).clone().float()
    src = as_mask_batch(source).float()
    height, width = out.shape[-2:]
    bottom, right = min(y + src.shape[-2], height), min(x + src.shape[-1], width)
    if bottom <= y or right <= x:
        return out.clamp(0.0, 1.0)
    dst_part = out[:, y:bottom, x:right]
    src_part = src[:, : bottom - y, : right - x]
    if operation == "multiply":
        combined = dst_part * src_part
    elif operation == "add":
        combined = dst_part + src_part
    elif operation == "subtract":
        combined = dst_part - src_part
    elif operation in ("and", "or", "xor"):
        a, b = dst_part.round().bool(), src_part.round().bool()
        combined = {"and": a & b, "or": a | b, "xor": a ^ b}[operation].float()
    else:
        raise ValueError(f"operation must be one of multiply, add, subtract, and, or, xor; got {operation!r}")
    out[:, y:bottom, x:right] = combined
    return out.clamp(0.0, 1.0)


def mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(x, y, width, height) of the smallest rectangle holding every non-zero pixel of any batch item,
    or None for an all-zero mask."""
    nonzero = as_mask_batch(mask).abs().amax(dim=0) > 0
    rows, cols = torch.nonzero(nonzero.any(dim=1)), torch.nonzero(nonzero.any(dim=0))
    if rows.numel() == 0:
        return None
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


# --------------------------------------------------------------------------- images and latents


def pad_for_outpaint(image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                     feathering: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (B, H, W, C) images with grey (0.5) and make the outpainting mask (1, H', W'): 1 in the
    padding, and inside the image, near a padded side, ((feathering - d) / feathering)^2 at
    distance d < feathering from it (0 elsewhere), so the seam is repainted softly. Feathering
    applies only when twice it fits in both image sides."""
    batch, height, width, channels = image.shape
    out = torch.full((batch, height + top + bottom, width + left + right, channels), 0.5, dtype=torch.float32)
    out[:, top:top + height, left:left + width] = image.float()
    mask = torch.ones(height + top + bottom, width + left + right)
    inner = torch.zeros(height, width)
    if feathering > 0 and feathering * 2 < height and feathering * 2 < width:
        i = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
        j = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
        far_h, far_w = torch.full_like(i, float(height)), torch.full_like(j, float(width))
        distance = torch.stack([i if top else far_h, (height - i) if bottom else far_h,
                                j if left else far_w, (width - j) if right else far_w]).amin(dim=0)
        ramp = ((feathering - distance) / feathering) ** 2
        inner = torch.where(distance < feathering, ramp, inner)
    mask[top:top + height, left:left + width] = inner
    return out, mask[None]


def latent_composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                     feather: int = 0) -> torch.Tensor:
    """Paste ``source`` (B, C, h', w') into ``destination`` (B, C, h, w) with its top-left at latent
    pixel (x, y), clipped to the destination. With ``feather`` > 0 the pasted block fades in over
    ``feather`` latent pixels on each side that lies inside the destination: the t-th row or column
    from such a side (t = 0, 1, ...) weighs (t + 1) / feather (ramps multiply at corners)."""
    out = destination.clone()
    height, width = destination.shape[-2:]
    if y >= height or x >= width:
        return out
    block = source[..., : height - y, : width - x]
    h, w = block.shape[-2:]
    if feather <= 0:
        out[..., y:y + h, x:x + w] = block
        return out
    rows, columns = torch.ones(h), torch.ones(w)
    ramp = torch.arange(1, feather + 1, dtype=torch.float32) / feather
    n_rows, n_cols = min(feather, h), min(feather, w)
    if y != 0:
        rows[:n_rows] *= ramp[:n_rows]
    if y + h < height:
        rows[h - n_rows:] *= ramp[:n_rows].flip(0)
    if x != 0:
        columns[:n_cols] *= ramp[:n_cols]
    if x + w < width:
        columns[w - n_cols:] *= ramp[:n_cols].flip(0)
    weight = (rows[:, None] * columns[None, :]).to(out)
    out[..., y:y + h, x:x + w] = block * weight + out[..., y:y + h, x:x + w] * (1 - weight)
    return out


def inpaint_pixels_and_mask(pixels: torch.Tensor, mask: torch.Tensor,
                            grow_by: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What VAE-encoding for inpainting needs: the images with the (rounded) masked region set to
    grey 0.5, and the noise mask grown by a ``grow_by`` x ``grow_by`` box (rounded to 0 / 1), so
    the repainted region reaches a little past the mask in latent space.

    pixels (B, H, W, C); mask (B or 1, H, W) at the image's size. Returns (pixels, mask (B or 1, H, W)).
    """
    mask = as_mask_batch(mask).float()
    hard = mask.round()
    keep = (1.0 - hard)[..., None]  # (B, H, W, 1)
    blanked = (pixels.float() - 0.5) * keep + 0.5
    if grow_by == 0:
        grown = hard
    else:
        padding = math.ceil((grow_by - 1) / 2)
        kernel = torch.ones(1, 1, grow_by, grow_by)
        grown = F.conv2d(hard[:, None], kernel, padding=padding).clamp(0, 1)[:, 0]
        grown = grown[..., : mask.shape[-2], : mask.shape[-1]]
    return blanked, grown.round()
