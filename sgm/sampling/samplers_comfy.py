"""The rest of ComfyUI's KSampler list: CFG++, RES, gradient estimation, ER-SDE, SEEDS, SA-Solver.

Same contract as ``sgm.sampling.samplers``: ``sample_NAME(model, x, sigmas, *, callback,
generator, **options)``; ``model(x, sigma (B,)) -> denoised``; VE variables x = x0 + sigma n.
Exponential integrators use lambda = -log sigma (the half log-SNR with alpha = 1) and
h = lambda_next - lambda; their data-prediction formulas are the VP ones with alpha = 1.
SDE samplers draw their noise from one Brownian path (:class:`BrownianNoise`), so more steps
refine the same sample; ancestral ones draw fresh noise per step (:func:`randn_like`).

**CFG++** (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for
Diffusion Models"): DDIM with CFG steps to x' = D_w + sigma' eps_w, CFG++ to
x' = D_w + sigma' eps_u, with D_w the guided x0 estimate and eps_u = (x - D_u) / sigma the
*unconditional* noise estimate. Every ``*_cfg_pp`` sampler here applies that rule to its
base solver: each step starts from x~ = x + (D_w - D_u) = D_w + sigma eps_u, the point with
the guided x0 estimate and the unconditional noise, instead of x (for DDIM / Euler this is
exactly the paper's update). The unconditional estimate comes from the model's
``denoise_with_uncond`` (:func:`guided_and_uncond`); a model without one makes a CFG++
sampler equal to its base sampler.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from sgm.sampling.sampler_common import (
    BrownianNoise,
    Denoiser,
    NoiseGenerator,
    Sampler,
    StepCallback,
    ancestral_step,
    as_floats,
    guided_and_uncond,
    lagrange_integrals,
    randn_like,
    report,
    sigma_batch,
    to_d,
)

_GAUSS_NODES, _GAUSS_WEIGHTS = (v.tolist() for v in np.polynomial.legendre.leggauss(32))


def _integral(f: Callable[[float], float], a: float, b: float) -> float:
    """integral_a^b f(u) du by 32-point Gauss-Legendre quadrature (f smooth on [a, b])."""
    mid, half = 0.5 * (a + b), 0.5 * (b - a)
    return half * sum(w * f(mid + half * t) for t, w in zip(_GAUSS_NODES, _GAUSS_WEIGHTS))


def _psi(y: float) -> float:
    """(e^{-y} - 1 + y) / y = y phi_2(-y): the weight of a linear term in an exponential step.

    integral_0^h k e^{-k (h - u)} u du = h psi(k h) (Hochbruck & Ostermann 2010, phi functions).
    """
    return (math.expm1(-y) + y) / y


# ----------------------------------------------------------------------------- CFG++


@torch.no_grad()
def sample_euler_cfg_pp(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    alternative: bool = False,
) -> torch.Tensor:
    """DDIM / Euler with CFG++ (Chung et al. 2024): x' = D_w + sigma' (x - D_u) / sigma.

    ``alternative``: ComfyUI's other version (SamplerEulerCFG++ "alternative"), an Euler step from x
    with the slope d = (x - 2 D_w + D_u) / sigma: x' = x + d (sigma' - sigma). Without guidance
    (D_u = D_w) both are plain Euler.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        denoised, uncond = guided_and_uncond(model, x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        if alternative:
            x = x + to_d(x - denoised + uncond, s[i], denoised) * (s[i + 1] - s[i])
        else:
            x = denoised + to_d(x, s[i], uncond) * s[i + 1]
    return x


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral Euler with CFG++ (Chung et al. 2024, DDPM-style form with eta):
    x' = D_w + sigma_down eps_u + sigma_up z (see :func:`ancestral_step`)."""
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        denoised, uncond = guided_and_uncond(model, x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        x = denoised + to_d(x, s[i], uncond) * sigma_down
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1, r = 1/2) with CFG++.

    Both stages start from x~ = x + D_w - D_u (module docstring); the midpoint evaluation
    enters through its guided estimate, as in the base sampler.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    for i in range(n):
        denoised, uncond = guided_and_uncond(model, x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        if sigma_down == 0:
            x = denoised
        else:
            x_tilde = x + (denoised - uncond)
            h = math.log(s[i]) - math.log(sigma_down)
            sigma_s = s[i] * math.exp(-h / 2)
            x_2 = (sigma_s / s[i]) * x_tilde - math.expm1(-h / 2) * denoised
            denoised_2 = model(x_2, sigma_batch(x, sigma_s))
            x = (sigma_down / s[i]) * x_tilde - math.expm1(-h) * denoised_2
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) with CFG++.

    x' = (sigma'/sigma) x~ - (e^{-h} - 1) D, D = (1 + 1/2r) D_w - (1/2r) D_w,prev: the base
    update from x~ = x + D_w - D_u, i.e. the base update plus (sigma'/sigma)(D_w - D_u).
    (ComfyUI 0.3.64 differences its *unconditional* previous estimate against the guided
    current one; we extrapolate guided estimates only, so cfg_pp = base + CFG++ re-noising.)
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    old_denoised: torch.Tensor | None = None
    for i in range(n):
        denoised, uncond = guided_and_uncond(model, x, sigma_batch(x, s[i]))
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
            x = (s[i + 1] / s[i]) * (x + (denoised - uncond)) - math.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


# ------------------------------------------------------- RES and gradient estimation


def _res_multistep(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: StepCallback | None,
    generator: NoiseGenerator, eta: float, s_noise: float, cfg_pp: bool,
) -> torch.Tensor:
    s = as_floats(sigmas)
    n = len(s) - 1
    old_denoised: torch.Tensor | None = None
    h_last = 0.0
    for i in range(n):
        if cfg_pp:
            denoised, uncond = guided_and_uncond(model, x, sigma_batch(x, s[i]))
            x_start = x + (denoised - uncond)
        else:
            denoised = model(x, sigma_batch(x, s[i]))
            x_start = x
        report(callback, i, n, s[i], x, denoised)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        h = math.log(s[i]) - math.log(sigma_down) if sigma_down > 0 else math.inf
        if sigma_down == 0 or old_denoised is None:
            x = denoised + (sigma_down / s[i]) * (x_start - denoised)  # DDIM: first order
        else:
            # integral_0^h e^{-(h-u)} D(u) du with D linear through (0, D_i), (c_2 h, D_{i-1}).
            # Nodes are on the clock of the deterministic sub-steps (sigma -> sigma_down), so
            # the previous estimate lies h_last back (= lambda_{i-1} - lambda_i without noise).
            c_2 = -h_last / h
            x = ((sigma_down / s[i]) * x_start - math.expm1(-h) * denoised
                 + (_psi(h) / c_2) * (old_denoised - denoised))
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + randn_like(x, generator) * s_noise * sigma_up
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_res_multistep(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
) -> torch.Tensor:
    """RES 2nd-order multistep (Zhang, Tao, Chen et al. 2023, "Improved Order Analysis and
    Design of Exponential Integrator for Diffusion Models").

    The exponential integrator x' = e^{-h} x + integral_0^h e^{-(h-u)} D(lambda + u) du with
    D interpolated linearly through the current and the previous x0 estimate: weights
    b_1 = phi_1(-h) - phi_2(-h)/c_2, b_2 = phi_2(-h)/c_2, c_2 = (lambda_prev - lambda)/h,
    which satisfy RES's order conditions on a non-uniform grid. DDIM on the first step and
    on the final step to 0.
    """
    return _res_multistep(model, x, sigmas, callback, generator, 0.0, 1.0, cfg_pp=False)


@torch.no_grad()
def sample_res_multistep_cfg_pp(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
) -> torch.Tensor:
    """RES multistep (:func:`sample_res_multistep`) with CFG++: every step from x + D_w - D_u."""
    return _res_multistep(model, x, sigmas, callback, generator, 0.0, 1.0, cfg_pp=True)


@torch.no_grad()
def sample_res_multistep_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral RES multistep: a RES step to sigma_down, then sigma_up of fresh noise
    (:func:`ancestral_step`); the linear interpolation of D runs on the clock of the
    deterministic sub-steps, so the noise jumps do not steepen the extrapolation."""
    return _res_multistep(model, x, sigmas, callback, generator, eta, s_noise, cfg_pp=False)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral RES multistep with CFG++ (every step from x + D_w - D_u)."""
    return _res_multistep(model, x, sigmas, callback, generator, eta, s_noise, cfg_pp=True)


def _gradient_estimation(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: StepCallback | None,
    ge_gamma: float, cfg_pp: bool,
) -> torch.Tensor:
    s = as_floats(sigmas)
    n = len(s) - 1
    old_d: torch.Tensor | None = None
    for i in range(n):
        if cfg_pp:
            denoised, uncond = guided_and_uncond(model, x, sigma_batch(x, s[i]))
        else:
            denoised = model(x, sigma_batch(x, s[i]))
            uncond = denoised
        report(callback, i, n, s[i], x, denoised)
        d = to_d(x, s[i], uncond)  # eps_t: (x~ - D_w) / sigma = (x - D_u) / sigma
        if s[i + 1] == 0:
            x = denoised
        else:
            d_bar = d if old_d is None else ge_gamma * d + (1 - ge_gamma) * old_d
            x_start = x + (denoised - uncond) if cfg_pp else x
            x = x_start + d_bar * (s[i + 1] - s[i])
        old_d = d
    return x


@torch.no_grad()
def sample_gradient_estimation(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    ge_gamma: float = 2.0,
) -> torch.Tensor:
    """Gradient estimation sampler (Permenter & Yuan 2024, "Interpreting and Improving
    Diffusion Models from an Optimization Perspective", Algorithm 2).

    DDIM read as gradient descent on the distance to the data manifold, with the gradient
    eps averaged over the last two steps: eps_bar = gamma eps_t + (1 - gamma) eps_{t+1},
    x' = x + (sigma' - sigma) eps_bar (gamma = 2 in the paper). The final step to 0 returns
    the x0 estimate.
    """
    return _gradient_estimation(model, x, sigmas, callback, ge_gamma, cfg_pp=False)


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    ge_gamma: float = 2.0,
) -> torch.Tensor:
    """Gradient estimation with CFG++: the steps start from x + D_w - D_u, so eps_t is the
    unconditional noise estimate (x - D_u) / sigma."""
    return _gradient_estimation(model, x, sigmas, callback, ge_gamma, cfg_pp=True)


