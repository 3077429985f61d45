"""GuidedDenoiser: CFG batching, identity guider, rescale, areas/masks, inpainting concat."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgm.text.conditioning import Area, Condition
from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.guiders import GuidedDenoiser, make_inpaint_concat

SD = DiscreteModelSampling()


class PointwiseUNet(nn.Module):
    """A per-pixel stand-in UNet (1x1 conv + context and timestep biases): cropping the
    input crops the output, so area results can be checked exactly. Records its calls."""

    def __init__(self, in_channels: int = 4, context_dim: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.in_channels = in_channels
        self.weight = nn.Parameter(torch.randn(4, in_channels, generator=g) * 0.3)
        self.proj = nn.Parameter(torch.randn(context_dim, 4, generator=g) * 0.3)
        self.calls: list[tuple[int, ...]] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        self.inputs.append(x)
        out = torch.einsum("oc,bchw->bohw", self.weight, x)
        if context is not None:
            out = out + (context.mean(1) @ self.proj)[:, :, None, None]
        return out + timesteps.view(-1, 1, 1, 1) * 1e-3


def _cond(seed: int, tokens: int = 77, **kw) -> Condition:  # type: ignore[no-untyped-def]
    return Condition(context=torch.randn(1, tokens, 8, generator=torch.Generator().manual_seed(seed)), **kw)


def _x(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    return x, torch.full((batch,), 3.0)


def test_cfg_batched_equals_chunked_and_uses_one_call() -> None:
    x, sigma = _x()
    unet = PointwiseUNet()
    batched = GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=7.5)
    out = batched(x, sigma)
    assert unet.calls == [(4, 4, 8, 8)]  # cond + uncond in one UNet call
    unet.calls.clear()
    chunked = GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=7.5, batch_conds=False)
    torch.testing.assert_close(chunked(x, sigma), out, rtol=1e-5, atol=1e-5)
    assert unet.calls == [(2, 4, 8, 8), (2, 4, 8, 8)]


def test_different_context_lengths_are_chunked_automatically() -> None:
    x, sigma = _x()
    unet = PointwiseUNet()
    out = GuidedDenoiser(unet, SD, [_cond(1, tokens=154)], [_cond(2, tokens=77)], cfg=5.0)(x, sigma)
    assert len(unet.calls) == 2
    ref = GuidedDenoiser(PointwiseUNet(), SD, [_cond(1, tokens=154)], [_cond(2, tokens=77)], cfg=5.0,
                         batch_conds=False)(x, sigma)
    torch.testing.assert_close(out, ref)


def test_cfg_formula_and_identity_guider() -> None:
    x, sigma = _x()
    unet = PointwiseUNet()
    cond = GuidedDenoiser(unet, SD, [_cond(1)])(x, sigma)
    uncond = GuidedDenoiser(unet, SD, [_cond(2)])(x, sigma)
    guided = GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=4.0)(x, sigma)
    torch.testing.assert_close(guided, uncond + 4.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
    # cfg == 1 skips the uncond pass entirely, even with a negative given.
    unet.calls.clear()
    identity = GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=1.0)
    torch.testing.assert_close(identity(x, sigma), cond)
    assert unet.calls == [(2, 4, 8, 8)]
    with pytest.raises(ValueError, match="negative"):
        GuidedDenoiser(unet, SD, [_cond(1)], None, cfg=7.0)


def test_denoised_is_x_minus_sigma_eps() -> None:
    x, sigma = _x()
    unet = PointwiseUNet()
    out = GuidedDenoiser(unet, SD, [_cond(1)])(x, sigma)
    eps = unet(x / (1 + 9.0) ** 0.5, SD.timestep(sigma), context=_cond(1).context.expand(2, -1, -1))
    torch.testing.assert_close(out, x - 3.0 * eps, rtol=1e-5, atol=1e-5)


def test_guidance_rescale() -> None:
    x, sigma = _x()
    unet = PointwiseUNet()
    plain = GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=7.0)(x, sigma)
    same = GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=7.0, guidance_rescale=0.0)(x, sigma)
    torch.testing.assert_close(plain, same)
    full = GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=7.0, guidance_rescale=1.0)(x, sigma)
    cond = GuidedDenoiser(unet, SD, [_cond(1)])(x, sigma)
    # phi = 1: the guided eps has the per-sample std of the conditional eps (Lin et al. eq. 15).
    eps_full, eps_cond = (x - full) / 3.0, (x - cond) / 3.0
    torch.testing.assert_close(eps_full.std(dim=(1, 2, 3)), eps_cond.std(dim=(1, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(full, plain)


def test_area_and_strength_combine_as_weighted_mean() -> None:
    x, sigma = _x()
    unet = PointwiseUNet()
    area = Area(x=2, y=0, width=4, height=3)
    a_alone = GuidedDenoiser(unet, SD, [_cond(1)])(x, sigma)
    b_alone = GuidedDenoiser(unet, SD, [_cond(2)])(x, sigma)
    both = GuidedDenoiser(unet, SD, [_cond(1), _cond(2, area=area, strength=3.0)])(x, sigma)
    inside = (slice(None), slice(None), slice(0, 3), slice(2, 6))
    torch.testing.assert_close(both[inside], (a_alone[inside] + 3 * b_alone[inside]) / 4, rtol=1e-5, atol=1e-5)
    outside = both.clone()
    outside[inside] = a_alone[inside]
    torch.testing.assert_close(outside, a_alone)


def test_mask_condition_and_uncovered_pixels_error() -> None:
    x, sigma = _x()
    unet = PointwiseUNet()
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1.0
    left = GuidedDenoiser(unet, SD, [_cond(1), _cond(2, mask=mask)])(x, sigma)
    a_alone = GuidedDenoiser(unet, SD, [_cond(1)])(x, sigma)
    b_alone = GuidedDenoiser(unet, SD, [_cond(2)])(x, sigma)
    torch.testing.assert_close(left[..., :4], (a_alone[..., :4] + b_alone[..., :4]) / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(left[..., 4:], a_alone[..., 4:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="full-frame condition"):
        GuidedDenoiser(unet, SD, [_cond(2, mask=mask)])(x, sigma)


def test_inpainting_unet_gets_mask_and_masked_latent() -> None:
    x, sigma = _x()
    unet = PointwiseUNet(in_channels=9)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 32:] = 1.0  # image resolution: resized to the latent
    masked_latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    concat = make_inpaint_concat(mask, masked_latent)
    assert concat.shape == (2, 5, 8, 8)
    before = (x.clone(), concat.clone())
    GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=3.0, inpaint_concat=concat)(x, sigma)
    fed = unet.inputs[-1]  # (4, 9, 8, 8): [x * c_in, mask, masked latent] for cond and uncond
    assert fed.shape == (4, 9, 8, 8)
    torch.testing.assert_close(fed[:2, 4:5], mask[:, :, ::8, ::8])
    torch.testing.assert_close(fed[2:, 5:], masked_latent)
    torch.testing.assert_close(fed[:2, :4], x / 10**0.5)
    assert torch.equal(x, before[0]) and torch.equal(concat, before[1])
    with pytest.raises(ValueError, match="inpaint_concat"):
        GuidedDenoiser(unet, SD, [_cond(1)])


def test_real_tiny_unet_batched_equals_chunked() -> None:
    from tests.sgm.model_factories import tiny_unet

    unet = tiny_unet("sd1")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([2.0])
    pos = Condition(context=torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)))
    neg = Condition(context=torch.zeros(1, 77, 32))
    with torch.no_grad():
        a = GuidedDenoiser(unet, SD, [pos], [neg], cfg=7.5)(x, sigma)
        b = GuidedDenoiser(unet, SD, [pos], [neg], cfg=7.5, batch_conds=False)(x, sigma)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_real_tiny_sdxl_unet_vector_conditioning_is_batched() -> None:
    from tests.sgm.model_factories import SDXL_SIZE_FEATURES, TINY_POOLED_DIM, tiny_unet

    unet = tiny_unet("sdxl")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 8, 8, generator=g)
    sigma = torch.tensor([5.0, 5.0])

    def cond() -> Condition:
        return Condition(context=torch.randn(1, 77, 32, generator=g),
                         y=torch.randn(1, TINY_POOLED_DIM + SDXL_SIZE_FEATURES, generator=g))

    pos, neg = cond(), cond()
    calls: list[int] = []
    hook = unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        with torch.no_grad():
            a = GuidedDenoiser(unet, SD, [pos], [neg], cfg=6.0)(x, sigma)
            b = GuidedDenoiser(unet, SD, [pos], [neg], cfg=6.0, batch_conds=False)(x, sigma)
    finally:
        hook.remove()
    assert calls == [4, 2, 2]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_rescale_cfg_matches_the_v_space_formula() -> None:
    """ComfyUI's RescaleCFG, written out in its own variables: x_orig the VE latent, cond/uncond
    x - D, and the result x - R; compared with ``rescale_cfg_v`` on guided denoised estimates."""
    from sgm.sampling.guiders import rescale_cfg_v

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g) * 3
    d_cond, d_uncond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    sigma = torch.tensor([2.5, 0.7])
    scale, phi = 5.0, 0.7
    guided = d_uncond + scale * (d_cond - d_uncond)

    s = sigma.view(-1, 1, 1, 1)
    xs = x / (s * s + 1.0)
    v_cond = (xs - (x - (x - d_cond))) * (s**2 + 1.0) ** 0.5 / s
    v_uncond = (xs - (x - (x - d_uncond))) * (s**2 + 1.0) ** 0.5 / s
    v_cfg = v_uncond + scale * (v_cond - v_uncond)
    v_rescaled = v_cfg * (v_cond.std(dim=(1, 2, 3), keepdim=True) / v_cfg.std(dim=(1, 2, 3), keepdim=True))
    v_final = phi * v_rescaled + (1.0 - phi) * v_cfg
    expected = x - (x - (xs - v_final * s / (s * s + 1.0) ** 0.5))  # x - R with R = x_orig - (...)

    assert torch.allclose(rescale_cfg_v(x, sigma, d_cond, guided, phi), expected, atol=1e-5)
    assert torch.allclose(rescale_cfg_v(x, sigma, d_cond, guided, 0.0), guided, atol=1e-5)
    assert (rescale_cfg_v(x, sigma, d_cond, guided, phi) - guided).abs().max() > 0.1
