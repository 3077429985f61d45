"""The values that travel between built-in nodes (MODEL, CLIP, VAE, LATENT).

All are frozen: a node that "changes" one returns a new value (``dataclasses.replace``);
the cache hands the same object to every consumer. Weights are shared, never copied:
patches are *recorded* on MODEL / CLIP (``loras``: LoRAs, model merges from ``sgm.io.merge``,
hypernetworks from ``sgm.io.hypernetwork``) and applied only while a node samples or encodes
(see ``sgm.io.lora.patched``), which restores the base weights afterwards.

Tensors in LATENT / IMAGE / MASK values live on the CPU in float32; nodes move them to the
model's device for the work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of `python main.py validate`
    import torch
    from torch import nn

    from sgm.io.lora import LoraTarget


@dataclass(frozen=True)
class LatentFormat:
    """How a family's latents look: channels and the VAE's downscale factor."""

    channels: int = 4
    downscale: int = 8


@dataclass(frozen=True, eq=False)
class LoraPatch:
    """One recorded patch applied at ``strength``: a LoRA (targets from ``sgm.io.lora.match_lora``),
    a merge with another model (``sgm.io.merge.merge_targets``) or a hypernetwork
    (``sgm.io.hypernetwork.HypernetworkPatch``); ``sgm.io.lora.patched`` applies each kind."""

    name: str
    targets: tuple["LoraTarget", ...]
    strength: float


ModelPatch = LoraPatch  # the general name: not every recorded patch is a LoRA


@dataclass(frozen=True, eq=False)
class ModelValue:
    """MODEL: the diffusion UNet, its noise levels and family, plus recorded LoRA patches."""

    unet: "nn.Module"
    model_sampling: Any  # sgm.sampling.denoisers.ModelSampling
    family: str
    name: str
    latent_format: LatentFormat = field(default_factory=LatentFormat)
    loras: tuple[LoraPatch, ...] = ()
    cfg_rescale: float = 0.0  # RescaleCFG's multiplier (``sgm.sampling.guiders.rescale_cfg_v``); 0 = plain CFG
    # Model patches bound only while sampling, in the order added: block hooks (FreeU, Deep Shrink:
    # ``sgm.nets.unet_patches``) and wrappers of the guided denoiser (PAG, epsilon scaling:
    # ``sgm.sampling.guidance_patches``).
    block_patches: tuple[Any, ...] = ()
    guidance_patches: tuple[Any, ...] = ()
    # DifferentialDiffusion's strength: a noise mask is applied per step, thresholded
    # (``sgm.sampling.differential_diffusion``); None = the plain soft blend
    differential_diffusion: float | None = None
    compute_dtype: str | None = None  # ModelComputeDtype: fp32 / fp16 / bf16 while sampling; None = the weights'

    @property
    def is_inpaint(self) -> bool:
        return getattr(self.unet, "in_channels", 4) == 9

    @property
    def is_pix2pix(self) -> bool:
        """InstructPix2Pix UNets take 8 input channels: the latent and the input image's latent
        (``sgm.sampling.pix2pix``)."""
        return getattr(self.unet, "in_channels", 4) == 8

    @property
    def needs_vector(self) -> bool:
        """SDXL-style UNets take a vector ``y`` (pooled text + size embeddings)."""
        return getattr(self.unet, "num_classes", None) == "sequential"


@dataclass(frozen=True, eq=False)
class ClipValue:
    """CLIP: a family's text conditioner (``encode_text(prompts, ...)``), recorded LoRA patches,
    the layer to stop at (``clip_skip``, None = the family's default) and the embeddings folder."""

    conditioner: Any
    family: str
    name: str
    loras: tuple[LoraPatch, ...] = ()
    clip_skip: int | None = None
    embeddings_dir: Path | None = None

    def towers(self) -> list["nn.Module"]:
        """The text towers in the family's order (SDXL: CLIP-L, then bigG)."""
        return list(getattr(self.conditioner, "modules", []) or [])


@dataclass(frozen=True, eq=False)
class VaeValue:
    """VAE: the autoencoder and the factor latents are scaled by for diffusion."""

    vae: "nn.Module"
    scale_factor: float
    name: str

    @property
    def downscale(self) -> int:
        return int(getattr(self.vae, "downscale", 8))


@dataclass(frozen=True, eq=False)
class LatentValue:
    """LATENT: ``samples`` (B, C, h, w) scaled for diffusion, CPU float32.

    noise_mask: optional (B or 1, h or H, w or W) in [0, 1], 1 = sample there (inpainting).
    masked_latent: optional (B, C, h, w) latent of the image with the masked region blanked,
        for 9-channel inpainting UNets.
    empty: True for EmptyLatent's zeros (the sampler may reshape them to the model's
        latent format: a model with other channels or downscale still works).
    batch_index: the seed offset of each item (SliceLatentBatch keeps a picked item's noise).
    """

    samples: "torch.Tensor"
    noise_mask: "torch.Tensor | None" = None
    masked_latent: "torch.Tensor | None" = None
    empty: bool = False
    width: int = 0  # image size the latent stands for (pixels); 0 = derive from samples
    height: int = 0
    batch_index: tuple[int, ...] | None = None

    @property
    def batch(self) -> int:
        return int(self.samples.shape[0])

    def __getitem__(self, name: str) -> Any:  # ComfyUI-style dict access: latent["samples"]
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None
