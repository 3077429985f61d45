"""Sigma operations, x0 / LCM model samplings, dual CFG and timestep-ranged conditions
(``sgm.sampling.sigma_ops``, ``model_sampling_extra``, ``guidance_extra``)."""

from __future__ import annotations

import math

import pytest
import torch

from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.guidance_extra import (RANGE_KEY, DualCFGDenoiser, TimestepRangeDenoiser, active_conditions,
                                         dual_cfg)
from sgm.sampling.guiders import GuidedDenoiser
from sgm.sampling.model_sampling_extra import (LCMDiscreteModelSampling, X0DiscreteModelSampling,
                                               discrete_model_sampling)
from sgm.sampling.schedules import compute_sigmas
from sgm.sampling.sigma_ops import (flip_sigmas, percent_to_sigma, sd_turbo_sigmas, set_first_sigma,
                                    split_sigmas, split_sigmas_denoise, step_range)
from sgm.text.conditioning import Condition

SIGMAS = torch.tensor([14.6, 8.0, 4.0, 2.0, 1.0, 0.0])
SD = DiscreteModelSampling()


def test_split_sigmas_share_the_cut_and_leave_the_input() -> None:
    original = SIGMAS.clone()
    high, low = split_sigmas(SIGMAS, 2)
    assert high.tolist() == pytest.approx([14.6, 8.0, 4.0]) and low.tolist() == pytest.approx([4.0, 2.0, 1.0, 0.0])
    high[0] = -1
    assert torch.equal(SIGMAS, original)
    high, low = split_sigmas(SIGMAS, 99)  # past the end: everything high, nothing low
    assert len(high) == 6 and low.numel() == 0


def test_split_sigmas_denoise_gives_the_low_half_denoise_times_steps() -> None:
    high, low = split_sigmas_denoise(SIGMAS, 0.4)  # 5 steps: 2 low
    assert high.tolist() == pytest.approx([14.6, 8.0, 4.0, 2.0]) and low.tolist() == pytest.approx([2.0, 1.0, 0.0])
    high, low = split_sigmas_denoise(SIGMAS, 1.0)
    assert high.tolist() == pytest.approx([14.6]) and torch.equal(low, SIGMAS)
    high, low = split_sigmas_denoise(SIGMAS, 0.0)
    assert torch.equal(high, SIGMAS) and low.tolist() == [0.0]


def test_flip_and_set_first_sigma() -> None:
    flipped = flip_sigmas(SIGMAS)
    assert flipped.tolist() == pytest.approx([1e-4, 1.0, 2.0, 4.0, 8.0, 14.6]) and SIGMAS[-1] == 0
    assert flip_sigmas(torch.tensor([3.0, 1.0])).tolist() == [1.0, 3.0]
    assert set_first_sigma(SIGMAS, 136.0).tolist() == pytest.approx([136.0, 8.0, 4.0, 2.0, 1.0, 0.0])
    assert SIGMAS[0] == pytest.approx(14.6)


def test_sd_turbo_sigmas_are_timesteps_999_899_and_so_on() -> None:
    sigmas = sd_turbo_sigmas(SD, 3)
    expected = SD.sigma(torch.tensor([999.0, 899.0, 799.0]))
    assert torch.allclose(sigmas[:3], expected) and sigmas[-1] == 0 and len(sigmas) == 4
    assert sigmas[0] == pytest.approx(SD.sigma_max, rel=1e-5)
    half = sd_turbo_sigmas(SD, 2, denoise=0.5)  # starts 5 timesteps down: 499, 399
    assert torch.allclose(half[:2], SD.sigma(torch.tensor([499.0, 399.0])))
    with pytest.raises(ValueError, match="steps must be in 1..10"):
        sd_turbo_sigmas(SD, 11)


def test_step_range_is_ksampler_advanced_rule() -> None:
    full = compute_sigmas("normal", SD, 4)
    assert torch.equal(step_range(full, 0, 10000, True), full)
    first = step_range(full, 0, 2, force_full_denoise=False)
    assert torch.equal(first, full[:3])  # ends at a noisy sigma: leftover noise
    assert step_range(full, 0, 2, force_full_denoise=True).tolist() == pytest.approx([*full[:2].tolist(), 0.0])
    assert torch.equal(step_range(full, 2, 10000, True), full[2:])
    assert step_range(full, 4, 10000, True).numel() == 0  # nothing left to sample
    assert full[2] != 0  # the input is untouched


def test_percent_to_sigma_maps_sampling_fractions_to_the_model_timesteps() -> None:
    assert percent_to_sigma(SD, 0.0) == math.inf and percent_to_sigma(SD, 1.0) == 0.0
    assert percent_to_sigma(SD, 0.5) == pytest.approx(float(SD.sigma(torch.tensor(499.5))), rel=1e-5)
    assert percent_to_sigma(SD, 0.001) == pytest.approx(float(SD.sigma(torch.tensor(998.001))), rel=1e-4)


