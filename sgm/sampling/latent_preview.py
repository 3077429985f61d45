"""Cheap latent previews: a fixed linear map from latent channels to RGB, per family.

Decoding with the VAE every step is too slow for a progress preview; a 4 -> 3 linear map
of the (scaled) latent gives a recognisable low-resolution image for almost nothing.
The factors are least-squares fits of RGB on latent values published by the community
(Keturn, "Decoding latents to RGB without upscaling", 2022, for SD 1.x; the analogous
fit for the SDXL VAE). SD 2.x shares SD 1.x's VAE.

Where a TAESD decoder is at hand (``--preview-method taesd``, files in models/vae_approx/),
:func:`taesd_preview_image` decodes the latent with it instead: a full-resolution, nearly
VAE-quality preview (see :mod:`sgm.nets.taesd`). It is a real decode at full resolution: on
a CPU a 512x512 preview took 2.0 s (fp32, one thread of a shared 2-core Xeon), so there it
costs far more than the linear map.

Both previews take the latent the sampler works on: *scaled* (diffusion space, the
``denoised`` of a sampler step callback, as ``nodes.sampling._preview`` passes it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from PIL import Image

    from sgm.nets.taesd import TinyAutoencoder, TinyDecoder

Family = Literal["sd1", "sd2", "sdxl", "tiny-shapes"]

# (4, 3): RGB = latent_channels @ factors (+ bias), RGB in [-1, 1].
_SD1_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)
# The embedded tiny-shapes model's VAE has a latent space of its own: a least-squares fit of
# 4x-pooled RGB on its scaled latents over 512 rendered shapes images (SD's factors turned a
# red circle on blue into a green blob). Each colour of the data set weighs the same in the
# fit and only flat 4x4 blocks count; a linear map still mixes some hues (green reads brownish).
_TINY_SHAPES_FACTORS = (
    (0.302, 0.7929, -0.0774),
    (-0.506, 0.0991, -0.1974),
    (-0.1038, 0.1394, 0.3185),
    (-0.2546, -0.0558, 0.3734),
)
_TINY_SHAPES_BIAS = (0.6111, 0.0638, -0.1454)

LATENT_RGB_FACTORS: dict[str, tuple[tuple[float, ...], ...]] = {
    "sd1": _SD1_FACTORS,
    "sd2": _SD1_FACTORS,
    "sdxl": _SDXL_FACTORS,
    "tiny-shapes": _TINY_SHAPES_FACTORS,
}
LATENT_RGB_BIAS: dict[str, tuple[float, ...]] = {
    "sd1": (0.0, 0.0, 0.0),
    "sd2": (0.0, 0.0, 0.0),
    "sdxl": _SDXL_BIAS,
    "tiny-shapes": _TINY_SHAPES_BIAS,
}


def _family_key(family: str) -> str:
    """Checkpoint family names ('sd2-v', 'sdxl-refiner', ...) -> a factor table key."""
    for key in ("sdxl", "sd2", "sd1", "tiny-shapes"):
        if family.startswith(key):
            return key
    raise ValueError(
        f"no latent preview factors for family {family!r}; known families: {sorted(LATENT_RGB_FACTORS)}"
    )


def latent_to_rgb(latent: torch.Tensor, family: str = "sd1", *, max_size: int | None = None) -> torch.Tensor:
    """(C=4, h, w) or (1, 4, h, w) diffusion-space latent -> (h', w', 3) uint8 preview.

    Takes the first item of a batch. ``max_size`` downsamples (area average) so the longer
    side is at most that many pixels. The latent is never modified.
    """
    key = _family_key(family)
    if latent.ndim == 4:
        latent = latent[0]
    if latent.ndim != 3 or latent.shape[0] != 4:
        raise ValueError(f"latent preview needs a (4, h, w) latent, got shape {tuple(latent.shape)}")
    factors = torch.tensor(LATENT_RGB_FACTORS[key], dtype=torch.float32, device=latent.device)  # (4, 3)
    bias = torch.tensor(LATENT_RGB_BIAS[key], dtype=torch.float32, device=latent.device)  # (3,)
    rgb = torch.einsum("chw,cr->hwr", latent.float(), factors) + bias  # (h, w, 3) in ~[-1, 1]
    return _to_uint8(rgb, max_size)


def _to_uint8(rgb: torch.Tensor, max_size: int | None) -> torch.Tensor:
    """(h, w, 3) in ~[-1, 1] -> (h', w', 3) uint8 on the CPU, area-averaged so max(h', w') <= max_size."""
    if max_size is not None and max(rgb.shape[:2]) > max_size:
        scale = max_size / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale)))
        rgb = torch.nn.functional.adaptive_avg_pool2d(rgb.permute(2, 0, 1)[None], size)[0].permute(1, 2, 0)
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def latent_preview_image(
    latent: torch.Tensor, family: str = "sd1", *, max_size: int | None = 512
) -> "Image.Image":
    """The same preview as a PIL RGB image (Pillow is imported only here)."""
    from PIL import Image

    return Image.fromarray(latent_to_rgb(latent, family, max_size=max_size).numpy(), mode="RGB")


def taesd_to_rgb(
    latent: torch.Tensor, decoder: "TinyAutoencoder | TinyDecoder", *, max_size: int | None = None
) -> torch.Tensor:
    """(4, h, w) or (B, 4, h, w) *scaled* latent -> (8h', 8w', 3) uint8 preview decoded by TAESD.

    ``decoder`` is a :class:`~sgm.nets.taesd.TinyDecoder` (e.g. loaded with
    ``sgm.io.taesd_files.load_taesd_part(path, "decoder")``) or a TinyAutoencoder with a
    decoder; the latent must be of the decoder's family (taesd: SD 1.x/2.x, taesdxl: SDXL).
    The first batch item is decoded on the decoder's device and dtype, then area-averaged so
    the longer side is at most ``max_size``. The latent is never modified.
    """
    from sgm.nets.taesd import TinyAutoencoder

    if latent.ndim == 3:
        latent = latent[None]
    if latent.ndim != 4 or latent.shape[1] != 4:
        raise ValueError(f"TAESD preview needs a (4, h, w) latent, got shape {tuple(latent.shape)}")
    parameter = next(decoder.parameters())
    z = latent[:1].to(device=parameter.device, dtype=parameter.dtype)  # (1, 4, h, w), scaled
    with torch.no_grad():
        if isinstance(decoder, TinyAutoencoder):
            images = decoder.decode_scaled(z)  # (1, 3, 8h, 8w) in ~[-1, 1]
        else:
            images = decoder(z) * 2 - 1  # TAESD's own output is in ~[0, 1]
    return _to_uint8(images[0].float().permute(1, 2, 0), max_size)


def taesd_preview_image(
    latent: torch.Tensor, decoder: "TinyAutoencoder | TinyDecoder", max_size: int | None = 512
) -> "Image.Image":
    """:func:`taesd_to_rgb` as a PIL RGB image; ``latent`` is scaled (a sampler's ``denoised``)."""
    from PIL import Image

    return Image.fromarray(taesd_to_rgb(latent, decoder, max_size=max_size).numpy(), mode="RGB")
