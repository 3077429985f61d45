"""ComfyUI's area-percentage / area-strength, latent concat / cut / operation nodes and the new sampler
selectors, with values computed by hand (interfaces: test_comfy_interface.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from nodes.values import LatentValue, ModelValue
from sgm.sampling.area_fraction import AreaFraction, resolve_areas
from sgm.sampling.guidance_patches import GuidanceInputs, apply_guidance_patches
from sgm.sampling.guiders import GuidedDenoiser
from sgm.text.conditioning import Area
from tests.sgm.test_guiders import SD, PointwiseUNet, _cond, _x


@pytest.fixture()
def found(tmp_path: Path) -> dict[str, Any]:
    runtime = Runtime(Settings.for_root(tmp_path), device="cpu")
    return {spec.id: spec.function for spec in build_nodes(runtime)}


def test_area_in_percent_equals_the_same_area_in_latent_pixels(found: dict[str, Any]) -> None:
    x, sigma = _x()  # 8 x 8 latent
    full, part = _cond(1), _cond(2)
    [fraction] = found["ConditioningSetAreaPercentage"](conditioning=[part], width=0.5, height=0.25, x=0.25, y=0.5,
                                                        strength=1.5)
    assert fraction.area == AreaFraction(0.25, 0.5, 0.5, 0.25) and fraction.strength == 1.5
    [resolved] = resolve_areas([fraction], 8, 8)
    assert resolved.area == Area(x=2, y=4, width=4, height=2)
    unet = PointwiseUNet()
    by_fraction = GuidedDenoiser(unet, SD, [full, resolved])(x, sigma)
    by_pixels = GuidedDenoiser(unet, SD, [full, part.with_(area=Area(2, 4, 4, 2), strength=1.5)])(x, sigma)
    torch.testing.assert_close(by_fraction, by_pixels)
    assert resolve_areas([fraction.with_(area=AreaFraction(0.9, 0, 0.01, 1))], 8, 8)[0].area == Area(7, 0, 1, 8)
    with pytest.raises(ValueError, match="ConditioningSetAreaPercentage: area width"):
        found["ConditioningSetAreaPercentage"](conditioning=[part], width=1.5, height=1.0, x=0.0, y=0.0, strength=1.0)


def test_area_strength_weights_the_area_condition(found: dict[str, Any]) -> None:
    x, sigma = _x()
    unet = PointwiseUNet()
    full, part = _cond(1), _cond(2).with_(area=Area(2, 4, 4, 2))
    [strong] = found["ConditioningSetAreaStrength"](conditioning=[part], strength=3.0)
    out = GuidedDenoiser(unet, SD, [full, strong])(x, sigma)
    d1 = GuidedDenoiser(unet, SD, [full])(x, sigma)
    d2 = GuidedDenoiser(unet, SD, [_cond(2)])(x, sigma)  # a per-pixel UNet: cropping commutes
    expected = d1.clone()
    expected[:, :, 4:6, 2:6] = (d1 + 3.0 * d2)[:, :, 4:6, 2:6] / 4.0
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_latent_concat_and_cut(found: dict[str, Any]) -> None:
    a = LatentValue(torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3))
    b = LatentValue(-torch.ones(1, 1, 2, 1), noise_mask=torch.zeros(1, 2, 1))
    [right] = [found["LatentConcat"](samples1=a, samples2=b, dim="x")]
    assert right.samples.shape == (2, 1, 2, 4) and torch.equal(right.samples[:, :, :, 3], -torch.ones(2, 1, 2))
    assert torch.equal(right.samples[:, :, :, :3], a.samples) and right.width == 32
    assert torch.equal(right.noise_mask, torch.tensor([[[1.0, 1, 1, 0]] * 2] * 2))
    left = found["LatentConcat"](samples1=a, samples2=b, dim="-x")
    assert torch.equal(left.samples[:, :, :, 0], -torch.ones(2, 1, 2))
    with pytest.raises(ValueError, match="same channels and width"):
        found["LatentConcat"](samples1=a, samples2=b, dim="y")
    with pytest.raises(ValueError, match="'t' is the time axis"):
        found["LatentConcat"](samples1=a, samples2=a, dim="t")
    cut = found["LatentCut"](samples=a, dim="x", index=1, amount=5)
    assert torch.equal(cut.samples, a.samples[..., 1:3])  # clamped to what is left
    cut = found["LatentCut"](samples=a, dim="y", index=-1, amount=3)
    assert torch.equal(cut.samples, a.samples[:, :, 1:2])
    with pytest.raises(ValueError, match="'t' is the time axis"):
        found["LatentCut"](samples=a, dim="t", index=0, amount=1)


def test_tonemap_reinhard_by_hand(found: dict[str, Any]) -> None:
    op = found["LatentOperationTonemapReinhard"](multiplier=0.5)
    latent = torch.tensor([[[[3.0, 0.0]], [[4.0, 1.0]]]])  # pixel lengths 5 and 1
    mean, std = 3.0, (8.0**0.5)  # of (5, 1), unbiased std
    top = (5 * std + mean) * 0.5
    scale = [top * (n / top) / (n / top + 1) / n for n in (5.0, 1.0)]
    out = found["LatentApplyOperation"](samples=LatentValue(latent), operation=op).samples
    expected = latent * torch.tensor(scale).view(1, 1, 1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_sharpen_keeps_flat_directions_and_sharpens_an_edge(found: dict[str, Any]) -> None:
    op = found["LatentOperationSharpen"](sharpen_radius=1, sigma=1.0, alpha=0.5)
    kernel = op.kernel()
    g = torch.exp(-torch.tensor([[2.0, 1, 2], [1, 0, 1], [2, 1, 2]]) / 2)
    g = g / g.sum()
    expected = -5 * g
    expected[1, 1] += 1 - expected.sum()
    torch.testing.assert_close(kernel, expected)
    flat = torch.full((1, 2, 4, 4), 0.5)
    torch.testing.assert_close(op(flat), flat, rtol=1e-5, atol=1e-5)
    edge = torch.zeros(1, 2, 4, 4)
    edge[:, 0, :, :2] = 1.0  # direction (1, 0) on the left, (0, 1) on the right
    edge[:, 1, :, 2:] = 1.0
    out = op(edge)
    assert out[0, 0, 1, 1] > 1.0 and out[0, 0, 1, 2] < 0.0  # overshoot on both sides of the edge
    with pytest.raises(ValueError, match="LatentApplyOperation: sharpen_radius 9"):
        found["LatentApplyOperation"](samples=LatentValue(flat), operation=found["LatentOperationSharpen"](
            sharpen_radius=9, sigma=1.0, alpha=0.1))


def test_apply_operation_cfg_acts_on_the_guidance(found: dict[str, Any]) -> None:
    x, sigma = _x()
    unet = PointwiseUNet()
    double = found["LatentOperationTonemapReinhard"](multiplier=1.0)
    model = ModelValue(unet, SD, "sd1", "pointwise")
    patched = found["LatentApplyOperationCFG"](model=model, operation=double)
    [patch] = patched.guidance_patches
    inputs = GuidanceInputs(unet, SD, [_cond(1)])
    guided = apply_guidance_patches(GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=4.0), [patch], inputs)
    c = GuidedDenoiser(unet, SD, [_cond(1)])(x, sigma)
    u = GuidedDenoiser(unet, SD, [_cond(2)])(x, sigma)
    torch.testing.assert_close(guided(x, sigma), u + 4.0 * double(c - u), rtol=1e-5, atol=1e-5)
    single = apply_guidance_patches(GuidedDenoiser(unet, SD, [_cond(1)]), [patch], inputs)
    torch.testing.assert_close(single(x, sigma), double(c), rtol=1e-5, atol=1e-5)


def test_sampler_selectors(found: dict[str, Any]) -> None:
    from types import SimpleNamespace

    from sgm.sampling.samplers_more import PowerNoiseScaler, sample_lcm_upscale, sample_sa_solver_ext
    from sgm.sampling.sigma_ops import percent_to_sigma

    er = found["SamplerER_SDE"](solver_type="Reverse-time SDE", max_stage=2, eta=1.0, s_noise=1.0)
    assert er.name == "er_sde" and dict(er.options)["noise_scaler"] == PowerNoiseScaler(2.0)
    sa = found["SamplerSASolver"](
        model=SimpleNamespace(model_sampling=SD), eta=1.0, sde_start_percent=0.2, sde_end_percent=0.8, s_noise=1.0,
        predictor_order=3, corrector_order=0, use_pece=True, simple_order_2=True)
    options = dict(sa.options)
    assert sa.name is sample_sa_solver_ext and options["corrector_order"] == 0 and options["simple_order_2"]
    assert options["tau_interval"] == (percent_to_sigma(SD, 0.8), percent_to_sigma(SD, 0.2))
    lcm = found["SamplerLCMUpscale"](scale_ratio=2.0, scale_steps=-1, upscale_method="bilinear")
    assert lcm.name is sample_lcm_upscale and dict(lcm.options)["upscale_steps"] is None
    with pytest.raises(ValueError, match="bislerp"):
        found["SamplerLCMUpscale"](scale_ratio=2.0, scale_steps=-1, upscale_method="bislerp")


def test_area_in_percent_through_ksampler_equals_the_area_in_pixels(found: dict[str, Any]) -> None:
    """The real path: KSampler resolves the fractions for the latent it samples."""
    from sgm.sampling.denoisers import model_sampling_for
    from sgm.text.conditioning import Condition
    from tests.nodes.test_comfy_latent_ops import context
    from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet

    model = ModelValue(unet=tiny_unet("sd1"), model_sampling=model_sampling_for("eps"), family="sd1", name="tiny")
    full = Condition(context=torch.randn(1, 77, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(0)))
    part = Condition(context=torch.randn(1, 77, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(1)))
    image = LatentValue(torch.zeros(1, 4, 8, 8))  # 64 x 64 pixels

    def ksampler(positive: list[Any]) -> torch.Tensor:
        return found["KSampler"](model=model, seed=3, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal",
                                 positive=positive, negative=[full], latent_image=image, denoise=1.0,
                                 ctx=context()).samples

    [fraction] = found["ConditioningSetAreaPercentage"](conditioning=[part], width=0.5, height=0.25, x=0.25, y=0.5,
                                                        strength=1.5)
    [pixels] = found["ConditioningSetArea"](conditioning=[part], width=32, height=16, x=16, y=32, strength=1.5)
    by_fraction, by_pixels = ksampler([full, fraction]), ksampler([full, pixels])
    torch.testing.assert_close(by_fraction, by_pixels)
    assert (by_fraction - ksampler([full])).abs().max() > 1e-4  # the area condition acts


def test_lcm_upscale_through_sampler_custom_gives_a_latent_of_the_new_size(found: dict[str, Any]) -> None:
    from sgm.sampling.denoisers import model_sampling_for
    from sgm.text.conditioning import Condition
    from tests.nodes.test_comfy_latent_ops import context
    from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet

    model = ModelValue(unet=tiny_unet("sd1"), model_sampling=model_sampling_for("eps"), family="sd1", name="tiny")
    cond = [Condition(context=torch.randn(1, 77, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(0)))]
    sigmas = found["BasicScheduler"](model=model, scheduler="sgm_uniform", steps=3, denoise=1.0)
    sampler = found["SamplerLCMUpscale"](scale_ratio=2.0, scale_steps=-1, upscale_method="bilinear")
    image = LatentValue(torch.zeros(1, 4, 8, 8), width=64, height=64)
    out, _ = found["SamplerCustom"](model=model, add_noise=True, noise_seed=1, cfg=1.0, positive=cond,
                                    negative=cond, sampler=sampler, sigmas=sigmas, latent_image=image, ctx=context())
    assert out.samples.shape == (1, 4, 16, 16) and (out.width, out.height) == (128, 128)
    masked = LatentValue(torch.zeros(1, 4, 8, 8), noise_mask=torch.ones(1, 64, 64))
    with pytest.raises(ValueError, match="changes the latent's size, which a noise mask .* cannot follow"):
        found["SamplerCustom"](model=model, add_noise=True, noise_seed=1, cfg=1.0, positive=cond, negative=cond,
                               sampler=sampler, sigmas=sigmas, latent_image=masked, ctx=context())