# ---------------------------------------------------------------------- iPNDM-v


@torch.no_grad()
def sample_ipndm_v(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    max_order: int = 4,
) -> torch.Tensor:
    """iPNDM with variable step sizes (Zhang & Chen 2023, "DEIS", iPNDM; step-size aware).

    iPNDM's Adams-Bashforth update on dx/dsigma with coefficients recomputed for the actual
    (non-uniform) sigma grid: c_j = integral over [sigma_i, sigma_{i+1}] of the Lagrange
    basis through the last ``max_order`` sigmas, so that it is exact for polynomial slopes
    of degree ``max_order`` - 1 (on a uniform grid these are iPNDM's fixed coefficients
    55/24, -59/24, ...). Lower orders warm it up; the final step to 0 returns the x0 estimate.
    """
    if not 1 <= max_order <= 4:
        raise ValueError(f"max_order must be in 1..4, got {max_order}")
    s = as_floats(sigmas)
    n = len(s) - 1
    ds: list[torch.Tensor] = []  # most recent first
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        ds = [to_d(x, s[i], denoised)] + ds[: max_order - 1]
        if s[i + 1] == 0:
            x = denoised
            continue
        coeffs = lagrange_integrals([s[i - j] for j in range(len(ds))], s[i], s[i + 1])
        x = x + sum(c * d for c, d in zip(coeffs, ds))
    return x


