"""Noise schedules: the descending sigmas a sampler walks, by the names users know.

Every schedule returns a float32 tensor of ``steps + 1`` sigmas: ``steps`` strictly
positive, descending noise levels followed by a final 0 (the clean sample). The sampler
makes one step per adjacent pair. ``compute_sigmas`` adds img2img strength: ``denoise < 1``
builds the schedule for ``steps / denoise`` steps and keeps only its last ``steps + 1``
sigmas, so an encoded image is noised to an intermediate level and only the tail of the
trajectory is run.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sgm.sampling.names import SCHEDULER_NAMES
from sgm.sampling.denoisers import ModelSampling

Schedule = Callable[..., torch.Tensor]


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.float(), sigmas.new_zeros(1, dtype=torch.float32)])


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def karras(
    model_sampling: ModelSampling, steps: int, *, rho: float = 7.0,
    sigma_min: float | None = None, sigma_max: float | None = None,
) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho."""
    _check_steps(steps)
    s_min = model_sampling.sigma_min if sigma_min is None else sigma_min
    s_max = model_sampling.sigma_max if sigma_max is None else sigma_max
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    min_inv, max_inv = s_min ** (1 / rho), s_max ** (1 / rho)
    return _append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(model_sampling: ModelSampling, steps: int) -> torch.Tensor:
    """Uniform in log sigma from sigma_max to sigma_min (k-diffusion's exponential schedule)."""
    _check_steps(steps)
    log_s = torch.linspace(
        math.log(model_sampling.sigma_max), math.log(model_sampling.sigma_min), steps,
        dtype=torch.float64,
    )
    return _append_zero(log_s.exp())


def normal(model_sampling: ModelSampling, steps: int) -> torch.Tensor:
    """Uniform in model timestep from t_max to t_min inclusive ("linspace" spacing)."""
    _check_steps(steps)
    t_max = model_sampling.timestep(torch.tensor(model_sampling.sigma_max))
    t_min = model_sampling.timestep(torch.tensor(model_sampling.sigma_min))
    timesteps = torch.linspace(float(t_max), float(t_min), steps)
    return _append_zero(model_sampling.sigma(timesteps))


def sgm_uniform(model_sampling: ModelSampling, steps: int) -> torch.Tensor:
    """Uniform in timestep from t_max, excluding t_min ("trailing"-like, as in sgm's sampler)."""
    _check_steps(steps)
    t_max = model_sampling.timestep(torch.tensor(model_sampling.sigma_max))
    t_min = model_sampling.timestep(torch.tensor(model_sampling.sigma_min))
    timesteps = torch.linspace(float(t_max), float(t_min), steps + 1)[:-1]
    return _append_zero(model_sampling.sigma(timesteps))


def simple(model_sampling: ModelSampling, steps: int) -> torch.Tensor:
    """Evenly strided training sigmas counted from the noisiest one (sigma_max first)."""
    _check_steps(steps)
    table = model_sampling.sigmas
    stride = len(table) / steps
    picks = [float(table[-(1 + int(i * stride))]) for i in range(steps)]
    return _append_zero(torch.tensor(picks))


