"""Samplers: one function per algorithm, the k-diffusion contract.

    sample_NAME(model, x, sigmas, *, callback=None, generator=None, **options) -> x0

``model(x, sigma) -> denoised`` is a denoiser D in the VE parameterisation of Karras et al.
2022 (``x = x0 + sigma * n``; ``sigma`` is a (B,) tensor). ``x`` is the starting latent,
already noised to ``sigmas[0]``; ``sigmas`` (N + 1,) is descending and usually ends in 0.
The probability-flow ODE is dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022,
eq. 3 with s = 1, sigma(t) = t); most samplers below integrate it, the ancestral / SDE ones
also re-inject noise.

Noise comes only from ``generator``: a CPU ``torch.Generator``, or one generator per batch
item (``Sequence[torch.Generator]``) so that item i of a batch is bit-identical to a
single-image run with the same generator (see ``sgm.sampling.sample`` for the seed rule). Noise
is always drawn on the CPU in float32 and then moved, so a seed gives the same image on
CPU and GPU.

Progress is reported through ``callback(StepInfo)``, once per step, never printed.
Further samplers (dpm_fast, dpm_adaptive, ipndm, deis, uni_pc) live in
``sgm.sampling.samplers_extra``, the rest of ComfyUI's list (CFG++, RES, ER-SDE, SEEDS,
SA-Solver, ...) in ``sgm.sampling.samplers_comfy``; ``SAMPLERS`` below lists every one by name,
in the order of ComfyUI's KSampler (``KSAMPLER_NAMES``).
"""

from __future__ import annotations

import math

import torch

from sgm.sampling.names import GPU_ALIASES, KSAMPLER_NAMES
from sgm.sampling.sampler_common import (  # noqa: F401  (re-exported: the samplers' public helpers)
    BrownianNoise,
    Denoiser,
    NoiseGenerator,
    Sampler,
    StepCallback,
    StepInfo,
    ancestral_step,
    as_floats,
    churn,
    lagrange_integrals,
    randn_like,
    report,
    sigma_batch,
    to_d,
)


# ---------------------------------------------------------------------- first order