# ----------------------------------------------------------------------- ER-SDE


def er_sde_noise_scaler(sigma: float) -> float:
    """ER-SDE's noise scale function phi(sigma) = sigma (e^{sigma^0.3} + 10) (ComfyUI's default).

    phi(sigma) = sigma gives the probability-flow ODE, phi(sigma) = sigma^2 the reverse
    VE SDE (Cui et al. 2025); this one sits in between and keeps some stochasticity.
    """
    return sigma * (math.exp(sigma**0.3) + 10.0)


@torch.no_grad()
def sample_er_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    s_noise: float = 1.0, noise_scaler: Callable[[float], float] = er_sde_noise_scaler,
    max_stage: int = 3,
) -> torch.Tensor:
    """ER-SDE-Solver-3 (Cui et al. 2025, "Elucidating the Solution Space of Extended
    Reverse-Time SDE for Diffusion Models"), VE form.

    The extended reverse SDE with noise scale phi has the exact solution
    x_t / phi(sigma_t) = x_s / phi(sigma_s) + integral_{sigma_s}^{sigma_t} x0(sigma) d(1/phi)
    + noise of variance sigma_t^2 - (sigma_s phi(sigma_t) / phi(sigma_s))^2. A Taylor
    expansion of x0 in sigma, with derivatives from backward differences of past
    estimates, gives the 1st, 2nd and 3rd stage terms; the integrals of 1/phi are taken by
    quadrature in log sigma. ``max_stage`` (1..3) caps the order.
    """
    if not 1 <= max_stage <= 3:
        raise ValueError(f"max_stage must be in 1..3, got {max_stage}")
    s = as_floats(sigmas)
    n = len(s) - 1
    brownian = BrownianNoise.for_sigmas(x, s, generator) if s_noise else None
    old_denoised: torch.Tensor | None = None
    old_slope: torch.Tensor | None = None
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        sigma, sigma_next = s[i], s[i + 1]
        if sigma_next == 0:
            x = denoised
            old_denoised = denoised
            continue
        phi_next = noise_scaler(sigma_next)
        r = phi_next / noise_scaler(sigma)
        x_next = r * x + (1 - r) * denoised
        stage = min(max_stage, i + 1)
        if stage >= 2:
            assert old_denoised is not None
            dt = sigma_next - sigma
            log_lo, log_hi = math.log(sigma_next), math.log(sigma)
            # integral_{sigma'}^{sigma} g(u) du = integral g(e^v) e^v dv (smooth in v = log u)
            inv_phi = _integral(lambda v: math.exp(v) / noise_scaler(math.exp(v)), log_lo, log_hi)
            slope = (denoised - old_denoised) / (sigma - s[i - 1])  # d x0 / d sigma
            x_next = x_next + (dt + phi_next * inv_phi) * slope
            if stage >= 3:
                assert old_slope is not None
                lin_phi = _integral(lambda v: math.exp(v) * (math.exp(v) - sigma) / noise_scaler(math.exp(v)),
                                    log_lo, log_hi)
                curvature = (slope - old_slope) / ((sigma - s[i - 2]) / 2)  # d^2 x0 / d sigma^2
                x_next = x_next + (dt**2 / 2 + phi_next * lin_phi) * curvature
            old_slope = slope
        std = math.sqrt(max(sigma_next**2 - (sigma * r) ** 2, 0.0))
        if brownian is not None and std > 0:
            x_next = x_next + brownian(sigma, sigma_next) * s_noise * std
        x = x_next
        old_denoised = denoised
    return x


