"""The shapes upscaler (sgm.training.upscaler): its metric and data, a short training run whose file loads
by content through spandrel, and the shipped model's measured effect on held-out images."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sgm.io.upscalers import load_upscale_model, upscale_image
from sgm.training.upscaler import (HELD_OUT_SEED, UpscalerConfig, bicubic, downscale, evaluate, psnr, render_batch,
                                   save_upscaler, train_upscaler)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "upscale_models" / "tiny-shapes-2x.safetensors"


def test_psnr_downscale_and_bicubic() -> None:
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01
    assert math.isinf(psnr(a, a))
    high = torch.arange(16.0).view(1, 1, 4, 4)
    assert downscale(high, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # 2x2 block means
    flat = torch.full((1, 3, 5, 5), 0.25)
    assert torch.allclose(bicubic(flat, 2), torch.full((1, 3, 10, 10), 0.25))


def test_held_out_images_are_fixed_and_unlike_training() -> None:
    held = render_batch(4, 32, HELD_OUT_SEED, held_out=True)
    assert held.shape == (4, 3, 32, 32) and 0 <= held.min() and held.max() <= 1
    assert torch.equal(held, render_batch(4, 32, HELD_OUT_SEED, held_out=True))
    assert not torch.equal(held, render_batch(4, 32, 0))


def test_short_training_improves_and_saves_a_spandrel_file(tmp_path: Path) -> None:
    config = UpscalerConfig(features=8, convs=2, image_size=32, crop=16, batch_size=8, pool=32, lr=3e-3)
    model, report = train_upscaler(config, seconds=60, max_steps=60, held_out=8)
    assert report.steps == 60 and report.held_out == 8
    assert report.loss < 0.02  # from ~0.1 at the random start (the residual over nearest upsampling)
    path = save_upscaler(model, tmp_path / "tiny.safetensors", report, config)
    loaded = load_upscale_model(path)
    assert loaded.scale == 2 and loaded.architecture == "RealESRGAN Compact"
    images = render_batch(2, 32, HELD_OUT_SEED, held_out=True)
    with torch.no_grad():
        ours = model(images).clamp(0, 1).permute(0, 2, 3, 1)
    assert (upscale_image(loaded, images.permute(0, 2, 3, 1)) - ours).abs().max().item() <= 1e-5


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"{SHIPPED} is not in this checkout")
def test_shipped_model_is_small_and_beats_bicubic_on_held_out_images() -> None:
    assert SHIPPED.stat().st_size < 2 * 1024 * 1024
    model = load_upscale_model(SHIPPED)
    assert model.scale == 2 and model.input_channels == 3
    high = render_batch(96, 128, HELD_OUT_SEED, held_out=True)  # the held-out combinations, as trained
    psnr_model, psnr_bicubic = evaluate(model.module, high, 2)
    assert psnr_model > psnr_bicubic + 1.0, (psnr_model, psnr_bicubic)
