"""Denoiser scalings and model sampling (noise levels <-> model timesteps).

Everything in this library works in the variance-exploding ("Karras") parameterisation of
Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(EDM): a noisy latent is ``x = x0 + sigma * n``. A network trained with a different
parameterisation is wrapped by its *scalings* (EDM eq. 7 / Table 1):

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

``ModelSampling`` objects hold the noise levels a model was trained on and turn a network's
raw output into the denoised estimate ``D``. They are immutable values (frozen dataclasses):
the same object is shared by every node that consumes a MODEL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

Prediction = Literal["eps", "v", "edm"]
PREDICTIONS: tuple[Prediction, ...] = ("eps", "v", "edm")


@dataclass(frozen=True)
class Scalings:
    """EDM Table 1 preconditioning coefficients, each broadcastable against x (B, C, H, W)."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor


def _view(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with ``ndim`` dimensions, so it broadcasts over a latent."""
    return sigma.reshape(sigma.shape + (1,) * (ndim - sigma.ndim))


def eps_scalings(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """epsilon-prediction (Ho et al. 2020) as a VE denoiser: D = x - sigma * eps."""
    c_skip = torch.ones_like(sigma)
    c_out = -sigma
    c_in = 1.0 / (sigma**2 + 1.0).sqrt()
    return c_skip, c_out, c_in


def v_scalings(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """v-prediction (Salimans & Ho 2022, "Progressive Distillation", sec. 4) as a VE denoiser."""
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_out = -sigma / (sigma**2 + 1.0).sqrt()
    c_in = 1.0 / (sigma**2 + 1.0).sqrt()
    return c_skip, c_out, c_in


def edm_scalings(
    sigma: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM preconditioning (Karras et al. 2022, Table 1, "ours" column)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1.0 / (sigma**2 + sigma_data**2).sqrt()
    return c_skip, c_out, c_in


def scaled_linear_betas(
    num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Stable Diffusion's "scaled linear" betas: linear in sqrt(beta). Returns (T,) float64."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last timestep has SNR 0.

    Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    Algorithm 1. Only meaningful for v-prediction models (eps at SNR 0 is undefined).
    Returns a new (T,) tensor; the input is not modified.
    """
    sqrt_ab = alphas_cumprod.sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alphas_cumprod = sqrt_ab**2
    # sigma = sqrt((1 - a) / a) is infinite at a == 0; keep it finite (a very large
    # sigma_max) so samplers and the karras schedule stay well defined. The value gives
    # sigma_max ~ 4.5e3, far beyond any signal in a unit-variance latent.
    return torch.cat([alphas_cumprod[:-1], alphas_cumprod.new_tensor([4.8973451890853435e-08])])


class ModelSampling(Protocol):
    """What samplers, schedules and guiders need to know about a model's noise levels."""

    prediction: Prediction

    @property
    def sigmas(self) -> torch.Tensor: ...  # (T,) ascending training sigmas (float32)

    @property
    def sigma_min(self) -> float: ...

    @property
    def sigma_max(self) -> float: ...

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor: ...

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor: ...

    def scalings(self, sigma: torch.Tensor, ndim: int) -> Scalings: ...

    def denoised_from_output(
        self, x: torch.Tensor, sigma: torch.Tensor, output: torch.Tensor
    ) -> torch.Tensor: ...

    def output_from_denoised(
        self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor
    ) -> torch.Tensor: ...

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class _SamplingMixin:
    """Shared formulas; subclasses provide ``prediction``, ``sigma_data``, ``scalings``."""

    def scalings(self, sigma: torch.Tensor, ndim: int) -> Scalings:
        """Preconditioning for ``sigma`` (B,), shaped to broadcast over a ``ndim`` latent."""
        if self.prediction == "eps":  # type: ignore[attr-defined]
            c = eps_scalings(sigma)
        elif self.prediction == "v":  # type: ignore[attr-defined]
            c = v_scalings(sigma)
        elif self.prediction == "edm":  # type: ignore[attr-defined]
            c = edm_scalings(sigma, self.sigma_data)  # type: ignore[attr-defined]
        else:  # pragma: no cover - guarded in __post_init__
            raise ValueError(f"unknown prediction {self.prediction!r}")  # type: ignore[attr-defined]
        return Scalings(*(_view(t, ndim) for t in c))

    def denoised_from_output(
        self, x: torch.Tensor, sigma: torch.Tensor, output: torch.Tensor
    ) -> torch.Tensor:
        """D = c_skip x + c_out F: the network's raw output -> denoised estimate (B, C, H, W)."""
        s = self.scalings(sigma, x.ndim)
        return s.c_skip * x + s.c_out * output

    def output_from_denoised(
        self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor
    ) -> torch.Tensor:
        """Inverse of :meth:`denoised_from_output` (the network output that gives ``denoised``).

        Used where an operation is defined in the network's own output space, e.g. guidance
        rescale (Lin et al. 2024, eq. 15-16) on eps or v.
        """
        s = self.scalings(sigma, x.ndim)
        return (denoised - s.c_skip * x) / s.c_out

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool
    ) -> torch.Tensor:
        """The starting point x = latent + sigma * noise for a schedule starting at ``sigma``.

        For a VP-trained model at full denoise the "pure noise" sample is a unit-variance
        VP latent, i.e. ``sqrt(1 + sigma^2) * noise`` in VE units; this matches diffusers'
        ``init_noise_sigma`` and keeps full-strength txt2img exactly on the training marginal.
        """
        sigma = _view(sigma.reshape(-1), noise.ndim).to(noise)
        if max_denoise and self.prediction in ("eps", "v"):  # type: ignore[attr-defined]
            return latent + noise * (sigma**2 + 1.0).sqrt()
        return latent + noise * sigma