# ------------------------------------------------------------------------- SEEDS


def _ou_noise(
    brownian: BrownianNoise, previous: torch.Tensor | None, sigma_a: float, sigma_b: float, decay: float
) -> torch.Tensor:
    """Normalised SDE noise at sigma_b given its value at sigma_a (None: zero at the step start).

    The noise of the exponential SDE step, divided by sigma, is an Ornstein-Uhlenbeck
    process in lambda: n_b = e^{-decay} n_a + sqrt(1 - e^{-2 decay}) z, decay = eta (lambda_b - lambda_a).
    """
    fresh = brownian(sigma_a, sigma_b) * math.sqrt(-math.expm1(-2 * decay))
    return fresh if previous is None else previous * math.exp(-decay) + fresh


@torch.no_grad()
def sample_seeds_2(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5,
) -> torch.Tensor:
    """SEEDS-2 (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality
    Sampling from Diffusion Models"), data prediction.

    Exponential integrator of the SDE whose linear part scales x by (sigma'/sigma) e^{-eta h}
    and the x0 weight by 1 - e^{-(1 + eta) h} (eta = 1: the reverse SDE, 0: the ODE, i.e.
    DPM-Solver++(2S)). Stage 1 steps to lambda + r h; its x0 estimate extrapolates the slope
    (weight 1/2r). The stage's noise is carried into the final noise as the same
    Ornstein-Uhlenbeck path (:func:`_ou_noise`), so the step's noise has the exact covariance.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    brownian = BrownianNoise.for_sigmas(x, s, generator) if eta and s_noise else None
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        sigma, sigma_next = s[i], s[i + 1]
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma) - math.log(sigma_next)
        k = 1 + eta
        sigma_1 = sigma * math.exp(-r * h)
        x_1 = (sigma_1 / sigma * math.exp(-eta * r * h)) * x - math.expm1(-k * r * h) * denoised
        noise = None
        if brownian is not None:
            noise = _ou_noise(brownian, None, sigma, sigma_1, eta * r * h)
            x_1 = x_1 + noise * (sigma_1 * s_noise)
        denoised_1 = model(x_1, sigma_batch(x, sigma_1))
        denoised_d = denoised + (denoised_1 - denoised) * (1 / (2 * r))
        x = (sigma_next / sigma * math.exp(-eta * h)) * x - math.expm1(-k * h) * denoised_d
        if brownian is not None:
            noise = _ou_noise(brownian, noise, sigma_1, sigma_next, eta * (1 - r) * h)
            x = x + noise * (sigma_next * s_noise)
    return x


@torch.no_grad()
def sample_seeds_3(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0, r_1: float = 1 / 3, r_2: float = 2 / 3,
) -> torch.Tensor:
    """SEEDS-3 (Gonzalez et al. 2023), data prediction: three stages at lambda + r_1 h,
    lambda + r_2 h and lambda + h (eta = 0: DPM-Solver++(3S)).

    Stage 2 and the final stage add the slope of x0 in lambda, from the previous stage's
    estimate, with the linear-term weight psi (:func:`_psi`) of the exponential integrator;
    the noise follows one Ornstein-Uhlenbeck path through the stages (see :func:`sample_seeds_2`).
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    brownian = BrownianNoise.for_sigmas(x, s, generator) if eta and s_noise else None
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        sigma, sigma_next = s[i], s[i + 1]
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma) - math.log(sigma_next)
        k = 1 + eta
        sigma_1, sigma_2 = sigma * math.exp(-r_1 * h), sigma * math.exp(-r_2 * h)
        x_1 = (sigma_1 / sigma * math.exp(-eta * r_1 * h)) * x - math.expm1(-k * r_1 * h) * denoised
        noise = None
        if brownian is not None:
            noise = _ou_noise(brownian, None, sigma, sigma_1, eta * r_1 * h)
            x_1 = x_1 + noise * (sigma_1 * s_noise)
        denoised_1 = model(x_1, sigma_batch(x, sigma_1))
        x_2 = ((sigma_2 / sigma * math.exp(-eta * r_2 * h)) * x - math.expm1(-k * r_2 * h) * denoised
               + (r_2 / r_1 * _psi(k * r_2 * h)) * (denoised_1 - denoised))
        if brownian is not None:
            noise = _ou_noise(brownian, noise, sigma_1, sigma_2, eta * (r_2 - r_1) * h)
            x_2 = x_2 + noise * (sigma_2 * s_noise)
        denoised_2 = model(x_2, sigma_batch(x, sigma_2))
        x = ((sigma_next / sigma * math.exp(-eta * h)) * x - math.expm1(-k * h) * denoised
             + (_psi(k * h) / r_2) * (denoised_2 - denoised))
        if brownian is not None:
            noise = _ou_noise(brownian, noise, sigma_2, sigma_next, eta * (1 - r_2) * h)
            x = x + noise * (sigma_next * s_noise)
    return x


