"""Diffusion training on VAE latents: eps or v objective, min-SNR or EDM weighting.

Noise levels are Stable Diffusion's discrete "scaled linear" schedule
(``sgm.sampling.denoisers.DiscreteModelSampling``), the one every sampler in ``sgm`` assumes, so
a trained model samples through the same code as SD checkpoints. For timestep ``t``
with alpha_bar_t and noise ``n``:

    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) n      (Ho et al. 2020, eq. 4)
    eps target: n;   v target: sqrt(alpha_bar_t) n - sqrt(1 - alpha_bar_t) x0
                                                               (Salimans & Ho 2022, sec. 4)

Weighting (per sample, on the MSE):
- ``min-snr``: min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v
  (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting", eq. 8), with
  SNR clipped from below at ``min_snr_floor`` (0: the paper's weighting);
- ``edm``: sigma drawn log-normally (P_mean, P_std; Karras et al. 2022, Table 1) and
  snapped to the nearest training timestep, with the loss weighted so that it equals EDM's
  lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the x0 error;
- ``uniform``: plain MSE with uniform timesteps.

``noise_offset`` adds a per-channel constant to the noise (Guttenberg 2023, "offset
noise"): SD's schedule leaves sqrt(alpha_bar_T) ~ 0.07 of the signal at the last step,
enough for a flat background colour to leak into the "pure noise" the model sees in
training but never at sampling time; the offset makes that leak unreliable so colour is
read from the caption. Captions are replaced by "" with probability ``caption_dropout``
so classifier-free guidance (Ho & Salimans 2022) has an unconditional model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from sgm.nets.autoencoder import AutoencoderKL, DiagonalGaussian
from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.text.tiny_text import TinyTextEncoder, WordTokenizer
from sgm.nets.unet import UNetModel

Weighting = Literal["min-snr", "edm", "uniform"]


@dataclass(frozen=True)
class DiffusionConfig:
    prediction: Literal["eps", "v"] = "eps"
    weighting: Weighting = "min-snr"
    min_snr_gamma: float = 5.0
    # Lower clip of min-SNR's x0 weight: min-SNR gives the pure-noise end (SNR -> 0) no weight,
    # which is harmless for SD's schedule but leaves a zero-terminal-SNR model's first step
    # (where layout is decided) untrained; a floor keeps it learned.
    min_snr_floor: float = 0.0
    edm_p_mean: float = -1.2
    edm_p_std: float = 1.2
    sigma_data: float = 1.0  # scaled latents have about unit variance
    noise_offset: float = 0.1
    caption_dropout: float = 0.1
    scale_factor: float = 1.0  # latents are multiplied by this before diffusion
    # Rescale the schedule so its last timestep is pure noise (Lin et al. 2024, Algorithm 1).
    # SD's schedule keeps sqrt(alpha_bar_T) ~ 0.068 of the signal: in a small latent that is
    # enough for a shape's position to leak into the training "noise", so a model learns to
    # read position from it and, at sampling time, puts the shape wherever the seed's noise
    # happens to have a blob. Needs v-prediction.
    zero_terminal_snr: bool = False
    # Timestep bias: this share of each batch draws its timesteps uniformly from
    # [timestep_bias_range[0], timestep_bias_range[1]) instead (a fine-tune that spends its
    # steps on low noise levels, where small details are drawn). It changes how often a
    # level is trained, not the per-sample loss weight.
    timestep_bias_fraction: float = 0.0
    timestep_bias_range: tuple[int, int] = (0, 1000)

    def __post_init__(self) -> None:
        low, high = self.timestep_bias_range
        if not 0.0 <= self.timestep_bias_fraction <= 1.0:
            raise ValueError(f"timestep_bias_fraction must be in [0, 1], got {self.timestep_bias_fraction}")
        if not 0 <= low < high:
            raise ValueError(f"timestep_bias_range must be LOW,HIGH with 0 <= LOW < HIGH, got {low},{high}")


def loss_weight(config: DiffusionConfig, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Per-sample weight (B,) on the MSE in the objective's own space (eps or v)."""
    snr = alpha_bar / (1.0 - alpha_bar)  # (B,)
    if config.weighting == "uniform":
        return torch.ones_like(snr)
    if config.weighting == "min-snr":
        clipped = snr.clamp(min=config.min_snr_floor, max=config.min_snr_gamma)
        return clipped / snr if config.prediction == "eps" else clipped / (snr + 1.0)
    if config.weighting == "edm":
        sigma2 = 1.0 / snr  # VE sigma^2 = (1 - alpha_bar) / alpha_bar
        lam = (sigma2 + config.sigma_data**2) / (sigma2 * config.sigma_data**2)
        # x0 error = sigma * eps error (eps), = sigma / sqrt(1 + sigma^2) * v error (v).
        return lam * sigma2 if config.prediction == "eps" else lam * sigma2 / (1.0 + sigma2)
    raise ValueError(f"unknown weighting {config.weighting!r}; use 'min-snr', 'edm' or 'uniform'")


