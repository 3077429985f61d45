"""InstructPix2Pix's extra input (sgm.sampling.pix2pix): the image latent fitted to the sampled
latent, and an 8-channel UNet guided with it computes what the UNet computes on the concatenation."""

from __future__ import annotations

import torch
from torch import nn

from sgm.sampling.denoisers import model_sampling_for
from sgm.sampling.guiders import GuidedDenoiser
from sgm.sampling.pix2pix import CONCAT_KEY, concat_image_of, pix2pix_concat, pix2pix_scale
from sgm.text.conditioning import Condition
from tests.sgm.model_factories import tiny_unet


class ConcatInside(nn.Module):
    """The reference: a 4-channel model that appends the image itself."""

    in_channels = 4

    def __init__(self, unet: nn.Module, image: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.image = unet, image

    def forward(self, x, timesteps, context=None, y=None):
        return self.unet(torch.cat([x, self.image.expand(x.shape[0], -1, -1, -1)], dim=1), timesteps, context, y)


def test_an_8_channel_unet_guided_with_the_image_latent_is_the_unet_on_the_concatenation() -> None:
    g = torch.Generator().manual_seed(0)
    unet = tiny_unet("sd1", seed=0, in_channels=8)
    image = torch.randn(1, 4, 8, 8, generator=g)
    positive = [Condition(torch.randn(1, 5, 32, generator=g), extra={CONCAT_KEY: image})]
    negative = [Condition(torch.randn(1, 5, 32, generator=g), extra={CONCAT_KEY: image})]
    x, sigma = torch.randn(2, 4, 8, 8, generator=g) * 3, torch.tensor([3.0, 3.0])
    sampling = model_sampling_for("eps")
    concat = pix2pix_concat(concat_image_of(positive), x, pix2pix_scale("sd1"))
    with torch.no_grad():
        ours = GuidedDenoiser(unet, sampling, positive, negative, cfg=5.0, inpaint_concat=concat)(x, sigma)
        reference = GuidedDenoiser(ConcatInside(unet, image), sampling, positive, negative, cfg=5.0)(x, sigma)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_the_image_latent_is_fitted_scaled_and_repeated() -> None:
    image = torch.arange(2 * 4 * 4 * 6, dtype=torch.float32).reshape(2, 4, 4, 6)
    samples = torch.zeros(4, 4, 4, 4)  # square: the 4x6 image is cropped to its centre 4x4
    out = pix2pix_concat(image, samples, scale=2.0)
    assert out.shape == (4, 4, 4, 4)
    assert torch.equal(out[0], 2 * image[0, :, :, 1:5]) and torch.equal(out[3], 2 * image[1, :, :, 1:5])
    assert pix2pix_scale("sdxl") == 0.13025 and pix2pix_scale("sd1") == 1.0
    assert torch.equal(pix2pix_concat(None, samples), samples) and concat_image_of([]) is None