# --------------------------------------------------------------------- SA-Solver

SA_SOLVER_TAU_INTERVAL: tuple[float, float] = (0.571225, 5.092414)
"""Default (low, high) sigmas where SA-Solver is stochastic: the stretch between 20 % and
80 % of SD / SDXL's 1000 training timesteps (t = 799.2 and 199.8, scaled-linear betas), the
interval ComfyUI's KSampler uses (SA-Solver's own code also limits the noise to an interval
of the trajectory, given in t rather than sigma)."""


def _sa_coefficients(lams: Sequence[float], lam: float, lam_next: float, tau: float) -> list[float]:
    """b_j = integral_lam^lam_next k e^{k (u - lam_next)} L_j(u) du, k = 1 + tau^2.

    The stochastic Adams weights of SA-Solver (Xue et al. 2023) in data prediction with
    alpha = 1: L_j is the Lagrange basis through ``lams``; quadrature is exact to rounding
    for these smooth integrands.
    """
    k = 1 + tau**2

    def basis(j: int, u: float) -> float:
        return math.prod((u - lams[m]) / (lams[j] - lams[m]) for m in range(len(lams)) if m != j)

    return [_integral(lambda u, j=j: k * math.exp(k * (u - lam_next)) * basis(j, u), lam, lam_next)
            for j in range(len(lams))]


