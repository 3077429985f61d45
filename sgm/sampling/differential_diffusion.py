"""Differential Diffusion (Levin & Fried 2023, "Differential Diffusion: Giving Each Pixel Its
Strength"): inpainting with a soft mask read as a per-pixel *amount of change*.

Plain inpainting blends by the mask value itself. Here, at each step the mask is thresholded: a
pixel is regenerated from the step at which sampling has progressed past ``1 - mask`` of the way
(in the model's timesteps), and kept as the input's forward process before that. So a pixel with
mask 0.3 is only changed over the last 30 % of the timesteps, one with mask 1 from the start.

    threshold(sigma) = (t(sigma) - t_end) / (t_start - t_end)        (1 at the first step, -> 0)
    m(sigma)         = 1[mask >= threshold(sigma)]

``strength`` < 1 mixes the thresholded mask with the soft one: s * m + (1 - s) * mask.
"""

from __future__ import annotations

from typing import Any

import torch

from sgm.sampling.sample import _latent_mask, make_noise, sample
from sgm.sampling.sampler_common import guided_and_uncond


def differential_mask(mask: torch.Tensor, sigma: float, sigmas: torch.Tensor, model_sampling: Any,
                      strength: float = 1.0) -> torch.Tensor:
    """The mask (any shape, values in [0, 1], 1 = repaint) in effect at ``sigma`` of the schedule
    ``sigmas``: thresholded at how far sampling is, in timesteps (see the module docstring)."""
    sigma_end = max(float(sigmas[-1]), float(model_sampling.sigma_min))
    t_start, t_end, t_now = (float(model_sampling.timestep(torch.tensor([s], dtype=torch.float32))[0])
                             for s in (float(sigmas[0]), sigma_end, sigma))
    threshold = (t_now - t_end) / (t_start - t_end) if t_start != t_end else 0.0
    binary = (mask >= threshold).to(mask.dtype)
    if strength >= 1.0:
        return binary
    return strength * binary + (1 - strength) * mask


class DifferentialDiffusionDenoiser:
    """``model`` with the input latent kept where the step's differential mask is 0: its forward
    process (latent + noise * sigma) goes in, the latent itself comes out there."""

    def __init__(self, model: Any, latent: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor,
                 sigmas: torch.Tensor, strength: float = 1.0) -> None:
        self.model, self.latent, self.noise, self.mask = model, latent, noise, mask  # mask (B or 1, 1, h, w)
        self.sigmas, self.strength = sigmas, float(strength)
        self.model_sampling = model.model_sampling

    def _mask_at(self, sigma: torch.Tensor) -> torch.Tensor:
        return differential_mask(self.mask, float(sigma.reshape(-1)[0]), self.sigmas, self.model_sampling,
                                 self.strength)

    def _input(self, x: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x).view(-1, *([1] * (x.ndim - 1)))
        return x * mask + (self.latent + self.noise * s) * (1 - mask)

    def _output(self, denoised: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return denoised * mask + self.latent * (1 - mask)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        mask = self._mask_at(sigma)
        return self._output(self.model(self._input(x, sigma, mask), sigma), mask)

    def denoise_with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self._mask_at(sigma)
        guided, uncond = guided_and_uncond(self.model, self._input(x, sigma, mask), sigma)
        return self._output(guided, mask), self._output(uncond, mask)


def sample_differential(model: Any, sampler: Any, sigmas: torch.Tensor, latent: torch.Tensor, seed: int,
                        noise_mask: torch.Tensor, strength: float = 1.0, **options: Any) -> torch.Tensor:
    """``sgm.sampling.sample.sample`` with ``noise_mask`` applied the Differential Diffusion way
    (same seed rule, options and callbacks); pixels whose mask is 0 keep the input latent exactly."""
    if sigmas.numel() < 2:
        return latent.clone()
    noise = options.pop("noise", None)
    if noise is None:  # the initial noise ``sample`` would draw: the wrapper re-noises the kept region with it
        noise = make_noise(tuple(latent.shape), seed, device=latent.device, dtype=latent.dtype,
                           item_seeds=options.get("item_seeds"))
    mask = _latent_mask(noise_mask, latent)
    wrapped = DifferentialDiffusionDenoiser(model, latent, noise, mask, sigmas, strength)
    out = sample(wrapped, sampler, sigmas, latent, seed, noise=noise, **options)
    keep = (mask > 0).to(out.dtype)
    return out * keep + latent * (1 - keep)