def test_x0_sampling_returns_the_network_output() -> None:
    ms = X0DiscreteModelSampling()
    x, sigma, out = torch.randn(2, 4, 3, 3), torch.tensor([3.0, 0.5]), torch.randn(2, 4, 3, 3)
    assert torch.equal(ms.denoised_from_output(x, sigma, out), out)
    assert ms.scalings(sigma, 4).c_in.flatten().tolist() == pytest.approx([1 / math.sqrt(10), 1 / math.sqrt(1.25)])
    assert ms.parameterization == "x0" and ms.prediction == "eps"


def test_lcm_sampling_has_50_timesteps_and_the_consistency_boundary_condition() -> None:
    ms = LCMDiscreteModelSampling()
    assert len(ms.sigmas) == 50 and ms.sigma_max == pytest.approx(SD.sigma_max)
    assert ms.sigmas[0] == pytest.approx(float(SD.sigmas[19]))
    sigma = ms.sigmas[10:11]  # timestep 219
    assert ms.timestep(sigma).item() == 219.0 and ms.sigma(torch.tensor([219.0])) == pytest.approx(float(sigma))
    x, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    t = 2190.0  # timestep x 10
    c_skip, c_out = 0.25 / (t * t + 0.25), t / math.sqrt(t * t + 0.25)
    expected = c_out * (x - sigma * eps) + c_skip * x
    assert torch.allclose(ms.denoised_from_output(x, sigma, eps), expected, atol=1e-5)
    assert compute_sigmas("normal", ms, 4)[0] == pytest.approx(ms.sigma_max)


def test_discrete_model_sampling_choices() -> None:
    assert discrete_model_sampling("v_prediction").prediction == "v"
    assert discrete_model_sampling("v_prediction", zsnr=True).sigma_max > 1000
    assert discrete_model_sampling("eps").prediction == "eps"
    with pytest.raises(ValueError, match="zsnr .* needs v_prediction"):
        discrete_model_sampling("eps", zsnr=True)


def test_dual_cfg_formulas() -> None:
    pos, mid, neg = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([1.0])
    # regular: neg + 4 (mid - neg) + 2 (pos - mid) = 1 + 4 + 2
    assert dual_cfg(pos, mid, neg, 2.0, 4.0, "regular").item() == 7.0
    # nested: text = mid + 2 (pos - mid) = 4; neg + 4 (text - neg) = 13
    assert dual_cfg(pos, mid, neg, 2.0, 4.0, "nested").item() == 13.0
    # with cond1 == cond2 both styles are plain CFG at scale cfg_cond2_negative
    assert dual_cfg(mid, mid, neg, 5.0, 4.0, "regular").item() == dual_cfg(mid, mid, neg, 5.0, 4.0, "nested").item() == 5.0


class ContextUNet(torch.nn.Module):
    """A stand-in UNet whose output is the mean of its context, broadcast (easy to predict)."""

    in_channels = 4

    def forward(self, x, timesteps, context=None, y=None):
        return x * 0 + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def cond(value: float, **extra) -> Condition:
    return Condition(context=torch.full((1, 2, 3), value), extra=extra)


def test_dual_cfg_denoiser_combines_three_branches() -> None:
    unet, x, sigma = ContextUNet(), torch.randn(1, 4, 2, 2), torch.tensor([2.0])
    dual = DualCFGDenoiser(unet, SD, [cond(3.0)], [cond(2.0)], [cond(1.0)], 2.0, 4.0, "regular")
    single = [GuidedDenoiser(unet, SD, [cond(v)])(x, sigma) for v in (3.0, 2.0, 1.0)]
    assert torch.allclose(dual(x, sigma), dual_cfg(*single, 2.0, 4.0, "regular"))
    assert dual.unet_calls == 3


def test_timestep_ranges_pick_the_conditions_that_apply() -> None:
    early, late = cond(1.0, **{RANGE_KEY: (0.0, 0.5)}), cond(5.0, **{RANGE_KEY: (0.5, 1.0)})
    high, low = SD.sigma_max, SD.sigma_min
    assert active_conditions([early, late, cond(0.0)], SD, high) == (0, 2)
    assert active_conditions([early, late, cond(0.0)], SD, low) == (1, 2)
    unet, x = ContextUNet(), torch.zeros(1, 4, 2, 2)
    ranged = TimestepRangeDenoiser(unet, SD, [early, late])
    plain = GuidedDenoiser(unet, SD, [cond(1.0)])
    assert torch.allclose(ranged(x, torch.tensor([high])), plain(x, torch.tensor([high])))
    assert torch.allclose(ranged(x, torch.tensor([low])), GuidedDenoiser(unet, SD, [cond(5.0)])(x, torch.tensor([low])))
    gap = TimestepRangeDenoiser(unet, SD, [cond(1.0, **{RANGE_KEY: (0.0, 0.2)})])
    with pytest.raises(ValueError, match="no positive condition applies"):
        gap(x, torch.tensor([low]))
