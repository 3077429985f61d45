"""Discrete model samplings beyond eps / v: x0-prediction, img-to-img (Lotus) and LCM (distilled) models.

Both are SD's discrete VP noise levels (``DiscreteModelSampling``, whose ``prediction``
stays "eps" for what depends on the noise process: VP start noise, the timestep <-> sigma
map); they differ in how the network output becomes the denoised estimate, told by
``parameterization``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sgm.sampling.denoisers import DiscreteModelSampling, Scalings, _view, eps_scalings

LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0
LCM_ORIGINAL_STEPS = 50  # LCM distils the 1000 DDPM timesteps to 50 (Luo et al. 2023, sec. 4.2)


@dataclass(frozen=True)
class X0DiscreteModelSampling(DiscreteModelSampling):
    """The network predicts the clean sample: D = F (c_skip 0, c_out 1), input scaled as for eps."""

    parameterization: str = field(default="x0", init=False)

    def scalings(self, sigma: torch.Tensor, ndim: int) -> Scalings:
        _, _, c_in = eps_scalings(sigma)
        return Scalings(_view(torch.zeros_like(sigma), ndim), _view(torch.ones_like(sigma), ndim), _view(c_in, ndim))


@dataclass(frozen=True)
class LCMDiscreteModelSampling(DiscreteModelSampling):
    """Latent Consistency Models (Luo et al. 2023, eq. 9): the consistency function
    f(x, t) = c_skip(t) x + c_out(t) x0_eps(x, t), with x0_eps = x - sigma eps the eps model's
    estimate and, at timestep t, c_skip = s_d^2 / ((10 t)^2 + s_d^2), c_out = 10 t / sqrt((10 t)^2 + s_d^2)
    (s_d = 0.5). The model knows only ``LCM_ORIGINAL_STEPS`` timesteps, 19, 39, ..., 999; their
    sigmas are this sampling's table.
    """

    parameterization: str = field(default="lcm", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        skip = self.num_timesteps // LCM_ORIGINAL_STEPS
        keep = torch.arange(LCM_ORIGINAL_STEPS) * skip + (skip - 1)  # (50,) ascending timesteps
        object.__setattr__(self, "_sigmas", self._sigmas[keep].clone())
        object.__setattr__(self, "_log_sigmas", self._log_sigmas[keep].clone())

    @property
    def skip_steps(self) -> int:
        return self.num_timesteps // LCM_ORIGINAL_STEPS

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """sigma -> the nearest of the model's timesteps (19, 39, ..., 999)."""
        log_sigma = sigma.float().clamp_min(1e-10).log()
        log_sigmas = self._log_sigmas_for(log_sigma.device)
        index = (log_sigma.reshape(-1, 1) - log_sigmas.reshape(1, -1)).abs().argmin(dim=1).reshape(sigma.shape)
        return (index * self.skip_steps + (self.skip_steps - 1)).float().to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """timestep (may be fractional) -> sigma, log-linear between the model's timesteps."""
        t = ((timestep.float() - (self.skip_steps - 1)) / self.skip_steps).clamp(0, LCM_ORIGINAL_STEPS - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t - low.float()
        log_sigmas = self._log_sigmas_for(t.device)
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def scalings(self, sigma: torch.Tensor, ndim: int) -> Scalings:
        scaled_t = self.timestep(sigma).to(sigma) * LCM_TIMESTEP_SCALING
        c_skip_lcm = LCM_SIGMA_DATA**2 / (scaled_t**2 + LCM_SIGMA_DATA**2)
        c_out_lcm = scaled_t / (scaled_t**2 + LCM_SIGMA_DATA**2).sqrt()
        _, _, c_in = eps_scalings(sigma)
        # f = c_out_lcm (x - sigma F) + c_skip_lcm x = (c_skip_lcm + c_out_lcm) x - c_out_lcm sigma F
        return Scalings(_view(c_skip_lcm + c_out_lcm, ndim), _view(-c_out_lcm * sigma, ndim), _view(c_in, ndim))


@dataclass(frozen=True)
class ImgToImgDiscreteModelSampling(X0DiscreteModelSampling):
    """SD's discrete noise levels for a network that maps its *unscaled* input to the clean
    sample: D = F(x, t(sigma)), i.e. c_skip 0, c_out 1, c_in 1 (ComfyUI's "img_to_img")."""

    parameterization: str = field(default="img_to_img", init=False)

    def scalings(self, sigma: torch.Tensor, ndim: int) -> Scalings:
        zeros, ones = torch.zeros_like(sigma), torch.ones_like(sigma)
        return Scalings(_view(zeros, ndim), _view(ones, ndim), _view(ones, ndim))


Sampling = str  # ComfyUI's ModelSamplingDiscrete choices
SAMPLINGS = ("eps", "v_prediction", "lcm", "x0", "img_to_img")


def discrete_model_sampling(sampling: Sampling, zsnr: bool = False, *, num_timesteps: int = 1000,
                            beta_start: float = 0.00085, beta_end: float = 0.012) -> DiscreteModelSampling:
    """The discrete model sampling for a parameterization (eps, v_prediction, lcm, x0 or img_to_img), with
    zero-terminal-SNR rescaling (Lin et al. 2024) where ``zsnr`` (v_prediction only)."""
    common = dict(num_timesteps=num_timesteps, beta_start=beta_start, beta_end=beta_end)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if zsnr and sampling != "v_prediction":
        raise ValueError(f"zsnr (zero terminal SNR) needs v_prediction: at SNR 0 a {sampling} model's estimate "
                         "is undefined (Lin et al. 2024, sec. 3.2); use sampling v_prediction or zsnr false")
    if sampling == "x0":
        return X0DiscreteModelSampling(prediction="eps", **common)
    if sampling == "img_to_img":
        return ImgToImgDiscreteModelSampling(prediction="eps", **common)
    if sampling == "lcm":
        return LCMDiscreteModelSampling(prediction="eps", **common)
    prediction = "v" if sampling == "v_prediction" else "eps"
    return DiscreteModelSampling(prediction=prediction, zero_terminal_snr=zsnr, **common)
