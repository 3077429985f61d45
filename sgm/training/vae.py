"""VAE training: L1 (+ MSE) reconstruction, a small KL term, an optional patch discriminator.

loss = |x - x_hat|_1 + mse_weight * |x - x_hat|^2 + kl_weight * KL / (3 H W)
       (L1 and MSE optionally edge-weighted: ``edge_weight``)
       [+ adversarial_weight * (-D(x_hat)) after ``adversarial_start`` steps]

The KL is divided by the number of image elements so that ``kl_weight`` reads like
ldm's (which sums both terms); 1e-6 keeps latents near unit scale without blurring.
The discriminator is the PatchGAN of pix2pix (Isola et al. 2017) with hinge losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sgm.nets.autoencoder import AutoencoderKL

if TYPE_CHECKING:
    from sgm.training.sampled_latents import SampledLatents


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a small ``AutoencoderKL`` (downsampling factor 2**(len(ch_mult)-1))."""

    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    z_channels: int = 4
    embed_dim: int = 4
    resolution: int = 64
    attn_resolutions: tuple[int, ...] = ()

    def build(self) -> AutoencoderKL:
        return AutoencoderKL(ch=self.ch, ch_mult=self.ch_mult, num_res_blocks=self.num_res_blocks,
                             z_channels=self.z_channels, embed_dim=self.embed_dim,
                             resolution=self.resolution, attn_resolutions=self.attn_resolutions)


@dataclass(frozen=True)
class VAELossConfig:
    mse_weight: float = 1.0
    kl_weight: float = 1e-6
    adversarial_weight: float = 0.0  # 0 disables the discriminator
    adversarial_start: int = 1000
    discriminator_lr: float = 1e-4
    # > 0: pixels near edges of the target count (1 + edge_weight) times in L1 and MSE. Small
    # objects are a few percent of an image: a uniform loss lets their outlines blur.
    edge_weight: float = 0.0


def edge_weights(images: torch.Tensor, edge_weight: float, threshold: float = 0.1) -> torch.Tensor:
    """(B, 1, H, W) per-pixel weights: 1 + edge_weight within one pixel of an edge of ``images``.

    An edge is where the summed absolute difference to the right or lower neighbour exceeds
    ``threshold`` (images in [-1, 1]); the mask is dilated by a 3 x 3 max pool.
    """
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().sum(1, keepdim=True)
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().sum(1, keepdim=True)
    edges = torch.zeros_like(images[:, :1])
    edges[:, :, :, 1:] = torch.maximum(edges[:, :, :, 1:], dx)
    edges[:, :, 1:, :] = torch.maximum(edges[:, :, 1:, :], dy)
    mask = F.max_pool2d((edges > threshold).float(), 3, stride=1, padding=1)
    return 1.0 + edge_weight * mask


