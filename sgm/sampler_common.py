"""Shared pieces of every sampler: the step callback type, CPU noise, ODE helpers.

Split from ``sgm.samplers`` so that ``sgm.samplers_extra`` can use them without an import
cycle; ``sgm.samplers`` re-exports everything here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

NoiseGenerator = torch.Generator | Sequence[torch.Generator] | None


class Denoiser(Protocol):
    """``model(x (B, C, H, W), sigma (B,)) -> denoised (B, C, H, W)``."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepInfo:
    """One sampler step: ``step`` of ``total`` (0-based), at noise level ``sigma``.

    ``x`` is the current noisy latent (B, C, H, W) and ``denoised`` the model's x0
    estimate at that step (what a latent preview shows).
    """

    step: int
    total: int
    sigma: float
    x: torch.Tensor
    denoised: torch.Tensor


StepCallback = Callable[[StepInfo], None]
Sampler = Callable[..., torch.Tensor]


# ----------------------------------------------------------------------------- helpers


def randn_like(x: torch.Tensor, generator: NoiseGenerator) -> torch.Tensor:
    """Standard normal noise shaped like x (B, ...), drawn on the CPU in float32.

    With a sequence of generators, item i is drawn from ``generator[i]`` alone, so a batch
    reproduces single-image runs item by item.
    """
    if generator is None or isinstance(generator, torch.Generator):
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device="cpu")
    else:
        if len(generator) != x.shape[0]:
            raise ValueError(
                f"got {len(generator)} per-item generators for a batch of {x.shape[0]}; "
                "pass one torch.Generator per batch item (or a single generator)"
            )
        noise = torch.stack(
            [torch.randn(x.shape[1:], generator=g, dtype=torch.float32, device="cpu") for g in generator]
        )
    return noise.to(device=x.device, dtype=x.dtype)


def sigma_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The (B,) sigma tensor a model call takes (float32 even for half-precision latents)."""
    return torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step from sigma to sigma_next.

    Deterministically step to sigma_down, then add sigma_up of fresh noise, with
    sigma_down^2 + sigma_up^2 = sigma_next^2. With eta = 1 this is exactly the DDPM
    posterior (Ho et al. 2020, eq. 7); eta scales the noise like DDIM's eta (Song et al.
    2021, eq. 16).
    """
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = min(
        sigma_next, eta * math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0))
    )
    sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


def as_floats(sigmas: torch.Tensor) -> list[float]:
    """Sigmas as Python floats: step coefficients are scalars, computed without tensor ops."""
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be 1-D (N + 1,), got shape {tuple(sigmas.shape)}")
    return [float(s) for s in sigmas.detach().cpu().double()]


def report(
    callback: StepCallback | None, step: int, total: int, sigma: float,
    x: torch.Tensor, denoised: torch.Tensor,
) -> None:
    if callback is not None:
        callback(StepInfo(step=step, total=total, sigma=sigma, x=x, denoised=denoised))


def churn(
    sigma: float, steps: int, s_churn: float, s_tmin: float, s_tmax: float
) -> float:
    """gamma of Karras et al. 2022, Algorithm 2, line 4 (0 outside [s_tmin, s_tmax])."""
    if s_churn > 0 and s_tmin <= sigma <= s_tmax:
        return min(s_churn / steps, math.sqrt(2.0) - 1.0)
    return 0.0


def lagrange_integrals(nodes: Sequence[float], a: float, b: float) -> list[float]:
    """c_j = integral_a^b L_j(s) ds for the Lagrange basis L_j on ``nodes``.

    The linear multistep weights of an Adams-Bashforth method on a non-uniform grid: with
    f known at the nodes, integral_a^b f ~ sum_j c_j f(nodes[j]). Exact polynomial
    integration (float64) instead of numerical quadrature.
    """
    coeffs = []
    for j, t_j in enumerate(nodes):
        others = [t for k, t in enumerate(nodes) if k != j]
        poly = np.polynomial.polynomial.polyfromroots(others) if others else np.array([1.0])
        poly = poly / np.prod([t_j - t for t in others]) if others else poly
        integral = np.polynomial.polynomial.polyint(poly)
        coeffs.append(float(np.polynomial.polynomial.polyval(b, integral)
                            - np.polynomial.polynomial.polyval(a, integral)))
    return coeffs
