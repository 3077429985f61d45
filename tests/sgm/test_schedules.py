"""Schedules and denoiser scalings against their closed forms (and diffusers' tables)."""

from __future__ import annotations

import math

import pytest
import torch

from sgm.sampling.denoisers import (
    ContinuousModelSampling,
    DiscreteModelSampling,
    eps_scalings,
    v_scalings,
)
from sgm.sampling.schedules import SCHEDULERS, beta_ppf, compute_sigmas, karras

SD = DiscreteModelSampling()


def test_discrete_sd_sigma_range_and_diffusers_table() -> None:
    assert SD.sigma_max == pytest.approx(14.6146, abs=1e-4)
    assert SD.sigma_min == pytest.approx(0.0292, abs=1e-4)
    from diffusers import EulerDiscreteScheduler

    ref = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ac = ref.alphas_cumprod.double()
    # diffusers accumulates alpha_bar in float32; ours in float64 (hence 5e-5).
    torch.testing.assert_close(SD.sigmas.double(), ((1 - ac) / ac).sqrt(), rtol=5e-5, atol=0)


def test_timestep_snapping_and_interpolation() -> None:
    # Snapping: a sigma between two training sigmas goes to the nearer one (in log sigma).
    s10, s11 = float(SD.sigmas[10]), float(SD.sigmas[11])
    near_10 = torch.tensor([math.exp(0.8 * math.log(s10) + 0.2 * math.log(s11))])
    assert SD.timestep(near_10).item() == 10.0
    assert SD.timestep(torch.tensor([SD.sigma_max * 2])).item() == 999.0
    # Unsnapped: fractional timesteps round-trip through sigma().
    fractional = DiscreteModelSampling(snap=False)
    t = torch.tensor([0.0, 3.25, 500.5, 998.9])
    torch.testing.assert_close(fractional.timestep(fractional.sigma(t)), t, atol=1e-3, rtol=0)


def test_zero_terminal_snr_rescale() -> None:
    ztsnr = DiscreteModelSampling(prediction="v", zero_terminal_snr=True)
    # Lin et al. 2024 Alg. 1 keeps alpha_bar_0 and makes the last SNR (near) zero.
    assert ztsnr.sigma_min == pytest.approx(SD.sigma_min, rel=1e-5)
    assert ztsnr.sigma_max > 1000
    assert torch.all(ztsnr.sigmas[1:] > ztsnr.sigmas[:-1])
    with pytest.raises(ValueError, match="v-prediction"):
        DiscreteModelSampling(prediction="eps", zero_terminal_snr=True)


@pytest.mark.parametrize("prediction", ["eps", "v", "edm"])
def test_scalings_recover_x0_from_exact_network_output(prediction: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + s * n
    if prediction == "eps":
        ms, output = DiscreteModelSampling(prediction="eps"), n
    elif prediction == "v":
        # v = alpha eps - sigma_vp x0 with alpha = 1/sqrt(1 + s^2) (Salimans & Ho 2022).
        ms = DiscreteModelSampling(prediction="v")
        output = (n - s * x0) / (1 + s**2).sqrt()
    else:
        ms = ContinuousModelSampling(sigma_data=0.5)
        c_skip, c_out = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt()
        output = (x0 - c_skip * x) / c_out  # the F that makes D exact (EDM eq. 7)
    torch.testing.assert_close(ms.denoised_from_output(x, sigma, output), x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ms.output_from_denoised(x, sigma, x0), output, rtol=1e-4, atol=1e-5)
    assert eps_scalings(sigma)[2].shape == v_scalings(sigma)[2].shape == (3,)


def test_karras_matches_eq5() -> None:
    n, rho = 12, 7.0
    sigmas = karras(SD, n)
    lo, hi = SD.sigma_min, SD.sigma_max
    for i in range(n):
        expected = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        assert float(sigmas[i]) == pytest.approx(expected, rel=1e-5)
    assert float(sigmas[-1]) == 0.0


def test_exponential_and_kl_optimal_closed_forms() -> None:
    exp = SCHEDULERS["exponential"](SD, 8)[:-1].double()
    ratios = exp[1:] / exp[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()), rtol=1e-5, atol=0)
    kl = SCHEDULERS["kl_optimal"](SD, 8)[:-1].double()
    angles = kl.atan()
    steps = angles[:-1] - angles[1:]
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()), rtol=1e-4, atol=0)
    assert float(kl[0]) == pytest.approx(SD.sigma_max, rel=1e-5)


