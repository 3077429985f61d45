"""Shared pieces of every sampler: the step callback type, CPU noise, ODE helpers.

Split from ``sgm.sampling.samplers`` so that ``sgm.sampling.samplers_extra`` can use them without an import
cycle; ``sgm.sampling.samplers`` re-exports everything here.
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


class UncondDenoiser(Protocol):
    """A guided denoiser that can also report its unconditional branch (for CFG++ samplers).

    ``denoise_with_uncond(x, sigma) -> (denoised, uncond_denoised)``: ``denoised`` is exactly
    what ``model(x, sigma)`` returns (the guided x0 estimate) and ``uncond_denoised`` the
    unconditional x0 estimate of the same call (B, C, H, W). ``GuidedDenoiser`` and the
    denoiser ``sgm.sampling.sample.sample`` hands to samplers implement it; a plain
    ``Denoiser`` does not need to.
    """

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def denoise_with_uncond(
        self, x: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


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


def guided_and_uncond(
    model: Denoiser | UncondDenoiser, x: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided denoised, unconditional denoised) of one model call, for CFG++ samplers.

    Models without ``denoise_with_uncond`` (no guidance, or a plain denoiser) have one
    branch: both entries are the same tensor, and a CFG++ sampler reduces to its base.
    """
    both = getattr(model, "denoise_with_uncond", None)
    if both is None:
        denoised = model(x, sigma)
        return denoised, denoised
    return both(x, sigma)


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


# ----------------------------------------------------------------------------- Brownian noise


class BrownianNoise:
    """Normalised increments of one seeded Brownian path W over [sigma_min, sigma_max].

    ``noise(sigma, sigma_next)`` returns (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|):
    standard normal for any interval, and the increments of adjacent intervals add up on the
    same path. SDE samplers that draw their noise here therefore sample one fixed
    realisation of the SDE, and results converge as the step count grows (fresh i.i.d. noise
    per step gives a different path for every step count). This is the role of
    k-diffusion's ``BrownianTreeNoiseSampler`` (torchsde).

    The path is a *virtual Brownian tree* (Li et al. 2020, "Scalable Gradients for
    Stochastic Differential Equations", sec. 5): W at a point is found by bisecting
    [sigma_min, sigma_max] and drawing each midpoint from its Brownian bridge,
    W(mid) = (W(a) + W(b)) / 2 + sqrt(b - a) / 2 * z, with z from a generator seeded by
    (path seed, depth, index) (a splitmix64 hash), so any point can be queried in any order
    and only the last two root-to-leaf paths are kept. Bisection stops at ``tolerance`` of the range; W is linear below that.

    Seeds come from ``generator`` (one per batch item with a sequence of generators, so a
    batch reproduces single-image runs item by item).
    """

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, generator: NoiseGenerator,
                 tolerance: float = 1e-6) -> None:
        if not 0 <= sigma_min < sigma_max:
            raise ValueError(f"BrownianNoise needs 0 <= sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.low, self.high = float(sigma_min), float(sigma_max)
        self.depth = max(1, math.ceil(math.log2(1.0 / tolerance)))
        self.shape = tuple(x.shape[1:])
        self.device, self.dtype = x.device, x.dtype
        if generator is None or isinstance(generator, torch.Generator):
            generators: Sequence[torch.Generator | None] = [generator] * x.shape[0]
        else:
            if len(generator) != x.shape[0]:
                raise ValueError(f"got {len(generator)} per-item generators for a batch of {x.shape[0]}")
            generators = generator
        # One 63-bit seed per item (a shared generator still gives each item its own path).
        self.seeds = [int(torch.randint(0, 2**63 - 1, (1,), generator=g)) for g in generators]
        self._generator = torch.Generator()  # reseeded for every tree node
        self._paths: list[dict[tuple[int, int], torch.Tensor]] = [{} for _ in self.seeds]
        self._cache: dict[float, torch.Tensor] = {}

    def _normal(self, seed: int, depth: int, index: int) -> torch.Tensor:
        self._generator.manual_seed(_mix64(seed, depth, index))
        return torch.randn(self.shape, generator=self._generator, dtype=torch.float32).double()

    def _w_item(self, item: int, t: float) -> torch.Tensor:
        seed, previous = self.seeds[item], self._paths[item]
        path: dict[tuple[int, int], torch.Tensor] = {}

        def node(depth: int, index: int, value: Callable[[], torch.Tensor]) -> torch.Tensor:
            key = (depth, index)
            found = previous.get(key)
            path[key] = found if found is not None else value()
            return path[key]

        a, b = self.low, self.high
        w_a = torch.zeros(self.shape, dtype=torch.float64)
        w_b = node(0, 0, lambda: math.sqrt(self.high - self.low) * self._normal(seed, 0, 0))
        index, result = 0, None
        for depth in range(1, self.depth + 1):
            if t <= a or t >= b:
                result = w_a if t <= a else w_b
                break
            mid, half = 0.5 * (a + b), 0.5 * math.sqrt(b - a)
            w_mid = node(depth, index, lambda: 0.5 * (w_a + w_b) + half * self._normal(seed, depth, index))
            if t < mid:
                b, w_b, index = mid, w_mid, 2 * index
            else:
                a, w_a, index = mid, w_mid, 2 * index + 1
        if result is None:
            result = w_a + (w_b - w_a) * ((t - a) / (b - a))
        # Samplers ask for neighbouring points: keep the last two paths (their shared top is free).
        self._paths[item] = {**previous, **path} if len(previous) <= 2 * self.depth + 2 else path
        return result

    def w(self, sigma: float) -> torch.Tensor:
        """W(sigma) (B, ...) float64 on the CPU (sigma clamped into the range)."""
        t = min(max(float(sigma), self.low), self.high)
        if t not in self._cache:
            if len(self._cache) > 8:  # samplers query neighbouring points; keep a few
                self._cache.pop(next(iter(self._cache)))
            self._cache[t] = torch.stack([self._w_item(item, t) for item in range(len(self.seeds))])
        return self._cache[t]

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        span = abs(float(sigma_next) - float(sigma))
        if span == 0:
            raise ValueError("BrownianNoise: an increment needs two different sigmas")
        increment = (self.w(sigma_next) - self.w(sigma)) / math.sqrt(span)
        return increment.to(device=self.device, dtype=self.dtype)

    @classmethod
    def for_sigmas(cls, x: torch.Tensor, sigmas: Sequence[float], generator: NoiseGenerator) -> "BrownianNoise":
        """A path over the positive sigmas of a schedule (k-diffusion's range convention)."""
        positive = [s for s in sigmas if s > 0]
        low, high = min(positive), max(positive)
        return cls(x, low, high if high > low else low * 2 + 1e-3, generator)


def _mix64(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64's finaliser per value, Steele et al. 2014)."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
        state = (state + 0x9E3779B97F4A7C15) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 29
    return state >> 1