@dataclass(frozen=True)
class DiscreteModelSampling(_SamplingMixin):
    """A model trained on a finite set of DDPM timesteps (Stable Diffusion 1.x / 2.x / XL).

    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (Karras et al. 2022, Table 1, "VP").
    A continuous sigma is mapped to a *fractional* timestep by interpolating log-sigma
    between the two neighbouring training sigmas; ``snap=True`` (the default) rounds it to
    the nearest training timestep, which is what the network was trained on.
    """

    prediction: Prediction = "eps"
    num_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    zero_terminal_snr: bool = False
    snap: bool = True
    sigma_data: float = 1.0
    _sigmas: torch.Tensor = field(init=False, repr=False, compare=False)
    _log_sigmas: torch.Tensor = field(init=False, repr=False, compare=False)
    # log_sigmas copied to each device once (a per-step host-to-device copy would stall a GPU).
    _log_sigmas_on: dict[torch.device, torch.Tensor] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}; "
                "take it from the checkpoint (Checkpoint.prediction) or pass it explicitly"
            )
        if self.zero_terminal_snr and self.prediction == "eps":
            raise ValueError(
                "zero_terminal_snr=True needs a v-prediction model: at SNR 0 an "
                "eps-prediction carries no information about x0 (Lin et al. 2024, sec. 3.2); "
                "use prediction='v' or zero_terminal_snr=False"
            )
        betas = scaled_linear_betas(self.num_timesteps, self.beta_start, self.beta_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # (T,) float64
        if self.zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()  # (T,) ascending
        object.__setattr__(self, "_sigmas", sigmas.float())
        object.__setattr__(self, "_log_sigmas", sigmas.log().float())

    @property
    def sigmas(self) -> torch.Tensor:
        """(T,) ascending training sigmas, float32 (SD: 0.0292 .. 14.6146)."""
        return self._sigmas

    @property
    def sigma_min(self) -> float:
        return float(self._sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self._sigmas[-1])

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """(T,) alpha_bar_t = 1 / (1 + sigma_t^2)."""
        return 1.0 / (1.0 + self._sigmas.double() ** 2)

    def _log_sigmas_for(self, device: torch.device) -> torch.Tensor:
        if device not in self._log_sigmas_on:
            self._log_sigmas_on[device] = self._log_sigmas.to(device)
        return self._log_sigmas_on[device]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """sigma (any shape) -> timestep (same shape, float): nearest training step if snap."""
        log_sigma = sigma.float().clamp_min(1e-10).log()
        log_sigmas = self._log_sigmas_for(log_sigma.device)
        if self.snap:
            dists = (log_sigma.reshape(-1, 1) - log_sigmas.reshape(1, -1)).abs()
            return dists.argmin(dim=1).reshape(sigma.shape).float().to(sigma.device)
        # Fractional timestep: linear interpolation in log-sigma between neighbours.
        idx = torch.searchsorted(log_sigmas, log_sigma.reshape(-1).contiguous())
        low = (idx - 1).clamp(0, len(log_sigmas) - 2)
        high = low + 1
        w = (log_sigma.reshape(-1) - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
        t = (low.float() + w.clamp(0, 1)).reshape(sigma.shape)
        return t.to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """timestep (any shape, may be fractional) -> sigma, log-linear between neighbours."""
        t = timestep.float().clamp(0, self.num_timesteps - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t - low.float()
        log_sigmas = self._log_sigmas_for(t.device)
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


@dataclass(frozen=True)
class ContinuousModelSampling(_SamplingMixin):
    """A model trained on a continuum of sigmas (EDM, Karras et al. 2022; e.g. CosXL, SD3-like).

    The network's noise input is EDM's c_noise = log(sigma) / 4 (Table 1). ``sigmas`` is a
    log-spaced (T,) table so table-based schedules (simple, beta, ...) still apply.
    """

    prediction: Prediction = "edm"
    sigma_min_: float = 0.002
    sigma_max_: float = 80.0
    sigma_data: float = 0.5
    num_table: int = 1000
    _sigmas: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not 0 < self.sigma_min_ < self.sigma_max_:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min_} and {self.sigma_max_}"
            )
        table = torch.linspace(
            math.log(self.sigma_min_), math.log(self.sigma_max_), self.num_table
        ).exp()
        object.__setattr__(self, "_sigmas", table)

    @property
    def sigmas(self) -> torch.Tensor:
        return self._sigmas

    @property
    def sigma_min(self) -> float:
        return self.sigma_min_

    @property
    def sigma_max(self) -> float:
        return self.sigma_max_

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.float().clamp_min(1e-10).log() * 0.25

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep.float() * 4.0).exp()


def model_sampling_for(
    prediction: Prediction = "eps", *, zero_terminal_snr: bool = False
) -> DiscreteModelSampling:
    """The discrete SD model sampling for a checkpoint's prediction type (overridable)."""
    return DiscreteModelSampling(prediction=prediction, zero_terminal_snr=zero_terminal_snr)
