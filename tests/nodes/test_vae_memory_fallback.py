"""A VAE decode or encode that runs out of memory even with the device emptied falls back to tiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.settings import Settings
from nodes.images import decode_latent
from nodes.latents import encode_images
from nodes.runtime import Runtime
from nodes.values import LatentValue, VaeValue
from sgm.io.model_cache import ModelMemoryError
from tests.sgm.model_factories import tiny_vae


def _limit_memory(vae: torch.nn.Module, part: str, max_side: int, seen: list[int]) -> None:
    """Make ``vae.<part>`` raise CUDA's out-of-memory error for inputs wider than ``max_side``."""
    module = getattr(vae, part)
    forward = module.forward

    def limited(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[-1])
        if max(x.shape[-2:]) > max_side:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[-1]} GiB")
        return forward(x)

    module.forward = limited


def test_a_decode_out_of_memory_is_retried_in_ever_smaller_tiles(tmp_path: Path, caplog) -> None:
    runtime = Runtime(Settings.for_root(tmp_path), device="cpu")
    vae = tiny_vae(seed=3, residual_scale=0.1)
    value = VaeValue(vae=vae, scale_factor=0.5, name="tiny")
    samples = torch.randn(1, 4, 80, 80, generator=torch.Generator().manual_seed(0))
    expected = decode_latent(runtime, value, LatentValue(samples=samples), True, "8", (32, 8))

    seen: list[int] = []
    _limit_memory(vae, "decoder", 32, seen)  # the whole latent (80) and 64-wide tiles do not fit
    with caplog.at_level("WARNING"):
        image = decode_latent(runtime, value, LatentValue(samples=samples), False, "8")
    assert image.shape == (1, 640, 640, 3)
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)  # the same as asking for 32-wide tiles
    # plain, plain again after offloading, then 64-wide tiles (whose GroupNorm statistics pass over
    # the latent shrunk to 40 already fails), then 32-wide tiles, which fit
    assert seen[:3] == [80, 80, 40] and max(seen[3:]) <= 32
    assert "retrying with tiled decode (32x32 latent tiles)" in caplog.text

    _limit_memory(vae, "decoder", 8, [])  # nothing fits, not even 16-wide tiles
    with pytest.raises(ModelMemoryError, match=r"8 \(VAE decode\) ran out of memory .* trying tiled decode \(64x64.*, tiled decode \(16x16"):
        decode_latent(runtime, value, LatentValue(samples=samples), False, "8")


def test_an_encode_out_of_memory_is_retried_in_tiles(tmp_path: Path) -> None:
    runtime = Runtime(Settings.for_root(tmp_path), device="cpu")
    vae = tiny_vae(seed=4, residual_scale=0.1)
    value = VaeValue(vae=vae, scale_factor=0.5, name="tiny")
    pixels = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected = encode_images(runtime, value, pixels, True, "5", (256, 32))

    seen: list[int] = []
    _limit_memory(vae, "encoder", 256, seen)
    latent = encode_images(runtime, value, pixels, False, "5")
    assert latent.shape == (1, 4, 40, 40)
    torch.testing.assert_close(latent, expected, rtol=0, atol=1e-6)
    assert seen[:3] == [320, 320, 320]  # plain twice, then 512-wide tiles (the image is one 320 tile)