class PatchDiscriminator(nn.Module):
    """A PatchGAN: one real/fake logit per overlapping patch, (B, 1, H/4 - 2, W/4 - 2)."""

    def __init__(self, channels: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels, channels * 2, 4, stride=2, padding=1), nn.GroupNorm(8, channels * 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels * 2, 1, 4, stride=1, padding=1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of two (B, 3, H, W) batches in [-1, 1], measured on [0, 1] pixels."""
    mse = ((reconstruction.float().clamp(-1, 1) - target.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


class VAETask:
    """Trains an ``AutoencoderKL`` (and optionally a discriminator) on image batches."""

    def __init__(self, vae: AutoencoderKL, loss_config: VAELossConfig = VAELossConfig(),
                 preview: torch.Tensor | None = None, decoder_only: bool = False,
                 sampled_latents: SampledLatents | None = None) -> None:
        if sampled_latents is not None and not decoder_only:
            raise ValueError("sampled latents need a frozen encoder (the diffusion model's latent space): "
                             "add --decoder-only")
        self.vae = vae
        # Part of each batch decodes latents re-sampled by a diffusion model (see
        # sgm.training.sampled_latents) instead of the encoder's own.
        self.sampled_latents = sampled_latents
        # decoder_only: the encoder (hence the latent space a UNet was trained on) stays
        # fixed while the decoder keeps improving reconstructions.
        self.decoder_only = decoder_only
        if decoder_only:
            vae.encoder.requires_grad_(False)
            vae.quant_conv.requires_grad_(False)
        self.loss_config = loss_config
        self.preview = preview  # (N, 3, H, W) images to reconstruct in sample grids
        self.discriminator: PatchDiscriminator | None = None
        self.discriminator_optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        if loss_config.adversarial_weight > 0:
            self.discriminator = PatchDiscriminator()
            self.discriminator_optimizer = torch.optim.AdamW(
                self.discriminator.parameters(), lr=loss_config.discriminator_lr, betas=(0.5, 0.9)
            )

    def modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"vae": self.vae}
        if self.discriminator is not None:
            modules["discriminator"] = self.discriminator
        return modules

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"vae.{name}", p) for name, p in self.vae.named_parameters() if p.requires_grad]

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]  # (B, 3, H, W) in [-1, 1]
        sampled = 0
        if self.sampled_latents is None:
            reconstruction, posterior = self.vae(images, generator)
        else:
            posterior = self.vae.encode_posterior(images)
            latents = posterior.sample(generator)
            sampled = max(1, round(self.sampled_latents.config.fraction * len(images)))
            resampled = self.sampled_latents(latents[:sampled].detach(), list(batch["caption"][:sampled]), generator)
            reconstruction = self.vae.decode(torch.cat([resampled.to(latents.dtype), latents[sampled:]]))
        reconstruction = reconstruction.float()
        error = reconstruction - images
        if self.loss_config.edge_weight > 0:
            weights = edge_weights(images.float(), self.loss_config.edge_weight)
            total = weights.sum() * images.shape[1]
            l1 = (weights * error.abs()).sum() / total
            mse = (weights * error.pow(2)).sum() / total
        else:
            l1, mse = error.abs().mean(), error.pow(2).mean()
        kl = posterior.kl().float().mean() / images[0].numel()
        loss = l1 + self.loss_config.mse_weight * mse + self.loss_config.kl_weight * kl
        metrics = {"l1": float(l1.detach()), "mse": float(mse.detach()), "kl": float(kl.detach()),
                   "psnr": float(psnr(reconstruction.detach(), images).mean())}
        if sampled:
            metrics["psnr_sampled"] = float(psnr(reconstruction[:sampled].detach(), images[:sampled]).mean())
        if self.discriminator is not None and self.step >= self.loss_config.adversarial_start:
            for p in self.discriminator.parameters():
                p.requires_grad_(False)
            adversarial = -self.discriminator(reconstruction).mean()
            for p in self.discriminator.parameters():
                p.requires_grad_(True)
            loss = loss + self.loss_config.adversarial_weight * adversarial
            metrics["g_adv"] = float(adversarial)
        self._last_reconstruction = reconstruction.detach()
        return loss, metrics

    def after_step(self, batch: dict[str, Any], generator: torch.Generator, step: int) -> dict[str, float]:
        self.step = step + 1
        if self.discriminator is None or step < self.loss_config.adversarial_start:
            return {}
        assert self.discriminator_optimizer is not None
        real, fake = batch["image"], self._last_reconstruction
        # Hinge loss (Lim & Ye 2017), as in ldm's LPIPSWithDiscriminator.
        d_loss = 0.5 * (F.relu(1.0 - self.discriminator(real)).mean() + F.relu(1.0 + self.discriminator(fake)).mean())
        d_loss.backward()
        self.discriminator_optimizer.step()
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        return {"d_loss": float(d_loss)}

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> torch.Tensor | None:
        if self.preview is None:
            return None
        reconstruction = self.vae.decode(self.vae.encode(self.preview)).float().clamp(-1, 1)
        # Originals and reconstructions interleaved: (2N, 3, H, W)
        return torch.stack([self.preview, reconstruction], dim=1).flatten(0, 1)

    def extra_state(self) -> dict[str, Any]:
        if self.discriminator_optimizer is None:
            return {"step": self.step}
        return {"step": self.step, "discriminator_optimizer": self.discriminator_optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        if self.discriminator_optimizer is not None:
            self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