def sample_timesteps(config: DiffusionConfig, sampling: DiscreteModelSampling, batch: int,
                     generator: torch.Generator) -> torch.Tensor:
    """(B,) int64 training timesteps: uniform, or EDM's log-normal sigma snapped to the table;
    then ``timestep_bias_fraction`` of them redrawn uniformly from ``timestep_bias_range``."""
    if config.weighting == "edm":
        log_sigma = config.edm_p_mean + config.edm_p_std * torch.randn(batch, generator=generator)
        t = sampling.timestep(log_sigma.exp()).long()
    else:
        t = torch.randint(0, sampling.num_timesteps, (batch,), generator=generator)
    if config.timestep_bias_fraction > 0:
        low, high = config.timestep_bias_range
        if high > sampling.num_timesteps:
            raise ValueError(f"timestep bias range {low},{high} exceeds the schedule's "
                             f"{sampling.num_timesteps} timesteps; use HIGH <= {sampling.num_timesteps}")
        biased = torch.rand(batch, generator=generator) < config.timestep_bias_fraction
        t = torch.where(biased, torch.randint(low, high, (batch,), generator=generator), t)
    return t


@dataclass(frozen=True)
class NoisedBatch:
    """A training batch at its noise levels: timesteps t (B,), alpha_bar_t (B,), the noised latents
    x_t and the target the network must predict (eps, or v = a eps - s x0)."""

    t: torch.Tensor
    alpha_bar: torch.Tensor
    x_t: torch.Tensor
    target: torch.Tensor


def noised_batch(config: DiffusionConfig, sampling: DiscreteModelSampling, alphas_cumprod: torch.Tensor,
                 x0: torch.Tensor, generator: torch.Generator) -> NoisedBatch:
    """x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps (Ho et al. 2020, eq. 4), with the
    config's timestep sampling and noise offset."""
    b = x0.shape[0]
    t = sample_timesteps(config, sampling, b, generator)  # (B,)
    noise = torch.randn(x0.shape, generator=generator)
    if config.noise_offset:
        noise = noise + config.noise_offset * torch.randn((b, x0.shape[1], 1, 1), generator=generator)
    alpha_bar = alphas_cumprod[t]  # (B,)
    a, s = alpha_bar.sqrt()[:, None, None, None], (1.0 - alpha_bar).sqrt()[:, None, None, None]
    target = noise if config.prediction == "eps" else a * noise - s * x0
    return NoisedBatch(t, alpha_bar, a * x0 + s * noise, target)