def ddim_uniform(model_sampling: ModelSampling, steps: int) -> torch.Tensor:
    """DDIM's uniform timesteps (Song et al. 2021, sec. 4.2): 1, 1 + c, 1 + 2c, ... with c = T // N.

    Equal to diffusers' DDIMScheduler with ``timestep_spacing="leading"``, ``steps_offset=1``.
    """
    _check_steps(steps)
    table = model_sampling.sigmas
    c = max(len(table) // steps, 1)
    idx = torch.arange(1, len(table), c)[:steps]
    return _append_zero(table[idx].flip(0))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by Lentz's continued fraction.

    (Press et al., Numerical Recipes, 3rd ed., sec. 6.4.) Local because scipy is not a
    dependency; accurate to ~1e-12 for the a, b ~ 0.5 the beta schedule uses.
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below the mean
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return math.exp(log_front) * f / a


def beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse CDF of Beta(a, b) by bisection on :func:`_betainc` (60 halvings: < 1e-17)."""
    if a == b and q == 0.5:
        return 0.5  # the median of a symmetric Beta, exactly (bisection lands a rounding below it)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def beta(
    model_sampling: ModelSampling, steps: int, *, alpha: float = 0.6, beta_: float = 0.6
) -> torch.Tensor:
    """Lee et al. 2024, "Beta Sampling is All You Need": timesteps at Beta(0.6, 0.6) quantiles.

    Spends more steps near both ends of the trajectory. Timesteps are rounded to training
    steps and duplicates dropped, so very large ``steps`` can yield fewer sigmas.
    """
    _check_steps(steps)
    table = model_sampling.sigmas
    last = len(table) - 1
    picks: list[int] = []
    for i in range(steps):
        q = 1.0 - i / steps
        t = round(beta_ppf(q, alpha, beta_) * last)
        if not picks or t != picks[-1]:
            picks.append(t)
    return _append_zero(table[torch.tensor(picks)])


def linear_quadratic(
    model_sampling: ModelSampling, steps: int, *, threshold_noise: float = 0.025,
    linear_steps: int | None = None,
) -> torch.Tensor:
    """Genmo's Mochi schedule: time goes linearly to ``threshold_noise``, then quadratically to 1.

    On a time axis tau in [0, 1] (0 = pure noise), the first ``linear_steps`` (default half)
    steps advance linearly by threshold_noise / linear_steps; the rest follow the quadratic
    that continues with the same value and slope and reaches tau = 1 at the last step.
    sigma = (1 - tau) * sigma_max.
    """
    _check_steps(steps)
    if steps == 1:
        return torch.tensor([model_sampling.sigma_max, 0.0])
    n_lin = steps // 2 if linear_steps is None else linear_steps
    if not 0 < n_lin < steps:
        raise ValueError(f"linear_steps must be in 1..{steps - 1}, got {n_lin}")
    slope = threshold_noise / n_lin
    # tau(i) = threshold + slope (i - n_lin) + k (i - n_lin)^2 with tau(steps) = 1.
    span = steps - n_lin
    k = (1.0 - threshold_noise - slope * span) / span**2
    taus = [
        i * slope if i <= n_lin else threshold_noise + slope * (i - n_lin) + k * (i - n_lin) ** 2
        for i in range(steps + 1)
    ]
    sigmas = torch.tensor([(1.0 - tau) * model_sampling.sigma_max for tau in taus])
    sigmas[-1] = 0.0
    return sigmas.float()


def kl_optimal(model_sampling: ModelSampling, steps: int) -> torch.Tensor:
    """Sabour et al. 2024, "Align Your Steps", eq. (KL-optimal): uniform in arctan(sigma).

    sigma_i = tan((1 - i/(N-1)) atan(sigma_max) + i/(N-1) atan(sigma_min)).
    """
    _check_steps(steps)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    a_max, a_min = math.atan(model_sampling.sigma_max), math.atan(model_sampling.sigma_min)
    return _append_zero(torch.tan((1 - ramp) * a_max + ramp * a_min))


_TABLE: dict[str, Schedule] = {
    "normal": normal,
    "karras": karras,
    "exponential": exponential,
    "sgm_uniform": sgm_uniform,
    "simple": simple,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}
SCHEDULERS: dict[str, Schedule] = {name: _TABLE[name] for name in SCHEDULER_NAMES}
"""Every schedule by name, in ComfyUI's KSampler order (``sgm.sampling.names``)."""


def compute_sigmas(
    name: str, model_sampling: ModelSampling, steps: int, denoise: float = 1.0
) -> torch.Tensor:
    """Sigmas (n + 1,) for schedule ``name``; ``denoise`` < 1 keeps the schedule's tail.

    ``denoise == 0`` returns an empty tensor: nothing to sample, the input latent is kept.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be in [0, 1], got {denoise}")
    _check_steps(steps)
    if denoise <= 0.0:
        return torch.zeros(0)
    total = steps if denoise >= 1.0 else int(steps / denoise)
    sigmas = SCHEDULERS[name](model_sampling, total)
    return sigmas[-(steps + 1):].clone()
