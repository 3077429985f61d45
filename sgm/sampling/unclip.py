"""unCLIP image conditioning: CLIP image embeddings, noise-augmented, as the UNet's vector ``y``.

Stable unCLIP (SD 2.1 unCLIP, Ramesh et al. 2022's recipe on Stable Diffusion) conditions the
UNet on a CLIP image embedding through its class-embedding input. During training the
embedding is noised at a random level and the level is given to the model, so at inference a
chosen level trades faithfulness for variation. That is ldm's ``CLIPEmbeddingNoiseAugmentation``:

    x   = (e - mean) / std                           normalise (stored CLIP statistics)
    z_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps       q_sample (Ho et al. 2020, eq. 4)
    y   = [z_t * std + mean | timestep_embedding(t)]  unnormalise, append the level

with its own 1000-step "squaredcos_cap_v2" schedule (Nichol & Dhariwal 2021, eq. 17,
betas capped at 0.999). The released SD 2.1 unCLIP files store no statistics (the buffers
are not persistent), so mean 0 and std 1 apply there.

Several conditions (``unCLIPConditioning`` nodes chained, or a batch of images) are summed,
each weighted by its strength, and the sum is augmented once more at a merge level
(``unclip_vector``); this is what ComfyUI does. SDXL Revision feeds the first ``dim`` columns
of the same construction (bigG embeddings, 1280 wide) to SDXL in place of the pooled text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sgm.nets.unet import timestep_embedding

MAX_NOISE_LEVEL = 1000
# ComfyUI seeds the embedding noise with the sampling seed minus 10; the same seed gives the same noise here.
NOISE_SEED_OFFSET = -10
# The merge level of several unCLIP embeddings: ComfyUI's defaults for SD 2.1 unCLIP and for SDXL Revision.
UNCLIP_MERGE_AUGMENTATION = 0.05
REVISION_MERGE_AUGMENTATION = 0.0

UnclipEntry = tuple[torch.Tensor, float, float]  # (image_embeds (B, D), strength, noise_augmentation)


def squaredcos_cap_v2_alphas_cumprod(timesteps: int = MAX_NOISE_LEVEL) -> torch.Tensor:
    """abar_t of the cosine schedule (Nichol & Dhariwal 2021, eq. 17, s = 0.008) with each beta
    capped at 0.999, computed in float64 as ldm does: (timesteps,)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), 0.999)
                          for i in range(timesteps)], dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


_ALPHAS_CUMPROD = squaredcos_cap_v2_alphas_cumprod()
# ldm keeps these two as float32 buffers.
SQRT_ALPHAS_CUMPROD = _ALPHAS_CUMPROD.sqrt().float()
SQRT_ONE_MINUS_ALPHAS_CUMPROD = (1.0 - _ALPHAS_CUMPROD).sqrt().float()


def noise_level(noise_augmentation: float) -> int:
    """The schedule step of an augmentation amount in [0, 1] (0 -> step 0, 1 -> step 999)."""
    if not 0.0 <= noise_augmentation <= 1.0:
        raise ValueError(f"unCLIP noise_augmentation must be in [0, 1], got {noise_augmentation}")
    return round((MAX_NOISE_LEVEL - 1) * noise_augmentation)


@dataclass(frozen=True, eq=False)
class EmbeddingNoiseAugmentation:
    """ldm's ``CLIPEmbeddingNoiseAugmentation`` for embeddings ``dim`` wide.

    data_mean / data_std: (1, dim) CLIP statistics; None = 0 and 1 (the released models).
    """

    dim: int
    data_mean: torch.Tensor | None = None
    data_std: torch.Tensor | None = None

    def __call__(self, embeds: torch.Tensor, level: int, noise: torch.Tensor) -> torch.Tensor:
        """embeds (N, dim), noise like it -> (N, 2 * dim): the augmented embeds, then the level's embedding."""
        if embeds.shape[-1] != self.dim:
            raise ValueError(f"unCLIP: image embeddings are {embeds.shape[-1]} wide, this model takes {self.dim}; "
                             "use the CLIP vision model the checkpoint was trained with (ViT-L/14: 768, "
                             "ViT-H/14: 1024, SDXL Revision: ViT-bigG/14, 1280)")
        x = embeds.float()
        mean = torch.zeros(1, self.dim) if self.data_mean is None else self.data_mean.float().reshape(1, -1)
        std = torch.ones(1, self.dim) if self.data_std is None else self.data_std.float().reshape(1, -1)
        x = (x - mean.to(x.device)) / std.to(x.device)
        z = SQRT_ALPHAS_CUMPROD[level] * x + SQRT_ONE_MINUS_ALPHAS_CUMPROD[level] * noise.to(x)
        z = z * std.to(x.device) + mean.to(x.device)
        level_embedding = timestep_embedding(torch.full((x.shape[0],), float(level), device=x.device), self.dim)
        return torch.cat([z, level_embedding], dim=1)


def seeded_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian noise from a CPU generator seeded with ``seed`` (as ``torch.manual_seed`` would, negative
    seeds included)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator)


def unclip_vector(
    entries: Sequence[UnclipEntry], augmentation: EmbeddingNoiseAugmentation, *, seed: int,
    merge_noise_augmentation: float = UNCLIP_MERGE_AUGMENTATION,
) -> torch.Tensor:
    """The UNet vector ``y`` (1, 2 * dim) for the unCLIP conditions of one prompt.

    Each image (each row of each entry's embeds) is augmented at its own level and weighted
    by its strength; with more than one image the weighted sum's first ``dim`` columns are
    augmented again at ``merge_noise_augmentation``. The noise of every augmentation is drawn
    from ``seed`` (the sampling seed plus ``NOISE_SEED_OFFSET`` reproduces ComfyUI's).
    """
    parts = []
    for embeds, strength, noise_augmentation in entries:
        level = noise_level(noise_augmentation)
        for row in embeds.reshape(-1, embeds.shape[-1]):
            noise = seeded_noise((1, augmentation.dim), seed)
            parts.append(augmentation(row[None], level, noise) * float(strength))
    if not parts:
        raise ValueError("unclip_vector: no unCLIP conditions given")
    if len(parts) == 1:
        return parts[0]
    total = torch.stack(parts).sum(0)  # (1, 2 * dim)
    noise = seeded_noise((1, augmentation.dim), seed)
    return augmentation(total[:, :augmentation.dim], noise_level(merge_noise_augmentation), noise)


def unclip_adm_dim(adm_in_channels: int) -> int:
    """The embedding width of an SD 2.1 unCLIP UNet: its vector is [embeds | level embedding]."""
    if adm_in_channels % 2:
        raise ValueError(f"an unCLIP UNet's vector input is twice the embedding width; {adm_in_channels} is odd")
    return adm_in_channels // 2


def no_image_vector(adm_in_channels: int) -> torch.Tensor:
    """An unCLIP UNet's vector for a prompt without image conditions: zeros (1, adm_in_channels)."""
    return torch.zeros(1, adm_in_channels)