def test_normal_is_uniform_in_timestep_and_ddim_uniform_matches_diffusers() -> None:
    fractional = DiscreteModelSampling(snap=False)
    t = fractional.timestep(SCHEDULERS["normal"](fractional, 10)[:-1])
    torch.testing.assert_close(t, torch.linspace(999, 0, 10), atol=2e-3, rtol=0)
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        steps_offset=1, set_alpha_to_one=True, clip_sample=False)
    ref.set_timesteps(20)
    ac = ref.alphas_cumprod[ref.timesteps].double()
    expected = ((1 - ac) / ac).sqrt()
    torch.testing.assert_close(SCHEDULERS["ddim_uniform"](SD, 20)[:-1].double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize(("a", "b", "ppf"), [
    (1.0, 1.0, lambda q: q),
    (2.0, 1.0, math.sqrt),  # CDF x^2
    (0.5, 0.5, lambda q: math.sin(math.pi * q / 2) ** 2),  # arcsine law
])
def test_beta_ppf_closed_forms(a: float, b: float, ppf) -> None:  # type: ignore[no-untyped-def]
    for q in (0.05, 0.3, 0.5, 0.9):
        assert beta_ppf(q, a, b) == pytest.approx(ppf(q), abs=1e-9)


def test_beta_schedule_puts_the_median_on_its_training_step() -> None:
    # Beta(1, 1) at q = 0.5 is exactly 0.5: with 999 as the last step the timestep is round(499.5) = 500
    # (ComfyUI's scipy answer); bisection alone gave 0.4999999999999999 and 499.
    assert beta_ppf(0.5, 1.0, 1.0) == 0.5
    sigmas = SCHEDULERS["beta"](SD, 2, alpha=1.0, beta_=1.0)  # quantiles 1 and 0.5
    torch.testing.assert_close(sigmas[1], SD.sigmas[500])


def test_linear_quadratic_shape() -> None:
    sigmas = SCHEDULERS["linear_quadratic"](SD, 10)
    taus = 1 - sigmas / SD.sigma_max
    lin = taus[1:6] - taus[:5]
    torch.testing.assert_close(lin, torch.full_like(lin, 0.025 / 5), rtol=1e-4, atol=1e-7)
    assert float(taus[5]) == pytest.approx(0.025, abs=1e-6)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_schedule_is_descending_and_ends_in_zero(name: str) -> None:
    for steps in (1, 4, 25):
        sigmas = SCHEDULERS[name](SD, steps)
        assert sigmas.dtype == torch.float32 and sigmas.ndim == 1
        assert 2 <= len(sigmas) <= steps + 1 and (name == "beta" or len(sigmas) == steps + 1)
        assert float(sigmas[-1]) == 0.0 and torch.all(sigmas[:-1] > 0)
        assert torch.all(sigmas[1:] < sigmas[:-1]), sigmas
        assert float(sigmas[0]) <= SD.sigma_max * (1 + 1e-5)


def test_denoise_keeps_the_tail_of_a_longer_schedule() -> None:
    full = SCHEDULERS["karras"](SD, 20)
    tail = compute_sigmas("karras", SD, 10, denoise=0.5)
    torch.testing.assert_close(tail, full[-11:])
    assert len(compute_sigmas("normal", SD, 10, denoise=0.0)) == 0
    torch.testing.assert_close(compute_sigmas("simple", SD, 7), SCHEDULERS["simple"](SD, 7))
    with pytest.raises(ValueError, match="karras"):
        compute_sigmas("karas", SD, 10)
    with pytest.raises(ValueError, match="denoise"):
        compute_sigmas("karras", SD, 10, denoise=1.5)


def test_continuous_model_sampling() -> None:
    edm = ContinuousModelSampling(sigma_min_=0.002, sigma_max_=80.0, sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.5, 80.0])
    # EDM Table 1: c_noise = log(sigma) / 4.
    torch.testing.assert_close(edm.timestep(sigma), sigma.log() / 4)
    torch.testing.assert_close(edm.sigma(edm.timestep(sigma)), sigma)
    sigmas = karras(edm, 18)
    assert float(sigmas[0]) == pytest.approx(80.0, rel=1e-5)
    assert float(sigmas[-2]) == pytest.approx(0.002, rel=1e-4)
    assert len(SCHEDULERS["simple"](edm, 10)) == 11
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        ContinuousModelSampling(sigma_min_=1.0, sigma_max_=0.5)
