"""The samplers behind ComfyUI's SamplerER_SDE, SamplerSASolver and SamplerLCMUpscale nodes.

Same contract as ``sgm.sampling.samplers`` (``sample_NAME(model, x, sigmas, *, callback, generator,
**options)``, VE variables x = x0 + sigma n). These are not KSampler names: a SAMPLER value carries
the function itself (``sgm.sampling.sample.resolve_sampler`` takes a callable).

* ER-SDE's three solver types are ``sample_er_sde`` (``sgm.sampling.samplers_comfy``) with a noise
  scale function phi: :func:`er_sde_options`.
* :func:`sample_sa_solver_ext` is SA-Solver (Xue et al. 2023) with the two switches of ComfyUI's
  node that the KSampler version lacks: no corrector (order 0) and the paper's simple order-2
  coefficients (Appendix D).
* :func:`sample_lcm_upscale` is LCM sampling that enlarges the latent between steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from sgm.nets.unet_patches import resize
from sgm.sampling.sampler_common import (
    BrownianNoise,
    Denoiser,
    NoiseGenerator,
    StepCallback,
    as_floats,
    randn_like,
    report,
    sigma_batch,
)
from sgm.sampling.samplers_comfy import _sa_coefficients

ErSdeSolver = Literal["ER-SDE", "Reverse-time SDE", "ODE"]
ER_SDE_SOLVERS: tuple[str, ...] = ("ER-SDE", "Reverse-time SDE", "ODE")


# ----------------------------------------------------------------------------- ER-SDE


@dataclass(frozen=True)
class PowerNoiseScaler:
    """ER-SDE's noise scale phi(sigma) = sigma^exponent (Cui et al. 2025): exponent 1 is the
    probability-flow ODE, 2 the reverse-time VE SDE."""

    exponent: float

    def __call__(self, sigma: float) -> float:
        return sigma**self.exponent


def er_sde_options(solver_type: str, max_stage: int, eta: float, s_noise: float) -> dict[str, Any]:
    """The options of ``sample_er_sde`` for ComfyUI's SamplerER_SDE: "ER-SDE" keeps the sampler's own
    phi (eta does not apply); "Reverse-time SDE" uses phi = sigma^(eta + 1); "ODE" (or eta 0 with the
    reverse-time SDE) phi = sigma without noise."""
    if solver_type not in ER_SDE_SOLVERS:
        raise ValueError(f"solver_type must be one of {ER_SDE_SOLVERS}, got {solver_type!r}")
    if not 1 <= max_stage <= 3:
        raise ValueError(f"max_stage must be 1, 2 or 3, got {max_stage}")
    options: dict[str, Any] = {"max_stage": int(max_stage), "s_noise": float(s_noise)}
    if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
        return {**options, "s_noise": 0.0, "noise_scaler": PowerNoiseScaler(1.0)}
    if solver_type == "Reverse-time SDE":
        options["noise_scaler"] = PowerNoiseScaler(float(eta) + 1.0)
    return options


# --------------------------------------------------------------------------- SA-Solver


def simple_order_2_coefficients(lam_prev: float, lam: float, lam_next: float, tau: float,
                                corrector: bool) -> list[float]:
    """SA-Solver's simplified 2-node weights (Xue et al. 2023, Appendix D), oldest node first, with
    k = 1 + tau^2 and h = lam_next - lam. Predictor (nodes lam_prev, lam): the linear term's weight
    k h^2 / 2 over the node spacing, the rest 1 - e^{-k h} on the newest node. Corrector (nodes lam,
    lam_next): k h / 2 on the new node, 1 - e^{-k h} - k h / 2 on the old one."""
    k = 1 + tau**2
    h = lam_next - lam
    total = -math.expm1(-k * h)
    if corrector:
        return [total - 0.5 * k * h, 0.5 * k * h]
    older = 0.5 * k * h * h / (lam_prev - lam)
    return [older, total - older]


@torch.no_grad()
def sample_sa_solver_ext(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 1.0, s_noise: float = 1.0, tau_interval: tuple[float, float] = (0.0, float("inf")),
    predictor_order: int = 3, corrector_order: int = 4, use_pece: bool = False,
    simple_order_2: bool = False,
) -> torch.Tensor:
    """SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion
    Models"), data prediction, as ``sgm.sampling.samplers_comfy.sample_sa_solver`` (same steps, noise and
    order rules) plus ``corrector_order`` 0 (predictor only) and ``simple_order_2`` (Appendix D's
    weights wherever two nodes are used). tau = ``eta`` where the next sigma lies in ``tau_interval``
    (low, high), 0 elsewhere; ``use_pece`` re-evaluates the model at each corrected state.
    """
    if predictor_order < 1 or corrector_order < 0:
        raise ValueError(f"predictor_order must be >= 1 and corrector_order >= 0, got {predictor_order} "
                         f"and {corrector_order}")
    s = as_floats(sigmas)
    n = len(s) - 1
    low, high = tau_interval
    brownian = BrownianNoise.for_sigmas(x, s, generator) if eta and s_noise else None
    ends_in_zero = s[-1] == 0
    keep = max(predictor_order, corrector_order)
    history: list[torch.Tensor] = []  # last x0 estimates, oldest first
    lams: list[float] = []  # their lambda = -log sigma

    def adams_step(x_from: torch.Tensor, i: int, order: int, tau: float, corrector: bool) -> torch.Tensor:
        """s[i] -> s[i + 1] through the last ``order`` x0 estimates, without the noise term."""
        lam, lam_next = -math.log(s[i]), -math.log(s[i + 1])
        if simple_order_2 and order == 2:
            coeffs = simple_order_2_coefficients(lams[-2], lam, lam_next, tau, corrector)
        else:
            coeffs = _sa_coefficients(lams[-order:], lam, lam_next, tau)
        scale = s[i + 1] / s[i] * math.exp(-(tau**2) * (lam_next - lam))
        return scale * x_from + sum(c * d for c, d in zip(coeffs, history[-order:]))

    x_pred = x
    tau, noise = 0.0, None
    for i in range(n):
        denoised = model(x_pred, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x_pred, denoised)
        history, lams = (history + [denoised])[-keep:], (lams + [-math.log(s[i])])[-keep:]
        order = 0 if i == 0 or (s[i + 1] == 0 and not use_pece) else min(corrector_order, len(history))
        if ends_in_zero:
            order = min(order, n - i)
        if order > 0:  # corrector: redo step i-1 -> i (same tau and noise) with the new estimate as a node
            x = adams_step(x, i - 1, order, tau, corrector=True)
            if noise is not None:
                x = x + noise
            if use_pece:
                denoised = model(x, sigma_batch(x, s[i]))
                history[-1] = denoised
        else:
            x = x_pred
        if s[i + 1] == 0:
            return denoised
        tau = eta if low <= s[i + 1] <= high else 0.0
        order = min(predictor_order, len(history), n - 1 - i if ends_in_zero else keep)
        x_pred = adams_step(x, i, order, tau, corrector=False)
        noise = None
        if brownian is not None and tau > 0:
            std = s[i + 1] * math.sqrt(-math.expm1(-2 * tau**2 * (math.log(s[i]) - math.log(s[i + 1]))))
            noise = brownian(s[i], s[i + 1]) * (std * s_noise)
            x_pred = x_pred + noise
    return x_pred


# -------------------------------------------------------------------------- LCM upscale


def lcm_upscale_factors(steps: int, total_upscale: float, upscale_steps: int | None) -> list[float]:
    """The size factor after each of the first steps of :func:`sample_lcm_upscale` (``steps`` = model
    calls): evenly from 1 to ``total_upscale`` over ``upscale_steps`` steps (None: about half the
    steps), as ComfyUI's."""
    calls = steps + 1  # ComfyUI counts the sigmas
    count = max(calls // 2 + 1, 2) if upscale_steps is None else min(upscale_steps + 1, calls + 1)
    return [float(f) for f in np.linspace(1.0, total_upscale, count)[1:]]


@torch.no_grad()
def sample_lcm_upscale(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    total_upscale: float = 2.0, upscale_method: str = "bilinear", upscale_steps: int | None = None,
) -> torch.Tensor:
    """LCM sampling (Luo et al. 2023, Algorithm 1: jump to the x0 estimate, re-noise to the next sigma)
    whose x0 estimate is enlarged after each of the first steps (:func:`lcm_upscale_factors`, sizes
    relative to the input latent, rounded), so the latent grows to ``total_upscale`` times its size while
    it is refined. ``upscale_method``: bicubic, bilinear, area or nearest-exact."""
    s = as_floats(sigmas)
    n = len(s) - 1
    factors = lcm_upscale_factors(n, total_upscale, upscale_steps)
    height, width = x.shape[-2:]
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        x = denoised
        if i < len(factors):
            x = resize(x, round(height * factors[i]), round(width * factors[i]), upscale_method)
        if s[i + 1] > 0:
            x = x + randn_like(x, generator) * s[i + 1]
    return x


sample_lcm_upscale.resizes_latent = True  # type: ignore[attr-defined]  # its output is larger than its input
