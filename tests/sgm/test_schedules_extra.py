"""Parametric schedules (sgm.sampling.schedules_extra) and the sigma operations of the custom-sampling
nodes (sgm.sampling.sigma_ops) against their formulas written out here in plain floats, and Align Your
Steps against NVIDIA's published table."""

from __future__ import annotations

import math

import pytest
import torch

from sgm.sampling import schedules_extra as extra
from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.schedules import SCHEDULERS
from sgm.sampling.sigma_ops import PERCENT_ZERO_SIGMA, extend_intermediate_sigmas, sampling_percent_to_sigma

SD = DiscreteModelSampling()
S_MAX, S_MIN = 14.614642, 0.0291675  # the nodes' default range (SD's discrete sigmas)


def ramp(n: int) -> list[float]:
    return [i / (n - 1) for i in range(n)] if n > 1 else [0.0]


def close(actual: torch.Tensor, expected: list[float], rel: float = 1e-6) -> None:
    assert actual.dtype == torch.float32
    assert actual.tolist() == pytest.approx(expected, rel=rel, abs=1e-7)


@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_karras_is_eq5_by_hand(steps: int) -> None:
    for rho in (7.0, 3.0):
        a, b = S_MAX ** (1 / rho), S_MIN ** (1 / rho)
        close(extra.karras_range(steps, S_MAX, S_MIN, rho), [(a + t * (b - a)) ** rho for t in ramp(steps)] + [0.0])


def test_exponential_and_polyexponential_by_hand() -> None:
    steps = 9
    log_max, log_min = math.log(S_MAX), math.log(S_MIN)
    expected = [math.exp(log_max + t * (log_min - log_max)) for t in ramp(steps)] + [0.0]
    close(extra.exponential_range(steps, S_MAX, S_MIN), expected)
    close(extra.polyexponential(steps, S_MAX, S_MIN, 1.0), expected)  # rho 1 is exponential
    rho = 2.5
    close(extra.polyexponential(steps, S_MAX, S_MIN, rho),
          [math.exp(log_min + (1 - t) ** rho * (log_max - log_min)) for t in ramp(steps)] + [0.0])
    with pytest.raises(ValueError, match="sigma_min must be > 0"):
        extra.exponential_range(5, S_MAX, 0.0)


def test_vp_by_hand() -> None:
    steps, beta_d, beta_min, eps_s = 6, 19.9, 0.1, 1e-3
    ts = [1 + i * (eps_s - 1) / (steps - 1) for i in range(steps)]
    close(extra.vp(steps, beta_d, beta_min, eps_s),
          [math.sqrt(math.exp(beta_d * t * t / 2 + beta_min * t) - 1) for t in ts] + [0.0], rel=1e-5)


def test_laplace_by_hand_without_final_zero() -> None:
    for steps, mu, b in ((5, 0.0, 0.5), (12, 0.3, 1.2)):
        expected = []
        for x in ramp(steps):
            sign = (0.5 - x > 0) - (0.5 - x < 0)
            lam = mu - b * sign * math.log(1 - 2 * abs(0.5 - x) + 1e-5)
            expected.append(min(max(math.exp(lam), S_MIN), S_MAX))
        close(extra.laplace(steps, S_MAX, S_MIN, mu, b), expected)
    # The middle of an odd ramp is e^mu; the ends are clamped to the range, and there is no final 0.
    sigmas = extra.laplace(5, S_MAX, S_MIN)
    assert sigmas.tolist() == pytest.approx([S_MAX, math.sqrt(2), 1.0, 1 / math.sqrt(2), S_MIN], rel=1e-4)


def test_beta_sampling_defaults_are_ksampler_beta_and_shape_matters() -> None:
    torch.testing.assert_close(extra.beta_sampling(SD, 12), SCHEDULERS["beta"](SD, 12))
    # Beta(1, 1) is uniform: timesteps 999 (1 - i/N) rounded (999, 799.2, 599.4, 399.6, 199.8).
    uniform = extra.beta_sampling(SD, 5, 1.0, 1.0)
    torch.testing.assert_close(uniform, torch.cat([SD.sigmas[[999, 799, 599, 400, 200]].float(), torch.zeros(1)]))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        extra.beta_sampling(SD, 4, 0.0, 0.6)


AYS_SD1 = [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
           0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582]


def test_align_your_steps_published_table_and_log_linear_interpolation() -> None:
    close(extra.align_your_steps("SD1", 10), AYS_SD1[:-1] + [0.0])
    # 20 steps: 21 points at half the table's spacing: the table's points and their geometric means.
    twenty = []
    for i in range(10):
        twenty += [AYS_SD1[i], math.sqrt(AYS_SD1[i] * AYS_SD1[i + 1])]
    close(extra.align_your_steps("SD1", 20), twenty + [0.0])
    # 5 steps: every other point of the table.
    close(extra.align_your_steps("SD1", 5), AYS_SD1[0:10:2] + [0.0])
    assert extra.align_your_steps("SDXL", 10)[3].item() == pytest.approx(2.1811480769, rel=1e-6)
    assert extra.align_your_steps("SVD", 10)[0].item() == pytest.approx(700.0)