def _sa_solver(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: StepCallback | None,
    generator: NoiseGenerator, eta: float, s_noise: float, tau_interval: tuple[float, float] | None,
    predictor_order: int, corrector_order: int, pece: bool,
) -> torch.Tensor:
    if not (1 <= predictor_order and 1 <= corrector_order):
        raise ValueError(f"orders must be >= 1, got predictor {predictor_order}, corrector {corrector_order}")
    s = as_floats(sigmas)
    n = len(s) - 1
    low, high = SA_SOLVER_TAU_INTERVAL if tau_interval is None else tau_interval
    brownian = BrownianNoise.for_sigmas(x, s, generator) if eta and s_noise else None
    ends_in_zero = s[-1] == 0
    keep = max(predictor_order, corrector_order)
    history: list[torch.Tensor] = []  # last x0 estimates, oldest first
    history_lams: list[float] = []  # their lambda = -log sigma

    def adams_step(x_from: torch.Tensor, i: int, order: int, tau: float) -> torch.Tensor:
        """s[i] -> s[i + 1] through the last ``order`` x0 estimates, without the noise term."""
        lam, lam_next = -math.log(s[i]), -math.log(s[i + 1])
        coeffs = _sa_coefficients(history_lams[-order:], lam, lam_next, tau)
        scale = s[i + 1] / s[i] * math.exp(-(tau**2) * (lam_next - lam))
        return scale * x_from + sum(c * d for c, d in zip(coeffs, history[-order:]))

    x_pred = x  # predicted state at s[i], where the model is evaluated
    tau, noise = 0.0, None
    for i in range(n):
        denoised = model(x_pred, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x_pred, denoised)
        history, history_lams = (history + [denoised])[-keep:], (history_lams + [-math.log(s[i])])[-keep:]
        if i > 0 and (s[i + 1] > 0 or pece):
            # Corrector: redo step i-1 -> i (same tau and noise) with the new estimate as a node.
            order = min(corrector_order, len(history), n - i if ends_in_zero else keep)
            x = adams_step(x, i - 1, order, tau)
            if noise is not None:
                x = x + noise
            if pece:  # evaluate again at the corrected state
                denoised = model(x, sigma_batch(x, s[i]))
                history[-1] = denoised
        else:
            x = x_pred
        if s[i + 1] == 0:
            x = denoised
            break
        # Predictor: step i -> i + 1; x keeps the state at s[i] for the next corrector.
        tau = eta if low <= s[i + 1] <= high else 0.0
        order = min(predictor_order, len(history), n - 1 - i if ends_in_zero else keep)
        x_pred = adams_step(x, i, order, tau)
        noise = None
        if brownian is not None and tau > 0:
            std = s[i + 1] * math.sqrt(-math.expm1(-2 * tau**2 * (math.log(s[i]) - math.log(s[i + 1]))))
            noise = brownian(s[i], s[i + 1]) * (std * s_noise)
            x_pred = x_pred + noise
    else:
        x = x_pred  # the schedule stops above 0: the last prediction is the result
    return x


@torch.no_grad()
def sample_sa_solver(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0, tau_interval: tuple[float, float] | None = None,
    predictor_order: int = 3, corrector_order: int = 4,
) -> torch.Tensor:
    """SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of
    Diffusion Models"): stochastic Adams predictor-corrector, data prediction.

    The SDE family with noise scale tau (tau = 0: the ODE, tau = 1: the reverse SDE) is
    solved exactly in its linear part, x' = (sigma'/sigma) e^{-tau^2 h} x + sum_j b_j D_j
    + sigma' sqrt(1 - e^{-2 tau^2 h}) z, with D interpolated through the last x0 estimates
    (:func:`_sa_coefficients`). SA-Predictor uses ``predictor_order`` past estimates; after the
    next evaluation SA-Corrector redoes the step with ``corrector_order`` estimates that
    include the new one (the same noise), at no extra model call. tau = ``eta`` for sigmas in
    ``tau_interval`` (default :data:`SA_SOLVER_TAU_INTERVAL`), 0 elsewhere. Orders drop
    near the end of a schedule that ends in 0.
    """
    return _sa_solver(model, x, sigmas, callback, generator, eta, s_noise, tau_interval,
                      predictor_order, corrector_order, pece=False)


@torch.no_grad()
def sample_sa_solver_pece(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0, tau_interval: tuple[float, float] | None = None,
    predictor_order: int = 3, corrector_order: int = 4,
) -> torch.Tensor:
    """SA-Solver in PECE mode (predict, evaluate, correct, evaluate; Xue et al. 2023): the
    model is evaluated again at the corrected state, and that estimate replaces the one at
    the predicted state (about twice the model calls of :func:`sample_sa_solver`)."""
    return _sa_solver(model, x, sigmas, callback, generator, eta, s_noise, tau_interval,
                      predictor_order, corrector_order, pece=True)


COMFY_SAMPLERS: dict[str, Sampler] = {
    "euler_cfg_pp": sample_euler_cfg_pp,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "ipndm_v": sample_ipndm_v,
    "res_multistep": sample_res_multistep,
    "res_multistep_cfg_pp": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": sample_gradient_estimation_cfg_pp,
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
    "sa_solver": sample_sa_solver,
    "sa_solver_pece": sample_sa_solver_pece,
}