@torch.no_grad()
def sample_euler(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE, with optional churn.

    Karras et al. 2022, Algorithm 2 without the second-order correction; ``s_churn`` > 0
    raises sigma to sigma_hat = sigma (1 + gamma) with fresh noise before each step.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        gamma = churn(s[i], n, s_churn, s_tmin, s_tmax)
        sigma_hat = s[i] * (gamma + 1)
        if gamma > 0:
            x = x + randn_like(x, generator) * s_noise * math.sqrt(sigma_hat**2 - s[i] ** 2)
        denoised = model(x, sigma_batch(x, sigma_hat))
        report(callback, i, n, s[i], x, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (s[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral Euler: an Euler step to sigma_down, then sigma_up of fresh noise.

    Equivalent to DDPM ancestral sampling (Ho et al. 2020) at eta = 1 (see
    :func:`ancestral_step`); popularised by k-diffusion (Crowson).
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        x = x + to_d(x, s[i], denoised) * (sigma_down - s[i])
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_ddim(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 0.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12).

    In VE variables DDIM's update x_prev = sqrt(a') x0 + sqrt(1 - a' - s_t^2) eps + s_t z,
    divided by sqrt(a'), is x0 + sigma_down eps + sigma_up z with sigma_up =
    eta * sigma' sqrt(sigma^2 - sigma'^2) / sigma: eta = 0 is Euler's method on the ODE
    and eta = 1 the DDPM posterior. Use the ``ddim_uniform`` schedule for DDIM's timesteps.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        eps = (x - denoised) / s[i]
        x = denoised + eps * sigma_down
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_ddpm(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, eq. 6-7) between arbitrary noise levels.

    The posterior q(x_{t'} | x_t, x0) in VE variables has mean x0 + (sigma'^2 / sigma^2)
    (x - x0) and standard deviation sigma' sqrt(sigma^2 - sigma'^2) / sigma (derived from
    eq. 7 with alpha_bar = 1 / (1 + sigma^2)).
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        ratio = s[i + 1] ** 2 / s[i] ** 2
        x = denoised + (x - denoised) * ratio
        if s[i + 1] > 0:
            std = s[i + 1] * math.sqrt(max(s[i] ** 2 - s[i + 1] ** 2, 0.0)) / s[i]
            x = x + randn_like(x, generator) * s_noise * std
    return x


@torch.no_grad()
def sample_lcm(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
) -> torch.Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023, Algorithm 1).

    Jump to the consistency model's x0 estimate, then re-noise it to the next sigma.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        x = denoised
        if s[i + 1] > 0:
            x = x + randn_like(x, generator) * s[i + 1]
    return x


# --------------------------------------------------------------------- second order


@torch.no_grad()
def sample_heun(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 2); Euler on the last step to 0."""
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        gamma = churn(s[i], n, s_churn, s_tmin, s_tmax)
        sigma_hat = s[i] * (gamma + 1)
        if gamma > 0:
            x = x + randn_like(x, generator) * s_noise * math.sqrt(sigma_hat**2 - s[i] ** 2)
        denoised = model(x, sigma_batch(x, sigma_hat))
        report(callback, i, n, s[i], x, denoised)
        d = to_d(x, sigma_hat, denoised)
        dt = s[i + 1] - sigma_hat
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, s[i + 1], model(x_2, sigma_batch(x, s[i + 1])))
            x = x + (d + d_2) * (dt / 2)
    return x


@torch.no_grad()
def sample_heunpp2(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun++ ("heunpp2"): Heun's method looking up to two sigmas ahead (community variant, 2023).

    Each step evaluates the slope at sigma_i and at Euler predictions for sigma_{i+1} and
    sigma_{i+2}, and mixes them with weights proportional to those sigmas (relative to
    sigma_0): early (high-noise) steps lean on the look-ahead slopes, late ones on the
    current slope. It is a heuristic, first order in general; it falls back to a Heun-like
    2-point mix one step before the end and to Euler on the last step.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    s_end = s[-1]
    for i in range(n):
        gamma = churn(s[i], n, s_churn, s_tmin, s_tmax)
        sigma_hat = s[i] * (gamma + 1)
        if gamma > 0:
            x = x + randn_like(x, generator) * s_noise * math.sqrt(sigma_hat**2 - s[i] ** 2)
        denoised = model(x, sigma_batch(x, sigma_hat))
        report(callback, i, n, s[i], x, denoised)
        d = to_d(x, sigma_hat, denoised)
        dt = s[i + 1] - sigma_hat
        if s[i + 1] == s_end:
            x = x + d * dt
        elif s[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, s[i + 1], model(x_2, sigma_batch(x, s[i + 1])))
            w_2 = s[i + 1] / (2 * s[0])
            x = x + (d * (1 - w_2) + d_2 * w_2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, s[i + 1], model(x_2, sigma_batch(x, s[i + 1])))
            x_3 = x_2 + d_2 * (s[i + 2] - s[i + 1])
            d_3 = to_d(x_3, s[i + 2], model(x_3, sigma_batch(x, s[i + 2])))
            w_2, w_3 = s[i + 1] / (3 * s[0]), s[i + 2] / (3 * s[0])
            x = x + (d * (1 - w_2 - w_3) + d_2 * w_2 + d_3 * w_3) * dt
    return x


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver-2 in sigma (Lu et al. 2022, Algorithm 1 with r = 1/2, as in Karras et al. 2022).

    A midpoint method: the slope is taken at the log-midpoint of sigma and sigma_next.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        gamma = churn(s[i], n, s_churn, s_tmin, s_tmax)
        sigma_hat = s[i] * (gamma + 1)
        if gamma > 0:
            x = x + randn_like(x, generator) * s_noise * math.sqrt(sigma_hat**2 - s[i] ** 2)
        denoised = model(x, sigma_batch(x, sigma_hat))
        report(callback, i, n, s[i], x, denoised)
        d = to_d(x, sigma_hat, denoised)
        if s[i + 1] == 0:
            x = x + d * (s[i + 1] - sigma_hat)
        else:
            sigma_mid = math.exp(0.5 * (math.log(sigma_hat) + math.log(s[i + 1])))
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_batch(x, sigma_mid)))
            x = x + d_2 * (s[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral DPM-Solver-2 (Lu et al. 2022, "DPM-Solver", r = 1/2; ancestral form as in
    k-diffusion): a DPM-2 step to sigma_down, then sigma_up of fresh noise."""
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        d = to_d(x, s[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - s[i])
        else:
            sigma_mid = math.exp(0.5 * (math.log(s[i]) + math.log(sigma_down)))
            x_2 = x + d * (sigma_mid - s[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_batch(x, sigma_mid)))
            x = x + d_2 * (sigma_down - s[i])
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_lms(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth) in sigma with variable step sizes.

    x_{i+1} = x_i + sum_j c_j d_{i-j}, c_j = integral over [sigma_i, sigma_{i+1}] of the
    Lagrange basis through the last ``order`` sigmas (Hairer, Norsett & Wanner, sec. III.1;
    as used for diffusion by Karras / k-diffusion).
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    ds: list[torch.Tensor] = []  # most recent first
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        ds = [to_d(x, s[i], denoised)] + ds[: order - 1]
        nodes = [s[i - j] for j in range(len(ds))]
        coeffs = lagrange_integrals(nodes, s[i], s[i + 1])
        x = x + sum(c * d for c, d in zip(coeffs, ds))
    return x


# ---------------------------------------------------------------- DPM-Solver++ family


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022b, "DPM-Solver++", Algorithm 1, r = 1/2).

    Works in lambda = -log sigma; data-prediction form with alpha = 1 in VE variables.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        if sigma_down == 0:
            x = x + to_d(x, s[i], denoised) * (sigma_down - s[i])
        else:
            h = math.log(s[i]) - math.log(sigma_down)
            sigma_s = s[i] * math.exp(-h / 2)
            x_2 = (sigma_s / s[i]) * x - math.expm1(-h / 2) * denoised
            denoised_2 = model(x_2, sigma_batch(x, sigma_s))
            x = (sigma_down / s[i]) * x - math.expm1(-h) * denoised_2
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5,
) -> torch.Tensor:
    """DPM-Solver++ stochastic 2-stage step (Lu et al. 2022b, sec. 5, SDE variant; k-diffusion).

    Noise comes from one Brownian path seeded by ``generator`` (:class:`BrownianNoise`), so
    more steps refine the same sample instead of drawing a different one.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    brownian = BrownianNoise.for_sigmas(x, s, generator)
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        if s[i + 1] == 0:
            x = x + to_d(x, s[i], denoised) * (s[i + 1] - s[i])
            continue
        t, t_next = -math.log(s[i]), -math.log(s[i + 1])
        h = t_next - t
        sigma_s = math.exp(-(t + h * r))
        # Stage 1: ancestral DPM-Solver++(1) step to the intermediate sigma_s.
        sd, su = ancestral_step(s[i], sigma_s, eta)
        x_2 = (sd / s[i]) * x - math.expm1(t + math.log(sd)) * denoised
        if su > 0:
            x_2 = x_2 + brownian(s[i], sigma_s) * s_noise * su
        denoised_2 = model(x_2, sigma_batch(x, sigma_s))
        # Stage 2: step to sigma_next with the extrapolated data estimate.
        sd, su = ancestral_step(s[i], s[i + 1], eta)
        fac = 1 / (2 * r)
        denoised_d = denoised * (1 - fac) + denoised_2 * fac
        x = (sd / s[i]) * x - math.expm1(t + math.log(sd)) * denoised_d
        if su > 0:
            x = x + brownian(s[i], s[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): 2nd-order multistep, data prediction.

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i - (e^{-h} - 1) D_i, D_i = (1 + 1/2r) x0_i - (1/2r) x0_{i-1},
    r = h_{i-1} / h_i, h = lambda_{i+1} - lambda_i, lambda = -log sigma. First order on the
    first step and on the final step to sigma = 0.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    old_denoised: torch.Tensor | None = None
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = (math.log(s[i - 1]) - math.log(s[i])) / h
                denoised_d = denoised * (1 + 1 / (2 * r)) - old_denoised * (1 / (2 * r))
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, sec. 5; eta-interpolated SDE as in k-diffusion).

    The exact solution of the linear part of the SDE over [lambda_i, lambda_{i+1}] scales
    x by (sigma'/sigma) e^{-eta h} and adds sigma' sqrt(1 - e^{-2 eta h}) fresh noise;
    ``solver_type`` ("midpoint" | "heun") picks the 2nd-order correction term.
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    s = as_floats(sigmas)
    n = len(s) - 1
    brownian = BrownianNoise.for_sigmas(x, s, generator) if eta else None
    old_denoised: torch.Tensor | None = None
    h_last = 0.0
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            eta_h = eta * h
            phi = -math.expm1(-h - eta_h)  # 1 - e^{-(1 + eta) h}
            x = (s[i + 1] / s[i] * math.exp(-eta_h)) * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((phi / (-h - eta_h) + 1) * (1 / r)) * (denoised - old_denoised)
                else:
                    x = x + (0.5 * phi * (1 / r)) * (denoised - old_denoised)
            if eta:
                std = s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
                x = x + brownian(s[i], s[i + 1]) * std
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE (Lu et al. 2022b, 3rd-order multistep; SDE form as in k-diffusion).

    Finite differences of the last three data estimates in lambda give the first and second
    derivatives; phi_2, phi_3 are the exponential-integrator weights (Hochbruck &
    Ostermann 2010).
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    brownian = BrownianNoise.for_sigmas(x, s, generator) if eta else None
    denoised_1: torch.Tensor | None = None
    denoised_2: torch.Tensor | None = None
    h_1: float | None = None
    h_2: float | None = None
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        if s[i + 1] == 0:
            x = denoised
            continue
        h = math.log(s[i]) - math.log(s[i + 1])
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if h_2 is not None and denoised_1 is not None and denoised_2 is not None:
            r0, r1 = h_1 / h, h_2 / h  # type: ignore[operator]
            d1_0 = (denoised - denoised_1) / r0
            d1_1 = (denoised_1 - denoised_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif h_1 is not None and denoised_1 is not None:
            x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
        if eta:
            std = s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
            x = x + brownian(s[i], s[i + 1]) * std
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE with the Heun-type 2nd-order term (``solver_type="heun"`` of
    :func:`sample_dpmpp_2m_sde`): the slope term weighted by phi_2 (the exact integral of a
    linear x0) instead of the midpoint rule's phi_1 / 2."""
    return sample_dpmpp_2m_sde(model, x, sigmas, callback=callback, generator=generator,
                               eta=eta, s_noise=s_noise, solver_type="heun")


CORE_SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
}




def _all_samplers() -> dict[str, Sampler]:
    from sgm.sampling.samplers_comfy import COMFY_SAMPLERS
    from sgm.sampling.samplers_extra import EXTRA_SAMPLERS

    table = {**CORE_SAMPLERS, **EXTRA_SAMPLERS, **COMFY_SAMPLERS}
    table.update({alias: table[base] for alias, base in GPU_ALIASES.items()})
    ordered = {name: table[name] for name in KSAMPLER_NAMES}
    return {**ordered, **{name: fn for name, fn in table.items() if name not in ordered}}


SAMPLERS: dict[str, Sampler] = _all_samplers()
"""Every sampler by the name users pick (ComfyUI / A1111 names), in ComfyUI's order."""
