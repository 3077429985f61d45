"""InstructPix2Pix (Brooks et al. 2023, "InstructPix2Pix: Learning to Follow Image Editing
Instructions"): the UNet takes 8 input channels, the noisy latent and the latent of the image
to edit, concatenated (sec. 3.2.1: "we add additional input channels to the first
convolutional layer, concatenating z_t and E(c_I)").

The image latent is the VAE's latent *without* the diffusion scale factor for the released
SD 1.5 model (its training code encodes with ``encode_first_stage(...).mode()``); SDXL
InstructPix2Pix models were trained on the scaled latent. Conditions carry the raw latent under
``extra[CONCAT_KEY]`` (ComfyUI's name for it); :func:`pix2pix_concat` turns it into the extra
input channels the guider appends (``GuidedDenoiser(..., inpaint_concat=...)`` takes any number
of extra channels).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

CONCAT_KEY = "concat_latent_image"
SDXL_SCALE = 0.13025


def pix2pix_scale(family: str) -> float:
    """The factor the image latent is multiplied by for a family's InstructPix2Pix UNet."""
    return SDXL_SCALE if family.startswith("sdxl") else 1.0


def concat_image_of(conditions: Sequence[Any]) -> torch.Tensor | None:
    """The first raw image latent (B, C, h, w) the conditions carry, or None."""
    for cond in conditions:
        image = getattr(cond, "extra", {}).get(CONCAT_KEY)
        if image is not None:
            return image
    return None


def pix2pix_concat(image_latent: torch.Tensor | None, samples: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The extra UNet input for ``samples`` (B, C, h, w): ``scale * image_latent`` resized to the
    latent's size (bilinear after a centre crop to its aspect, as ComfyUI fits it) and repeated to
    its batch; zeros where there is no image (the model's unconditional image input)."""
    if image_latent is None:
        return torch.zeros_like(samples)
    image = image_latent.to(device=samples.device, dtype=samples.dtype)
    h, w = samples.shape[-2:]
    if image.shape[-2:] != (h, w):
        image = _centre_crop(image, w / h)
        image = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False)
    batch = samples.shape[0]
    if image.shape[0] != batch:
        repeats = -(-batch // image.shape[0])
        image = image.repeat(repeats, 1, 1, 1)[:batch]
    return image * scale


def _centre_crop(image: torch.Tensor, aspect: float) -> torch.Tensor:
    ih, iw = image.shape[-2:]
    if iw / ih > aspect:
        keep = max(1, round(ih * aspect))
        return image[..., (iw - keep) // 2:(iw - keep) // 2 + keep]
    keep = max(1, round(iw / aspect))
    return image[..., (ih - keep) // 2:(ih - keep) // 2 + keep, :]
