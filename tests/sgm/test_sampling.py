"""sgm.sampling.sample.sample: seed rule, img2img, inpainting mask, progress and cancellation."""

from __future__ import annotations

import pytest
import torch

from sgm.text.conditioning import Condition
from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.guiders import GuidedDenoiser
from sgm.sampling.samplers import StepInfo
from sgm.sampling.sample import SamplingCancelled, make_noise, sample
from sgm.sampling.schedules import compute_sigmas
from tests.sgm.test_guiders import PointwiseUNet

SD = DiscreteModelSampling()


def _model(cfg: float = 1.0) -> GuidedDenoiser:
    ctx = torch.randn(1, 77, 8, generator=torch.Generator().manual_seed(3))
    negative = [Condition(context=torch.zeros(1, 77, 8))] if cfg != 1.0 else None
    return GuidedDenoiser(PointwiseUNet(), SD, [Condition(context=ctx)], negative, cfg=cfg)


def _latent(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_noise_is_cpu_seeded_per_item() -> None:
    noise = make_noise((3, 4, 8, 8), seed=42)
    for i in range(3):
        expected = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(42 + i))
        assert torch.equal(noise[i], expected)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_2m"])
def test_batch_item_i_equals_single_run_with_seed_plus_i(sampler: str) -> None:
    sigmas = compute_sigmas("karras", SD, 6)
    zeros = torch.zeros(3, 4, 8, 8)
    batch = sample(_model(cfg=5.0), sampler, sigmas, zeros, seed=100)
    for i in range(3):
        single = sample(_model(cfg=5.0), sampler, sigmas, zeros[i:i + 1], seed=100 + i)
        torch.testing.assert_close(batch[i:i + 1], single, rtol=1e-5, atol=1e-5)
    again = sample(_model(cfg=5.0), sampler, sigmas, zeros, seed=100)
    assert torch.equal(batch, again)
    assert not torch.allclose(batch, sample(_model(cfg=5.0), sampler, sigmas, zeros, seed=101))


def test_full_denoise_starts_on_the_vp_prior() -> None:
    # Full-strength txt2img: x_T = sqrt(1 + sigma_max^2) * noise for an eps model.
    seen: list[StepInfo] = []
    sample(_model(), "euler", compute_sigmas("normal", SD, 2), torch.zeros(1, 4, 8, 8), seed=5,
           callback=seen.append)
    expected = make_noise((1, 4, 8, 8), 5) * (1 + SD.sigma_max**2) ** 0.5
    torch.testing.assert_close(seen[0].x, expected)


def test_img2img_denoise_zero_returns_input_and_partial_starts_at_the_tail() -> None:
    latent = _latent()
    sigmas = compute_sigmas("karras", SD, 10, denoise=0.0)
    out = sample(_model(), "euler", sigmas, latent, seed=0)
    assert torch.equal(out, latent) and out is not latent
    seen: list[StepInfo] = []
    sigmas = compute_sigmas("karras", SD, 4, denoise=0.4)
    sample(_model(), "euler", sigmas, latent, seed=0, callback=seen.append)
    assert [s.step for s in seen] == [0, 1, 2, 3]
    # Partial denoise starts at latent + sigma_0 * noise (not the VP prior).
    torch.testing.assert_close(seen[0].x, latent + float(sigmas[0]) * make_noise(tuple(latent.shape), 0))


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "uni_pc"])
def test_noise_mask_keeps_unmasked_latent_exactly(sampler: str) -> None:
    latent = _latent(2)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1.0
    seen: list[StepInfo] = []
    out = sample(_model(cfg=3.0), sampler, compute_sigmas("karras", SD, 5, denoise=0.8), latent,
                 seed=1, noise_mask=mask, callback=seen.append)
    keep = mask == 0
    assert torch.equal(out.expand_as(latent)[keep.expand_as(latent)], latent[keep.expand_as(latent)])
    assert not torch.allclose(out[:, :, 2:6, 2:6], latent[:, :, 2:6, 2:6])
    # Every step's denoised estimate already holds the kept region at the input latent.
    assert torch.equal(seen[-1].denoised[:, :, :2], latent[:, :, :2])


def test_cancel_is_checked_every_step() -> None:
    seen: list[StepInfo] = []
    with pytest.raises(SamplingCancelled):
        sample(_model(), "euler", compute_sigmas("karras", SD, 10), torch.zeros(1, 4, 8, 8), seed=0,
               callback=seen.append, cancel=lambda: len(seen) >= 3)
    assert len(seen) == 3


def test_cfg1_makes_one_unet_call_per_step() -> None:
    model = _model(cfg=1.0)
    sample(model, "euler", compute_sigmas("karras", SD, 7), torch.zeros(2, 4, 8, 8), seed=0)
    assert model.unet_calls == 7
    cfg_model = _model(cfg=7.0)
    sample(cfg_model, "euler", compute_sigmas("karras", SD, 7), torch.zeros(2, 4, 8, 8), seed=0)
    assert cfg_model.unet_calls == 7  # cond and uncond batched: still one call per step


def test_errors_teach() -> None:
    sigmas = compute_sigmas("karras", SD, 3)
    with pytest.raises(ValueError, match="choose one of"):
        sample(_model(), "eulr", sigmas, torch.zeros(1, 4, 8, 8), seed=0)
    with pytest.raises(ValueError, match="its options are"):
        sample(_model(), "euler", sigmas, torch.zeros(1, 4, 8, 8), seed=0, sampler_options={"eta": 1.0})
    out = sample(_model(), "ddim", sigmas, torch.zeros(1, 4, 8, 8), seed=0, sampler_options={"eta": 0.0})
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
