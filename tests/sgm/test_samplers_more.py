"""sgm.sampling.samplers_more: SA-Solver's extra switches, ER-SDE's solver types, LCM upscale, on
closed-form denoisers (Gaussian data: the exact x0 estimate is known)."""

from __future__ import annotations

import math

import torch

from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.samplers_comfy import _sa_coefficients, sample_er_sde, sample_sa_solver
from sgm.sampling.samplers import sample_lcm
from sgm.sampling.samplers_more import (
    PowerNoiseScaler,
    er_sde_options,
    lcm_upscale_factors,
    sample_lcm_upscale,
    sample_sa_solver_ext,
    simple_order_2_coefficients,
)
from sgm.sampling.schedules import compute_sigmas

SD = DiscreteModelSampling()
MU, S = 0.5, 0.8


def gaussian(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact denoiser for x0 ~ N(MU, S^2) per element."""
    sigma = sigma.view(-1, 1, 1, 1)
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def start(sigmas: torch.Tensor, shape: tuple[int, ...] = (2, 4, 6, 6)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(5)) * float(sigmas[0])


def ddim(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Reference: x' = (s'/s) x + (1 - s'/s) D, the first-order deterministic step."""
    s = [float(v) for v in sigmas]
    for i in range(len(s) - 1):
        d = gaussian(x, torch.full((x.shape[0],), s[i]))
        x = d if s[i + 1] == 0 else s[i + 1] / s[i] * x + (1 - s[i + 1] / s[i]) * d
    return x


def test_sa_solver_ext_equals_library_sa_solver_with_its_options() -> None:
    sigmas = compute_sigmas("karras", SD, 10)
    x = start(sigmas)
    for pece in (False, True):
        ours = sample_sa_solver_ext(gaussian, x, sigmas, generator=torch.Generator().manual_seed(1), eta=1.0,
                                    tau_interval=(0.5, 5.0), use_pece=pece)
        library = (sample_sa_solver if not pece else __import__(
            "sgm.sampling.samplers_comfy", fromlist=["x"]).sample_sa_solver_pece)(
            gaussian, x, sigmas, generator=torch.Generator().manual_seed(1), eta=1.0, tau_interval=(0.5, 5.0))
        torch.testing.assert_close(ours, library, rtol=1e-6, atol=1e-6)


def test_sa_solver_without_corrector_of_order_1_is_ddim() -> None:
    sigmas = compute_sigmas("karras", SD, 6)
    x = start(sigmas)
    out = sample_sa_solver_ext(gaussian, x, sigmas, eta=0.0, predictor_order=1, corrector_order=0)
    torch.testing.assert_close(out, ddim(x, sigmas), rtol=1e-5, atol=1e-5)
    with_corrector = sample_sa_solver_ext(gaussian, x, sigmas, eta=0.0, predictor_order=1, corrector_order=2)
    assert (with_corrector - out).abs().max() > 1e-4  # the corrector does change the result


def test_simple_order_2_weights_by_hand_and_close_to_exact_for_small_steps() -> None:
    tau, lam_prev, lam, lam_next = 0.5, -1.0, -0.8, -0.7
    k, h = 1.25, 0.1
    pred = simple_order_2_coefficients(lam_prev, lam, lam_next, tau, corrector=False)
    assert math.isclose(pred[0], 0.5 * k * h * h / (lam_prev - lam))
    assert math.isclose(sum(pred), 1 - math.exp(-k * h))
    corr = simple_order_2_coefficients(lam_prev, lam, lam_next, tau, corrector=True)
    assert math.isclose(corr[1], 0.5 * k * h) and math.isclose(sum(corr), 1 - math.exp(-k * h))
    exact = _sa_coefficients([lam_prev, lam], lam, lam_next, tau)
    assert all(abs(a - b) < 0.01 for a, b in zip(pred, exact))
    sigmas = compute_sigmas("karras", SD, 40)  # small steps: the simplification's error is small
    x = start(sigmas)
    simple = sample_sa_solver_ext(gaussian, x, sigmas, eta=0.0, predictor_order=2, corrector_order=2,
                                  simple_order_2=True)
    full = sample_sa_solver_ext(gaussian, x, sigmas, eta=0.0, predictor_order=2, corrector_order=2)
    assert 0 < (simple - full).abs().max() < 0.05


def test_er_sde_solver_types() -> None:
    assert er_sde_options("ER-SDE", 2, 5.0, 1.0) == {"max_stage": 2, "s_noise": 1.0}  # eta unused
    assert er_sde_options("Reverse-time SDE", 3, 1.0, 0.5)["noise_scaler"] == PowerNoiseScaler(2.0)
    assert er_sde_options("Reverse-time SDE", 3, 0.0, 0.5) == er_sde_options("ODE", 3, 7.0, 0.5)
    assert er_sde_options("ODE", 3, 1.0, 1.0)["s_noise"] == 0.0
    sigmas = compute_sigmas("karras", SD, 6)
    x = start(sigmas)
    ode = sample_er_sde(gaussian, x, sigmas, **{**er_sde_options("ODE", 1, 0.0, 1.0)})
    torch.testing.assert_close(ode, ddim(x, sigmas), rtol=1e-5, atol=1e-5)


def test_reverse_time_sde_samples_the_data_distribution() -> None:
    sigmas = compute_sigmas("karras", SD, 30)
    x = start(sigmas, (4, 4, 32, 32))
    out = sample_er_sde(gaussian, x, sigmas, generator=torch.Generator().manual_seed(2),
                        **er_sde_options("Reverse-time SDE", 3, 1.0, 1.0))
    assert abs(out.mean().item() - MU) < 0.03
    assert abs(out.std().item() - S) < 0.03


def test_lcm_upscale_grows_the_latent_and_is_lcm_at_scale_1() -> None:
    assert lcm_upscale_factors(4, 2.0, None) == [float(v) for v in torch.linspace(1, 2, 3)[1:]]  # 5 sigmas
    assert lcm_upscale_factors(4, 3.0, 1) == [3.0]
    sigmas = compute_sigmas("karras", SD, 4)
    x = start(sigmas, (1, 4, 8, 8))
    big = sample_lcm_upscale(gaussian, x, sigmas, generator=torch.Generator().manual_seed(0), total_upscale=2.0,
                             upscale_method="bilinear")
    assert big.shape == (1, 4, 16, 16)
    same = sample_lcm_upscale(gaussian, x, sigmas, generator=torch.Generator().manual_seed(0), total_upscale=1.0,
                              upscale_method="bilinear")
    torch.testing.assert_close(same, sample_lcm(gaussian, x, sigmas, generator=torch.Generator().manual_seed(0)))