class DiffusionTask:
    """Trains a UNet (and the tiny text encoder) to denoise scaled VAE latents."""

    def __init__(self, unet: UNetModel, vae: AutoencoderKL, text_encoder: TinyTextEncoder | None,
                 config: DiffusionConfig, *, preview_prompts: list[str] | None = None, train_text: bool = True,
                 latent_size: int = 16,
                 trainable: Callable[[], list[tuple[str, nn.Parameter]]] | None = None) -> None:
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.config = config
        self.sampling = DiscreteModelSampling(prediction=config.prediction,
                                              zero_terminal_snr=config.zero_terminal_snr)
        self.alphas_cumprod = self.sampling.alphas_cumprod.float()  # (T,)
        # Without a trainable tiny text encoder (LoRA on any checkpoint) a subclass encodes.
        self.tokenizer = (WordTokenizer(text_encoder.config.vocab, text_encoder.config.max_length)
                          if text_encoder is not None else None)
        self.preview_prompts = preview_prompts or []
        self.train_text = train_text
        self.latent_size = latent_size  # preview latents are (B, C, latent_size, latent_size)
        self._trainable = trainable
        vae.requires_grad_(False).eval()
        if not train_text and text_encoder is not None:
            text_encoder.requires_grad_(False)

    def modules(self) -> dict[str, nn.Module]:
        assert self.text_encoder is not None
        return {"unet": self.unet, "text": self.text_encoder}

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        if self._trainable is not None:
            return self._trainable()
        named = [(f"unet.{n}", p) for n, p in self.unet.named_parameters()]
        if self.train_text and self.text_encoder is not None:
            named += [(f"text.{n}", p) for n, p in self.text_encoder.named_parameters()]
        return named

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """captions -> context (B, T, C) with gradients into the text encoder."""
        assert self.text_encoder is not None and self.tokenizer is not None
        return self.text_encoder(self.tokenizer.encode(captions))

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            if "latent_mean" in batch:  # a LatentCacheDataset: the posterior is stored, sample it
                posterior = DiagonalGaussian(batch["latent_mean"].float(), batch["latent_logvar"].float())
            else:
                posterior = self.vae.encode_posterior(batch["image"])  # images (B, 3, H, W) in [-1, 1]
            x0 = posterior.sample(generator).float() * self.config.scale_factor  # (B, C, h, w)
        b = x0.shape[0]
        drop = torch.rand(b, generator=generator) < self.config.caption_dropout
        captions = ["" if dropped else caption for caption, dropped in zip(batch["caption"], drop.tolist())]
        n = noised_batch(self.config, self.sampling, self.alphas_cumprod, x0, generator)
        output = self.unet(n.x_t, n.t, context=self.encode_captions(captions)).float()
        per_sample = (output - n.target).pow(2).flatten(1).mean(1)  # (B,)
        loss = (loss_weight(self.config, n.alpha_bar) * per_sample).mean()
        return loss, {"mse": float(per_sample.detach().mean())}

    def after_step(self, batch: dict[str, Any], generator: torch.Generator, step: int) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> torch.Tensor | None:
        if not self.preview_prompts:
            return None
        return generate(self.unet, self.vae, self.encode_captions, self.sampling, self.preview_prompts,
                        scale_factor=self.config.scale_factor, generator=generator,
                        latent_size=self.latent_size)

    def unet_head_channels(self) -> int:
        """Channels per attention head (needed to rebuild the UNet: shapes do not tell)."""
        block = next(m for m in self.unet.modules() if m.__class__.__name__ == "CrossAttention")
        return block.to_q.out_features // block.heads

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def guided_denoiser(unet: UNetModel, sampling: DiscreteModelSampling, context: torch.Tensor,
                    uncond: torch.Tensor, cfg: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """denoiser(x, sigma) -> the classifier-free-guided denoised latent (one UNet call at 2B)."""
    both = torch.cat([uncond, context])

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        scalings = sampling.scalings(sigma, x.ndim)
        x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
        output = unet(x_in * torch.cat([scalings.c_in, scalings.c_in]), sampling.timestep(sigma_in), context=both)
        denoised = sampling.denoised_from_output(x_in, sigma_in, output.float())
        uncond_d, cond_d = denoised.chunk(2)
        return uncond_d + cfg * (cond_d - uncond_d)

    return denoiser


@torch.no_grad()
def generate(unet: UNetModel, vae: AutoencoderKL, encode: Callable[[list[str]], torch.Tensor],
             sampling: DiscreteModelSampling, prompts: list[str], *, scale_factor: float,
             generator: torch.Generator, latent_size: int, steps: int = 20, cfg: float = 4.0,
             scheduler: str = "sgm_uniform", sampler: str = "euler") -> torch.Tensor:
    """Sampling with classifier-free guidance: prompts -> images (B, 3, H, W) in [-1, 1].

    A self-contained preview for training runs (the engine's graph does the same with any sampler).
    """
    from sgm.sampling.samplers import SAMPLERS
    from sgm.sampling.schedules import compute_sigmas

    denoiser = guided_denoiser(unet, sampling, encode(prompts), encode([""] * len(prompts)), cfg)
    sigmas = compute_sigmas(scheduler, sampling, steps)
    channels = unet.in_channels
    noise = torch.randn((len(prompts), channels, latent_size, latent_size), generator=generator)
    x = sampling.noise_scaling(sigmas[:1], noise, torch.zeros_like(noise), max_denoise=True)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    latents = SAMPLERS[sampler](denoiser, x, sigmas, generator=generator)
    return vae.decode(latents / scale_factor).float().clamp(-1, 1)
