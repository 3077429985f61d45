"""More samplers: DPM-Solver (fast / adaptive), iPNDM, DEIS, UniPC.

Same contract as ``sgm.sampling.samplers``: ``sample_NAME(model, x, sigmas, *, callback, generator,
**options)``; ``model(x, sigma (B,)) -> denoised``; VE variables x = x0 + sigma n. Where an
algorithm is stated in log-SNR time we use lambda = -log sigma (the half log-SNR of the
VP process with alpha = 1 / sqrt(1 + sigma^2)); its data-prediction formulas are the VP ones
divided by alpha, i.e. with alpha = 1 and sigma_VP -> sigma.
"""

from __future__ import annotations

import math


import numpy as np
import torch

from sgm.sampling.sampler_common import (
    Denoiser,
    NoiseGenerator,
    Sampler,
    StepCallback,
    ancestral_step,
    as_floats,
    lagrange_integrals,
    randn_like,
    report,
    sigma_batch,
    to_d,
)


# -------------------------------------------------------------------------- DPM-Solver


class _EpsCache:
    """Evaluates eps(x, lambda) = (x - D(x, sigma)) / sigma once per stage of a step."""

    def __init__(self, model: Denoiser) -> None:
        self.model = model
        self.nfe = 0

    def __call__(self, x: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = math.exp(-lam)
        denoised = self.model(x, sigma_batch(x, sigma))
        self.nfe += 1
        return (x - denoised) / sigma, denoised


def _dpm_solver_1(x: torch.Tensor, lam: float, lam_next: float, eps: torch.Tensor) -> torch.Tensor:
    """DPM-Solver-1 (Lu et al. 2022, eq. 3.7): equal to DDIM."""
    h = lam_next - lam
    return x - math.exp(-lam_next) * math.expm1(h) * eps


def _dpm_solver_2(
    f: _EpsCache, x: torch.Tensor, lam: float, lam_next: float, eps: torch.Tensor, r1: float = 0.5
) -> torch.Tensor:
    """DPM-Solver-2 (Lu et al. 2022, Algorithm 4, singlestep)."""
    h = lam_next - lam
    s1 = lam + r1 * h
    u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
    eps_1, _ = f(u1, s1)
    sig_next = math.exp(-lam_next)
    return x - sig_next * math.expm1(h) * eps - sig_next / (2 * r1) * math.expm1(h) * (eps_1 - eps)


def _dpm_solver_3(
    f: _EpsCache, x: torch.Tensor, lam: float, lam_next: float, eps: torch.Tensor,
    r1: float = 1 / 3, r2: float = 2 / 3,
) -> torch.Tensor:
    """DPM-Solver-3 (Lu et al. 2022, Algorithm 5, singlestep)."""
    h = lam_next - lam
    s1, s2 = lam + r1 * h, lam + r2 * h
    u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
    eps_1, _ = f(u1, s1)
    u2 = (
        x - math.exp(-s2) * math.expm1(r2 * h) * eps
        - math.exp(-s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_1 - eps)
    )
    eps_2, _ = f(u2, s2)
    sig_next = math.exp(-lam_next)
    return (
        x - sig_next * math.expm1(h) * eps
        - sig_next / r2 * (math.expm1(h) / h - 1) * (eps_2 - eps)
    )


def _solver_range(s: list[float]) -> tuple[float, float, bool]:
    """(sigma_max, sigma_min > 0, ends_in_zero) of a schedule; DPM-Solver cannot reach 0."""
    positive = [v for v in s if v > 0]
    if not positive:
        raise ValueError("sigmas must contain at least one positive noise level")
    return s[0], min(positive), s[-1] == 0


def _finish(
    model: Denoiser, x: torch.Tensor, sigma_min: float, ends_in_zero: bool,
    callback: StepCallback | None, step: int, total: int,
) -> torch.Tensor:
    """The schedule's last step from sigma_min to 0: the denoiser's x0 estimate."""
    if not ends_in_zero:
        return x
    denoised = model(x, sigma_batch(x, sigma_min))
    report(callback, step, total, sigma_min, x, denoised)
    return denoised


@torch.no_grad()
def sample_dpm_fast(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    eta: float = 0.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver-fast (Lu et al. 2022, sec. 3.4): 3rd-order singlestep, uniform in lambda.

    Only the schedule's end points are used: the budget of len(sigmas) - 1 model
    evaluations is spent on orders [3, ..., 3, 2, 1] or [3, ..., 3, nfe % 3] from sigma_max
    to the smallest positive sigma; if the schedule ends in 0 one evaluation is kept for
    the final denoise.
    """
    s = as_floats(sigmas)
    sigma_max, sigma_min, ends_in_zero = _solver_range(s)
    total = len(s) - 1
    nfe = total - (1 if ends_in_zero else 0)
    if nfe >= 1:
        m = nfe // 3 + 1
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        lams = np.linspace(-math.log(sigma_max), -math.log(sigma_min), len(orders) + 1).tolist()
        f = _EpsCache(model)
        for i, order in enumerate(orders):
            lam, lam_next = lams[i], lams[i + 1]
            if eta:
                sd, su = ancestral_step(math.exp(-lam), math.exp(-lam_next), eta)
                lam_step = min(lams[-1], -math.log(sd))
                su = math.sqrt(max(math.exp(-2 * lam_next) - math.exp(-2 * lam_step), 0.0))
            else:
                lam_step, su = lam_next, 0.0
            eps, denoised = f(x, lam)
            report(callback, min(f.nfe - 1, total - 1), total, math.exp(-lam), x, denoised)
            if order == 1:
                x = _dpm_solver_1(x, lam, lam_step, eps)
            elif order == 2:
                x = _dpm_solver_2(f, x, lam, lam_step, eps)
            else:
                x = _dpm_solver_3(f, x, lam, lam_step, eps)
            if su > 0:
                x = x + randn_like(x, generator) * s_noise * su
    return _finish(model, x, sigma_min, ends_in_zero, callback, total - 1, total)


@torch.no_grad()
def sample_dpm_adaptive(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
    pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81,
    eta: float = 0.0, s_noise: float = 1.0, max_steps: int = 1000,
) -> torch.Tensor:
    """DPM-Solver-12 / -23 with adaptive step size (Lu et al. 2022, Algorithm 2 / sec. 3.4).

    An embedded pair (orders ``order`` - 1 and ``order``) estimates the local error; a PID
    controller (Soderlind 2003; defaults = plain integral control) picks the next step in
    lambda. Only the schedule's end points are used. ``StepInfo.total`` is the schedule's
    length, a nominal figure: the number of accepted steps is not known in advance.
    """
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order}")
    s = as_floats(sigmas)
    sigma_max, sigma_min, ends_in_zero = _solver_range(s)
    total = len(s) - 1
    lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    f = _EpsCache(model)
    # PID controller on the inverse error (Soderlind 2003), order 1.5 with noise.
    k = 1.5 if eta else float(order)
    b1, b2, b3 = (pcoeff + icoeff + dcoeff) / k, -(pcoeff + 2 * dcoeff) / k, dcoeff / k
    errs: list[float] = []
    h = abs(h_init)
    x_prev = x
    accepted = 0
    for _ in range(max_steps):
        if lam >= lam_end - 1e-5:
            break
        lam_next = min(lam_end, lam + h)
        if eta:
            sd, su = ancestral_step(math.exp(-lam), math.exp(-lam_next), eta)
            lam_step = min(lam_end, -math.log(sd))
            su = math.sqrt(max(math.exp(-2 * lam_next) - math.exp(-2 * lam_step), 0.0))
        else:
            lam_step, su = lam_next, 0.0
        eps, denoised = f(x, lam)
        if order == 2:
            x_low = _dpm_solver_1(x, lam, lam_step, eps)
            x_high = _dpm_solver_2(f, x, lam, lam_step, eps)
        else:
            x_low = _dpm_solver_2(f, x, lam, lam_step, eps, r1=1 / 3)
            x_high = _dpm_solver_3(f, x, lam, lam_step, eps)
        delta = torch.maximum(
            torch.full_like(x_low, atol), rtol * torch.maximum(x_low.abs(), x_prev.abs())
        )
        error = float(torch.linalg.vector_norm((x_low - x_high) / delta)) / x.numel() ** 0.5
        inv_error = 1.0 / (error + 1e-8)
        if not errs:
            errs = [inv_error] * 3
        errs[0] = inv_error
        factor = errs[0] ** b1 * errs[1] ** b2 * errs[2] ** b3
        factor = 1 + math.atan(factor - 1)  # soft limiter
        if factor >= accept_safety:
            errs[2], errs[1] = errs[1], errs[0]
            report(callback, min(accepted, total - 1), total, math.exp(-lam), x, denoised)
            x_prev = x_low
            x = x_high
            if su > 0:
                x = x + randn_like(x, generator) * s_noise * su
            lam = lam_next
            accepted += 1
        h *= factor
    else:
        raise RuntimeError(
            f"dpm_adaptive did not reach sigma_min within {max_steps} steps; "
            "raise rtol/atol or max_steps"
        )
    return _finish(model, x, sigma_min, ends_in_zero, callback, total - 1, total)


# ------------------------------------------------------------------ iPNDM and DEIS


_AB_COEFFS: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


@torch.no_grad()
def sample_ipndm(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    max_order: int = 4,
) -> torch.Tensor:
    """Improved PNDM (Zhang & Chen 2023, "DEIS", appendix; Liu et al. 2022 "PNDM").

    Fixed-coefficient Adams-Bashforth of increasing order (1..4) on dx/dsigma, warm-started
    with lower orders instead of PNDM's Runge-Kutta steps.
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
        coeffs = _AB_COEFFS[len(ds) - 1]
        x = x + (s[i + 1] - s[i]) * sum(c * d for c, d in zip(coeffs, ds))
    return x


@torch.no_grad()
def sample_deis(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    max_order: int = 3,
) -> torch.Tensor:
    """rho-AB-DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
    Integrator", eq. 15): exponential integrator in rho = sigma (the VE time), where the
    linear part vanishes and eps is extrapolated by the Lagrange polynomial through the last
    ``max_order`` points, integrated exactly over each variable step.
    """
    if max_order < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order}")
    s = as_floats(sigmas)
    n = len(s) - 1
    eps_hist: list[torch.Tensor] = []  # eps = dx/dsigma, most recent first
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        eps_hist = [to_d(x, s[i], denoised)] + eps_hist[: max_order - 1]
        nodes = [s[i - j] for j in range(len(eps_hist))]
        coeffs = lagrange_integrals(nodes, s[i], s[i + 1])
        x = x + sum(c * e for c, e in zip(coeffs, eps_hist))
    return x


# ----------------------------------------------------------------------------- UniPC


def _unipc_system(
    rks: list[float], hh: float, variant: str
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """R, b, B(h), phi_1 of UniPC (Zhao et al. 2023, Algorithm 2 and eq. 8, "B(h)" choice).

    hh = -h (data prediction). R[i][k] = r_k^i; b_i = i! phi_{i+1}(hh) / B(h).
    """
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    for i in range(1, len(rks) + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return np.array(rows), np.array(b), b_h, h_phi_1


def _unipc_differences(
    ms: list[torch.Tensor], lams: list[float], h: float, order: int
) -> tuple[list[float], list[torch.Tensor]]:
    """r_k and the scaled differences D1_k = (m_{-k} - m_0) / r_k of the last ``order`` points."""
    rks, d1s = [], []
    for k in range(1, order):
        rk = (lams[-(k + 1)] - lams[-1]) / h
        rks.append(rk)
        d1s.append((ms[-(k + 1)] - ms[-1]) / rk)
    return rks + [1.0], d1s


def _unipc_predict(
    x: torch.Tensor, ms: list[torch.Tensor], lams: list[float], sigma: float, sigma_next: float,
    order: int, variant: str,
) -> torch.Tensor:
    """UniP-p (Zhao et al. 2023, Algorithm 2): order-p multistep predictor."""
    h = -math.log(sigma_next) - lams[-1]
    rks, d1s = _unipc_differences(ms, lams, h, order)
    R, b, b_h, h_phi_1 = _unipc_system(rks, -h, variant)
    x_next = (sigma_next / sigma) * x - h_phi_1 * ms[-1]
    if d1s:
        rhos = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        x_next = x_next - b_h * sum(r * d for r, d in zip(rhos, d1s))
    return x_next


def _unipc_correct(
    x_prev: torch.Tensor, m_next: torch.Tensor, ms: list[torch.Tensor], lams: list[float],
    sigma: float, sigma_next: float, order: int, variant: str,
) -> torch.Tensor:
    """UniC-p (Zhao et al. 2023, Algorithm 1): corrects the last step with the new model output.

    Reuses the evaluation the next step needs anyway, so the order rises by one for free.
    """
    h = -math.log(sigma_next) - lams[-1]
    rks, d1s = _unipc_differences(ms, lams, h, order)
    R, b, b_h, h_phi_1 = _unipc_system(rks, -h, variant)
    rhos = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()
    x_next = (sigma_next / sigma) * x_prev - h_phi_1 * ms[-1]
    corr = sum((r * d for r, d in zip(rhos[:-1], d1s)), torch.zeros_like(x_prev))
    return x_next - b_h * (corr + rhos[-1] * (m_next - ms[-1]))


def _sample_unipc(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: StepCallback | None,
    order: int, variant: str, use_corrector: bool, lower_order_final: bool,
) -> torch.Tensor:
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    s = as_floats(sigmas)
    n = len(s) - 1
    ms: list[torch.Tensor] = []  # data predictions x0 at past steps, oldest first
    lams: list[float] = []  # their lambda = -log sigma
    x_prev: torch.Tensor | None = None
    last_order = 1
    for i in range(n):
        denoised = model(x, sigma_batch(x, s[i]))
        report(callback, i, n, s[i], x, denoised)
        if use_corrector and x_prev is not None:
            x = _unipc_correct(x_prev, denoised, ms, lams, s[i - 1], s[i], last_order, variant)
        ms = (ms + [denoised])[-order:]
        lams = (lams + [-math.log(s[i])])[-order:]
        if s[i + 1] == 0:
            x = denoised
            continue
        # Warm up with lower orders; lower_order_final (diffusers' default) also lowers the
        # order on the last steps, where extrapolation over few points is least stable.
        # Without it the global error is O(N^-(p+1)) on a smooth problem.
        this_order = min(order, len(ms), n - i) if lower_order_final else min(order, len(ms))
        x_prev = x
        x = _unipc_predict(x, ms, lams, s[i], s[i + 1], this_order, variant)
        last_order = this_order
    return x


@torch.no_grad()
def sample_uni_pc(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    order: int = 3, use_corrector: bool = True, lower_order_final: bool = True,
) -> torch.Tensor:
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), B(h) = h
    ("bh1", recommended for few steps / unconditional), data prediction."""
    return _sample_unipc(model, x, sigmas, callback, order, "bh1", use_corrector, lower_order_final)


@torch.no_grad()
def sample_uni_pc_bh2(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    callback: StepCallback | None = None, generator: NoiseGenerator = None,
    order: int = 3, use_corrector: bool = True, lower_order_final: bool = True,
) -> torch.Tensor:
    """UniPC with B(h) = e^h - 1 ("bh2", Zhao et al. 2023, sec. 3.3; diffusers' default),
    recommended with classifier-free guidance."""
    return _sample_unipc(model, x, sigmas, callback, order, "bh2", use_corrector, lower_order_final)


EXTRA_SAMPLERS: dict[str, Sampler] = {
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "ipndm": sample_ipndm,
    "deis": sample_deis,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}

