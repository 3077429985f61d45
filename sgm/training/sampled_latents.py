"""Latents as a diffusion model samples them, for fine-tuning the decoder that renders them.

A decoder trained only on the encoder's latents meets different latents at sampling time:
the UNet renders small details (a star's tips, a square's corners) a little off, and the
decoder, which has never seen such latents, draws them as blobs. ``SampledLatents``
re-creates a batch's latents the way sampling makes them, with the true image still known:
each clean latent is noised to a random level of the model's own sampling schedule (between
``min_sigma`` and ``max_sigma``: enough for the model to redraw the details, too little for it
to move the layout), then the model's sampler (Euler with classifier-free guidance on the
item's caption) runs from that level to zero, as img2img does. ``train vae --decoder-only
--sampled-latents MODEL`` then decodes those latents towards the true image, so the decoder
learns to turn the UNet's rendering into crisp shapes, while the encoder (the latent space
the UNet was trained on) stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SampledLatentsConfig:
    fraction: float = 0.5  # share of each batch whose latents are re-sampled
    steps: int = 20  # length of the sampling schedule whose tail is run (as at sampling time)
    scheduler: str = "sgm_uniform"
    min_sigma: float = 0.3
    max_sigma: float = 4.0
    cfg: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"sampled-latents fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 < self.min_sigma <= self.max_sigma:
            raise ValueError(f"need 0 < min_sigma <= max_sigma, got {self.min_sigma} and {self.max_sigma}")


class SampledLatents:
    """``(latents, captions, generator) -> latents`` re-sampled by a text-to-image model file.

    Latents are unscaled (the VAE's own space) in and out; the model's ``scale_factor`` is
    applied around the sampler. The model's VAE encoder must be the one being fine-tuned:
    its latent space is what the UNet learned.
    """

    def __init__(self, model_path: str, config: SampledLatentsConfig = SampledLatentsConfig()) -> None:
        from sgm.io.checkpoints import load_checkpoint
        from sgm.sampling.schedules import compute_sigmas

        checkpoint = load_checkpoint(model_path, dtype=torch.float32)
        if checkpoint.unet is None or checkpoint.conditioner is None:
            raise ValueError(f"{model_path} has no UNet or text encoder; --sampled-latents needs a "
                             "text-to-image model file such as models/checkpoints/tiny-shapes.safetensors")
        self.config = config
        self.checkpoint = checkpoint
        self.unet = checkpoint.unet.eval().requires_grad_(False)
        self.sampling = checkpoint.model_sampling()
        self.scale_factor = float(checkpoint.scale_factor)
        self.sigmas = compute_sigmas(config.scheduler, self.sampling, config.steps)
        self.starts = [i for i, sigma in enumerate(self.sigmas[:-1].tolist())
                       if config.min_sigma <= sigma <= config.max_sigma]
        if not self.starts:
            raise ValueError(
                f"no sigma of the {config.steps}-step {config.scheduler} schedule lies in "
                f"[{config.min_sigma}, {config.max_sigma}] ({[round(s, 3) for s in self.sigmas.tolist()]}); "
                "widen the range or use more steps"
            )

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The model file's VAE encoder weights (to check they match the VAE being tuned)."""
        vae = self.checkpoint.vae
        if vae is None:
            return {}
        names = ("encoder.", "quant_conv.")
        return {k: v for k, v in vae.state_dict().items() if k.startswith(names)}

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, captions: list[str], generator: torch.Generator) -> torch.Tensor:
        from sgm.sampling.samplers import sample_euler
        from sgm.training.diffusion import guided_denoiser

        if len(captions) != latents.shape[0]:
            raise ValueError(f"{latents.shape[0]} latents for {len(captions)} captions")
        device = latents.device
        if next(self.unet.parameters()).device != device:  # follow the training device
            self.unet.to(device)
            if isinstance(self.checkpoint.conditioner, torch.nn.Module):
                self.checkpoint.conditioner.to(device)
        start = self.starts[int(torch.randint(len(self.starts), (1,), generator=generator))]
        sigmas = self.sigmas[start:]
        clean = latents.float() * self.scale_factor
        # Noise from the (CPU) training generator, so a run is reproducible on any device.
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype).to(device)
        x = self.sampling.noise_scaling(sigmas[:1], noise, clean, max_denoise=False)
        context = self.checkpoint.encode_text(list(captions))[0].to(device)
        uncond = self.checkpoint.encode_text([""] * len(captions))[0].to(device)
        denoiser = guided_denoiser(self.unet, self.sampling, context, uncond, self.config.cfg)
        sampled = sample_euler(denoiser, x, sigmas)
        return (sampled.float() / self.scale_factor).to(latents.dtype)
