"""Schedules with explicit parameters: the scheduler nodes of custom sampling.

``sgm.sampling.schedules`` builds a schedule from a model's noise range by name (KSampler's
list). These take their range and shape parameters directly (ComfyUI's KarrasScheduler,
ExponentialScheduler, ... nodes), or come from published tables (Align Your Steps). Each
returns a float32 tensor of descending sigmas; every one but :func:`laplace` ends in 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from sgm.sampling.denoisers import ModelSampling
from sgm.sampling.schedules import _append_zero, _check_steps, beta, exponential, karras

AysModel = Literal["SD1", "SDXL", "SVD"]

# Sabour, Fidler & Kreis 2024, "Align Your Steps: Optimizing Sampling Schedules in Diffusion Models":
# the optimised 10-step schedules NVIDIA publishes for SD 1.5, SDXL and Stable Video Diffusion
# (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html), sigma_max first, 11 values.
AYS_SIGMAS: dict[str, tuple[float, ...]] = {
    "SD1": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "SDXL": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "SVD": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}
LAPLACE_EPS = 1e-5  # keeps log(1 - 2|x - 1/2|) finite at both ends of the ramp


@dataclass(frozen=True)
class SigmaRange:
    """A noise range without a model: what ``schedules.karras`` / ``exponential`` read of one."""

    sigma_min: float
    sigma_max: float


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0 for this schedule (it works in log sigma), got {value}")


def karras_range(steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5, between explicit sigma_max and sigma_min; (steps + 1,)."""
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    return karras(SigmaRange(sigma_min, sigma_max), steps, rho=rho)  # type: ignore[arg-type]


def exponential_range(steps: int, sigma_max: float, sigma_min: float) -> torch.Tensor:
    """Uniform in log sigma from sigma_max to sigma_min; (steps + 1,)."""
    _check_positive(sigma_max=sigma_max, sigma_min=sigma_min)
    return exponential(SigmaRange(sigma_min, sigma_max), steps)  # type: ignore[arg-type]


def polyexponential(steps: int, sigma_max: float, sigma_min: float, rho: float = 1.0) -> torch.Tensor:
    """Polynomial in log sigma (k-diffusion's polyexponential): with r_i = (1 - i/(N-1))^rho,
    log sigma_i = log sigma_min + r_i (log sigma_max - log sigma_min); rho = 1 is ``exponential``,
    rho > 1 spends more steps at low noise."""
    _check_steps(steps)
    _check_positive(sigma_max=sigma_max, sigma_min=sigma_min)
    ramp = torch.linspace(1, 0, steps, dtype=torch.float64) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return _append_zero(torch.exp(log_min + ramp * (log_max - log_min)))


def vp(steps: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """The continuous VP SDE's noise levels (Song et al. 2021; Karras et al. 2022, Table 1):
    sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) at t uniform from 1 down to eps_s."""
    _check_steps(steps)
    t = torch.linspace(1, eps_s, steps, dtype=torch.float64)
    return _append_zero(torch.sqrt(torch.expm1(beta_d * t**2 / 2 + beta_min * t)))


def laplace(steps: int, sigma_max: float, sigma_min: float, mu: float = 0.0, beta_: float = 0.5) -> torch.Tensor:
    """Hang et al. 2024, "Improved Noise Schedule for Diffusion Training": log sigma at the quantiles
    of a Laplace(mu, beta) distribution, which puts most steps around sigma = e^mu.

    log sigma_i = mu - beta sign(1/2 - x_i) log(1 - 2|1/2 - x_i| + 1e-5), x_i = i / (N - 1), clamped to
    [sigma_min, sigma_max]. Returns ``steps`` sigmas and **no final 0**, as ComfyUI's LaplaceScheduler
    does: a sampler run on it stops at the last sigma (sigma_min for the defaults), leaving that
    much noise.
    """
    _check_steps(steps)
    x = torch.linspace(0, 1, steps, dtype=torch.float64)
    log_sigma = mu - beta_ * torch.sign(0.5 - x) * torch.log(1 - 2 * (0.5 - x).abs() + LAPLACE_EPS)
    return log_sigma.exp().clamp(min=sigma_min, max=sigma_max).float()


def beta_sampling(model_sampling: ModelSampling, steps: int, alpha: float = 0.6,
                  beta_: float = 0.6) -> torch.Tensor:
    """``schedules.beta`` with its Beta(alpha, beta) shape as parameters (Lee et al. 2024)."""
    _check_positive(alpha=alpha, beta=beta_)
    return beta(model_sampling, steps, alpha=alpha, beta_=beta_)


def loglinear_interp(sigmas: torch.Tensor | tuple[float, ...], count: int) -> torch.Tensor:
    """``count`` values through a descending schedule, linear in log sigma between its points
    (which sit at equal spacing from the first to the last); float64."""
    table = torch.as_tensor(sigmas, dtype=torch.float64).log()
    if count == 1:
        return table[:1].exp()
    pos = torch.linspace(0, 1, count, dtype=torch.float64) * (len(table) - 1)
    lo = pos.floor().long().clamp(max=len(table) - 2)
    frac = pos - lo
    return (table[lo] * (1 - frac) + table[lo + 1] * frac).exp()


def align_your_steps(model_type: AysModel, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """Align Your Steps (Sabour et al. 2024) for ``steps`` steps: the published 10-step schedule,
    log-linearly interpolated for other step counts; the last sigma is replaced by 0.

    ``denoise`` < 1 keeps the last round(steps x denoise) steps of that same schedule (as ComfyUI's
    node does, unlike ``compute_sigmas``, which lengthens the schedule); denoise 0 gives no sigmas.
    """
    if model_type not in AYS_SIGMAS:
        raise ValueError(f"model_type must be one of {sorted(AYS_SIGMAS)}, got {model_type!r}")
    _check_steps(steps)
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be in [0, 1], got {denoise}")
    if denoise <= 0.0:
        return torch.zeros(0)
    kept = steps if denoise >= 1.0 else round(steps * denoise)
    table = AYS_SIGMAS[model_type]
    sigmas = (torch.tensor(table, dtype=torch.float64) if len(table) == steps + 1
              else loglinear_interp(table, steps + 1))
    out = sigmas[-(kept + 1):].float()
    out[-1] = 0.0
    return out


GITS_STEPS = 20  # the longest published GITS schedule; longer ones are interpolated from it


def gits(coeff: float, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"): the schedule
    its authors found for SD 1.5 with coefficient ``coeff`` (0.80 .. 1.50 in steps of 0.05) and ``steps``
    steps; over 20 steps, the 20-step one log-linearly interpolated. The last sigma is replaced by 0;
    ``denoise`` < 1 keeps the last round(steps x denoise) steps, as :func:`align_your_steps` does.
    """
    from sgm.sampling.gits_table import GITS_SCHEDULES, GITS_SIGMAS

    key = round(coeff, 2)
    if key not in GITS_SCHEDULES:
        raise ValueError(f"coeff must be one of {sorted(GITS_SCHEDULES)} (steps of 0.05), got {coeff}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2 for GITS, got {steps}")
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be in [0, 1], got {denoise}")
    if denoise <= 0.0:
        return torch.zeros(0)
    kept = steps if denoise >= 1.0 else round(steps * denoise)
    rows = GITS_SCHEDULES[key]
    row = rows[min(steps, GITS_STEPS) - 2]
    sigmas = torch.tensor([GITS_SIGMAS[i] for i in row], dtype=torch.float64)
    if steps > GITS_STEPS:
        sigmas = loglinear_interp(sigmas, steps + 1)
    out = sigmas[-(kept + 1):].float()
    out[-1] = 0.0
    return out
