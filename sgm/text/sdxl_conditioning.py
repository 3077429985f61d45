"""SDXL's vector conditioning ``y``: pooled text embedding + Fourier size embeddings.

SDXL (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for High-Resolution
Image Synthesis", sec. 2.2) conditions the UNet on the image's original size, its crop's
top-left corner and the target size, each number embedded with the same 256-channel
sinusoidal embedding as a timestep, in sgm's ``ConcatTimestepEmbedderND`` order:

* base:    y = [pooled bigG (1280), (orig h, orig w), (crop top, crop left), (target h, target w)]
           -> 1280 + 6 * 256 = 2816
* refiner: y = [pooled bigG (1280), (orig h, orig w), (crop top, crop left), aesthetic score]
           -> 1280 + 5 * 256 = 2560

Sizes are (height, width) in pixels.
"""

from __future__ import annotations

import math

import torch

SIZE_EMBED_DIM = 256
MAX_PERIOD = 10000.0


def fourier_embedding(values: torch.Tensor, dim: int = SIZE_EMBED_DIM) -> torch.Tensor:
    """values: (B, N) -> (B, N * dim): per value [cos(v f_i), sin(v f_i)], f_i = 10000^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[..., None] * freqs  # (B, N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).flatten(1)  # (B, N*dim)


def _check_pair(name: str, value: tuple[int, int]) -> tuple[float, float]:
    if len(value) != 2:
        raise ValueError(f"{name} must be a (height, width)-style pair, got {value!r}")
    return float(value[0]), float(value[1])


def _vector(pooled: torch.Tensor, numbers: list[float]) -> torch.Tensor:
    if pooled.ndim != 2:
        raise ValueError(f"pooled must be (B, P), got shape {tuple(pooled.shape)}")
    values = torch.tensor(numbers, device=pooled.device).expand(pooled.shape[0], -1)  # (B, N)
    return torch.cat([pooled, fourier_embedding(values).to(pooled.dtype)], dim=-1)


def sdxl_vector(
    pooled: torch.Tensor,
    *,
    original_size: tuple[int, int],
    crop_top_left: tuple[int, int] = (0, 0),
    target_size: tuple[int, int],
) -> torch.Tensor:
    """pooled (B, 1280) -> SDXL base ``y`` (B, 2816); sizes are (height, width)."""
    numbers = [*_check_pair("original_size", original_size), *_check_pair("crop_top_left", crop_top_left),
               *_check_pair("target_size", target_size)]
    return _vector(pooled, numbers)


def sdxl_refiner_vector(
    pooled: torch.Tensor,
    *,
    original_size: tuple[int, int],
    crop_top_left: tuple[int, int] = (0, 0),
    aesthetic_score: float = 6.0,
) -> torch.Tensor:
    """pooled (B, 1280) -> SDXL refiner ``y`` (B, 2560). Typical scores: 6.0 positive, 2.5 negative."""
    numbers = [*_check_pair("original_size", original_size), *_check_pair("crop_top_left", crop_top_left),
               float(aesthetic_score)]
    return _vector(pooled, numbers)