def test_align_your_steps_denoise_keeps_the_tail_of_the_same_schedule() -> None:
    full = extra.align_your_steps("SDXL", 10)
    torch.testing.assert_close(extra.align_your_steps("SDXL", 10, denoise=0.5), full[-6:])
    assert len(extra.align_your_steps("SD1", 5, denoise=0.5)) == 3  # round(2.5) == 2 steps, as Python rounds
    assert len(extra.align_your_steps("SD1", 10, denoise=0.0)) == 0
    with pytest.raises(ValueError, match="model_type"):
        extra.align_your_steps("SD2", 10)  # type: ignore[arg-type]


def test_sampling_percent_to_sigma() -> None:
    # 25 % of sampling: timestep 0.75 x 999 = 749.25, between training sigmas 749 and 750 in log sigma.
    logs = SD.sigmas.double().log()
    expected = math.exp(0.75 * float(logs[749]) + 0.25 * float(logs[750]))
    assert sampling_percent_to_sigma(SD, 0.25) == pytest.approx(expected, rel=1e-5)
    assert sampling_percent_to_sigma(SD, 0.0) == PERCENT_ZERO_SIGMA
    assert sampling_percent_to_sigma(SD, 1.0) == 0.0
    assert sampling_percent_to_sigma(SD, 0.0, actual=True) == pytest.approx(SD.sigma_max)
    assert sampling_percent_to_sigma(SD, 1.0, actual=True) == pytest.approx(SD.sigma_min)
    assert sampling_percent_to_sigma(SD, 0.25, actual=True) == sampling_percent_to_sigma(SD, 0.25)


def test_extend_intermediate_sigmas_by_hand() -> None:
    sigmas = torch.tensor([14.0, 10.0, 5.0, 0.0])
    # end_at_sigma 6: the steps starting at 14 and 10 are split, the one at 5 is not.
    close(extend_intermediate_sigmas(sigmas, 2, -1.0, 6.0, "linear"), [14.0, 12.0, 10.0, 7.5, 5.0, 0.0])
    # start_at_sigma 12: only the step from 10 (and not the one from 14) is split, into 4.
    c = [math.sin(k / 4 * math.pi / 2) for k in (1, 2, 3)]
    close(extend_intermediate_sigmas(sigmas, 4, 12.0, 6.0, "cosine"),
          [14.0, 10.0] + [10.0 - 5.0 * u for u in c] + [5.0, 0.0])
    s = [1 - math.cos(k / 3 * math.pi / 2) for k in (1, 2)]
    close(extend_intermediate_sigmas(sigmas, 3, -1.0, 0.0, "sine"),
          [14.0] + [14.0 - 4.0 * u for u in s] + [10.0] + [10.0 - 5.0 * u for u in s]
          + [5.0] + [5.0 - 5.0 * u for u in s] + [0.0])
    torch.testing.assert_close(extend_intermediate_sigmas(sigmas, 1, -1.0, 0.0, "linear"), sigmas)
    assert sigmas.tolist() == [14.0, 10.0, 5.0, 0.0]  # input untouched
    with pytest.raises(ValueError, match="spacing"):
        extend_intermediate_sigmas(sigmas, 2, -1.0, 0.0, "cubic")  # type: ignore[arg-type]


def test_gits_published_schedules() -> None:
    from sgm.sampling.gits_table import GITS_SCHEDULES

    # Spot checks against the published table (sigma_max first; the last sigma becomes 0).
    close(extra.gits(0.80, 2), [14.61464119, 7.49001646, 0.0])
    close(extra.gits(1.00, 2), [14.61464119, 1.56271636, 0.0])
    close(extra.gits(1.00, 5), [14.61464119, 7.11996698, 3.07277966, 1.56271636, 0.59516323, 0.0])
    assert sorted(GITS_SCHEDULES) == [round(0.8 + 0.05 * i, 2) for i in range(15)]
    for coeff in GITS_SCHEDULES:
        for steps in range(2, 21):
            sigmas = extra.gits(coeff, steps)
            assert len(sigmas) == steps + 1 and float(sigmas[0]) == pytest.approx(14.61464119)
            assert torch.all(sigmas[1:] < sigmas[:-1]) and float(sigmas[-1]) == 0.0


def test_gits_longer_schedules_interpolate_the_20_step_one() -> None:
    twenty = extra.gits(1.2, 20).double()
    forty = extra.gits(1.2, 40).double()
    torch.testing.assert_close(forty[0:-1:2], twenty[:-1], rtol=1e-6, atol=0)  # the table's points
    mid = (twenty[:-2] * twenty[1:-1]).sqrt()  # and their geometric means (the last mean involves sigma_min)
    torch.testing.assert_close(forty[1:-2:2], mid, rtol=1e-6, atol=0)
    torch.testing.assert_close(extra.gits(1.2, 10, denoise=0.4), extra.gits(1.2, 10)[-5:])
    with pytest.raises(ValueError, match="coeff must be one of"):
        extra.gits(0.83, 10)
