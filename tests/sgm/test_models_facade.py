"""The seed's Python API (sgm.models) as the README writes it, on tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgm.text.conditioning import Condition
from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.guiders import GuidedDenoiser
from sgm.sampling.latent_preview import latent_preview_image, latent_to_rgb
from sgm.models import AutoencoderKL, DiffusionModel
from sgm.sampling.sample import sample
from sgm.sampling.schedules import compute_sigmas
from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet, tiny_vae


@pytest.fixture(scope="module")
def parts() -> tuple[DiffusionModel, AutoencoderKL, Condition]:
    cond = Condition(context=torch.randn(1, 77, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(1)))
    return DiffusionModel(tiny_unet("sd1")), tiny_vae(), cond


def test_readme_usage(parts: tuple[DiffusionModel, AutoencoderKL, Condition]) -> None:
    diffusion, vae, cond = parts
    latent = torch.zeros(1, 4, 8, 8)
    with torch.no_grad():
        image = vae.decode(diffusion.sample(latent, condition=cond, num_steps=3, guidance_scale=7.5))
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    ddim = diffusion.sample(latent, condition=cond, sampler="ddim", num_steps=3, eta=0.0)
    assert ddim.shape == latent.shape and not torch.allclose(ddim, latent)


def test_facade_runs_the_node_code_path(parts: tuple[DiffusionModel, AutoencoderKL, Condition]) -> None:
    diffusion, _, cond = parts
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    ours = diffusion.sample(latent, condition=cond, negative=cond.with_(context=cond.context * 0.5),
                            num_steps=4, guidance_scale=5.0, sampler="dpmpp_2m", scheduler="karras",
                            seed=9, denoise=0.6)
    guided = GuidedDenoiser(diffusion.unet, diffusion.model_sampling, [cond],
                            [cond.with_(context=cond.context * 0.5)], cfg=5.0)
    sigmas = compute_sigmas("karras", diffusion.model_sampling, 4, 0.6)
    with torch.no_grad():
        ref = sample(guided, "dpmpp_2m", sigmas, latent * 0.18215, seed=9) / 0.18215
    torch.testing.assert_close(ours, ref)
    assert torch.equal(diffusion.sample(latent, condition=cond, num_steps=4, denoise=0.0), latent)


def test_facade_errors_and_unconditional_guidance(parts: tuple[DiffusionModel, AutoencoderKL, Condition]) -> None:
    diffusion, _, cond = parts
    with pytest.raises(ValueError, match="text-conditioned"):
        diffusion.sample(torch.zeros(1, 4, 8, 8), num_steps=2)
    # guidance_scale 1: one UNet call per step (no uncond pass).
    calls = []
    hook = diffusion.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        diffusion.sample(torch.zeros(1, 4, 8, 8), condition=cond, num_steps=3, guidance_scale=1.0)
        assert calls == [1, 1, 1]
        calls.clear()
        diffusion.sample(torch.zeros(1, 4, 8, 8), condition=cond, num_steps=3, guidance_scale=7.5)
        assert calls == [2, 2, 2]
    finally:
        hook.remove()


def test_from_checkpoint_takes_prediction_from_the_file(tmp_path: Path) -> None:
    from sgm.io.checkpoints import load_checkpoint
    from tests.sgm.model_factories import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "tiny_v.safetensors", "sd1", prediction="v")
    checkpoint = load_checkpoint(path, load_text=False)
    diffusion = DiffusionModel.from_checkpoint(checkpoint)
    assert isinstance(diffusion.model_sampling, DiscreteModelSampling)
    assert diffusion.model_sampling.prediction == checkpoint.prediction
    assert DiffusionModel.from_checkpoint(checkpoint, prediction="eps").model_sampling.prediction == "eps"


def test_latent_preview() -> None:
    latent = torch.zeros(1, 4, 6, 10)
    rgb = latent_to_rgb(latent, "sd1")
    assert rgb.shape == (6, 10, 3) and rgb.dtype == torch.uint8
    assert torch.all(rgb == 128)  # zero latent -> mid grey (no bias for SD 1.x)
    # Channel 3 of SD latents is strongly anti-blue: a positive value gives a dark yellow-brown.
    latent[:, 3] = 1.0
    pixel = latent_to_rgb(latent, "sd2-v")[0, 0].int()
    assert pixel[2] < pixel[0] < 128 and pixel[2] < 50
    assert latent_to_rgb(torch.zeros(4, 64, 32), "sdxl-refiner", max_size=16).shape == (16, 8, 3)
    assert latent_preview_image(latent, "sdxl").size == (10, 6)
    with pytest.raises(ValueError, match="known families"):
        latent_to_rgb(latent, "flux")
