"""The Python API: ``AutoencoderKL`` and ``DiffusionModel``, a thin facade over sampling.

    from sgm.models import AutoencoderKL, DiffusionModel

    diffusion = DiffusionModel(unet, prediction="eps", scale_factor=0.18215)
    latent = torch.zeros(1, 4, 64, 64)                      # txt2img: an empty VAE latent
    image = vae.decode(diffusion.sample(latent, condition=cond, num_steps=50, guidance_scale=7.5))
    image = vae.decode(diffusion.sample(latent, condition=cond, sampler="ddim", num_steps=30, eta=0.0))

``DiffusionModel.sample`` takes and returns latents in the VAE's space (what
``AutoencoderKL.encode`` returns and ``decode`` takes); the family's ``scale_factor`` is
applied inside. It runs exactly the code the nodes run: ``compute_sigmas`` ->
``GuidedDenoiser`` -> ``sgm.sampling.sample.sample``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from sgm.nets.autoencoder import AutoencoderKL
from sgm.text.conditioning import Condition
from sgm.sampling.denoisers import DiscreteModelSampling, ModelSampling, Prediction
from sgm.sampling.guiders import GuidedDenoiser
from sgm.sampling.samplers import StepCallback
from sgm.sampling.sample import CancelCheck, sample
from sgm.sampling.schedules import compute_sigmas

__all__ = ["AutoencoderKL", "DiffusionModel"]

SD_SCALE_FACTOR = 0.18215


def _as_list(conditions: Condition | Sequence[Condition] | None) -> list[Condition]:
    if conditions is None:
        return []
    return [conditions] if isinstance(conditions, Condition) else list(conditions)


class DiffusionModel:
    """A UNet with its denoiser (model sampling): ``sample(latent, ...) -> latent``.

    unet: ``UNetModel`` (or any module with the ``unet(x, timesteps, context, y)`` contract).
    model_sampling: noise levels and scalings; default: SD's 1000 discrete sigmas with
    ``prediction`` ("eps" | "v"). scale_factor: VAE latent -> diffusion latent multiplier
    (SD 1.x/2.x 0.18215, SDXL 0.13025).
    """

    def __init__(
        self,
        unet: nn.Module,
        model_sampling: ModelSampling | None = None,
        *,
        prediction: Prediction = "eps",
        scale_factor: float = SD_SCALE_FACTOR,
        family: str = "sd1",
    ) -> None:
        self.unet = unet
        self.model_sampling = model_sampling or DiscreteModelSampling(prediction=prediction)
        self.scale_factor = float(scale_factor)
        self.family = family

    @classmethod
    def from_checkpoint(cls, checkpoint: Any, *, prediction: Prediction | None = None) -> "DiffusionModel":
        """From ``sgm.io.checkpoints.load_checkpoint(path)``; ``prediction`` overrides the file's."""
        if checkpoint.unet is None:
            raise ValueError(f"{checkpoint.path} has no UNet weights; load a full checkpoint")
        return cls(
            checkpoint.unet,
            checkpoint.model_sampling(prediction),
            scale_factor=checkpoint.scale_factor,
            family=checkpoint.family,
        )

    def _device(self) -> torch.device:
        param = next(self.unet.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _conditions(
        self, condition: Condition | Sequence[Condition] | None,
        negative: Condition | Sequence[Condition] | None, guidance_scale: float,
    ) -> tuple[list[Condition], list[Condition] | None]:
        positive = _as_list(condition)
        context_dim = getattr(self.unet, "context_dim", None)
        if not positive and context_dim is not None:
            raise ValueError(
                f"this UNet is text-conditioned (context_dim={context_dim}); pass "
                "condition=Condition(context=...) from checkpoint.encode_text([prompt])"
            )
        if guidance_scale == 1.0 or not positive:
            return positive, None
        if negative is not None:
            return positive, _as_list(negative)
        # No negative given: guide against the zero embedding (what sgm does for an empty
        # negative prompt on SDXL); pass the encoded "" for SD 1.x-style guidance.
        return positive, [c.with_(context=torch.zeros_like(c.context), area=None, mask=None,
                                  strength=1.0) for c in positive[:1]]

    @torch.no_grad()
    def sample(
        self,
        latent: torch.Tensor,
        condition: Condition | Sequence[Condition] | None = None,
        negative: Condition | Sequence[Condition] | None = None,
        *,
        num_steps: int = 50,
        guidance_scale: float = 7.5,
        sampler: str = "euler",
        scheduler: str | None = None,
        seed: int = 0,
        denoise: float = 1.0,
        guidance_rescale: float = 0.0,
        mask: torch.Tensor | None = None,
        inpaint_concat: torch.Tensor | None = None,
        callback: StepCallback | None = None,
        cancel: CancelCheck | None = None,
        **sampler_options: Any,
    ) -> torch.Tensor:
        """Denoise ``latent`` (B, 4, h, w), VAE space -> (B, 4, h, w) VAE-space latent.

        txt2img: ``latent`` = zeros, ``denoise`` = 1. img2img: ``latent`` =
        ``vae.encode(images)`` and ``denoise`` < 1. Inpainting: ``mask`` (1 = repaint).
        ``scheduler`` defaults to "ddim_uniform" for ``sampler="ddim"`` (DDIM's own
        timesteps) and "normal" otherwise. Extra keywords (``eta``, ``s_noise``, ...) go to
        the sampler. Unconditional UNets take ``condition=None`` (guidance is then off).
        """
        if scheduler is None:
            scheduler = "ddim_uniform" if sampler == "ddim" else "normal"
        positive, negatives = self._conditions(condition, negative, guidance_scale)
        device = self._device()
        guided = GuidedDenoiser(
            self.unet, self.model_sampling, positive, negatives,
            cfg=guidance_scale if negatives else 1.0, guidance_rescale=guidance_rescale,
            inpaint_concat=inpaint_concat,
        )
        sigmas = compute_sigmas(scheduler, self.model_sampling, num_steps, denoise).to(device)
        if sigmas.numel() < 2:  # denoise 0: nothing to do (and no scale round-trip error)
            return latent.clone()
        x = latent.to(device=device, dtype=torch.float32) * self.scale_factor
        out = sample(
            guided, sampler, sigmas, x, seed, noise_mask=mask, sampler_options=sampler_options,
            callback=callback, cancel=cancel,
        )
        return (out / self.scale_factor).to(latent.dtype)
