"""AutoencoderKL: original key names, posterior, tiled encode/decode (blending, seams)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgm.nets.autoencoder import AutoencoderKL, DiagonalGaussian, tiled_apply
from tests.sgm.model_factories import tiny_vae


def smooth_latents(height: int, width: int) -> torch.Tensor:
    """(1, 4, height, width) low-frequency pattern: what a denoised latent looks like at large scale."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([torch.sin(3 * xx + c) + torch.cos(2 * yy - c) for c in range(4)])[None] * 0.5


def test_sd_vae_key_names_and_shapes() -> None:
    with torch.device("meta"):
        vae = AutoencoderKL()  # the SD 1.x / 2.x / SDXL VAE architecture
    state = vae.state_dict()
    assert len(state) == 248  # keys under first_stage_model. in the released checkpoints
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    for key, shape in {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.proj_out.bias": (512,),
        "encoder.conv_out.weight": (8, 512, 3, 3),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
        "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.norm_out.weight": (128,),
    }.items():
        assert tuple(state[key].shape) == shape, key
    assert "encoder.down.3.downsample.conv.weight" not in state
    assert "decoder.up.0.upsample.conv.weight" not in state


def test_encode_decode_shapes_and_posterior() -> None:
    vae = tiny_vae()
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode_posterior(images)
        assert posterior.mean.shape == posterior.std.shape == (2, 4, 8, 6)
        torch.testing.assert_close(vae.encode(images), posterior.mean)
        assert vae.decode(posterior.mean).shape == (2, 3, 64, 48)
        draw = posterior.sample(torch.Generator().manual_seed(5))
        assert torch.equal(draw, posterior.sample(torch.Generator().manual_seed(5)))
        assert not torch.equal(draw, posterior.sample(torch.Generator().manual_seed(6)))
        reconstruction, again = vae(images, torch.Generator().manual_seed(5))
        torch.testing.assert_close(reconstruction, vae.decode(draw))
        torch.testing.assert_close(again.mean, posterior.mean)


def test_kl_is_zero_for_the_prior_and_positive_otherwise() -> None:
    zeros = torch.zeros(2, 4, 3, 3)
    assert torch.equal(DiagonalGaussian(zeros, zeros).kl(), torch.zeros(2))
    mean, logvar = torch.full((1, 4, 3, 3), 0.5), torch.full((1, 4, 3, 3), -1.0)
    expected = 0.5 * 36 * (0.25 + torch.exp(torch.tensor(-1.0)) - 1 + 1)  # 36 elements
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).kl(), expected.reshape(1))
    # logvar is clamped like ldm so exp() stays finite for a diverging encoder
    moments = torch.cat([zeros, torch.full_like(zeros, 100.0)], dim=1)
    assert float(DiagonalGaussian.from_moments(moments).logvar.max()) == 20.0


def test_tiled_apply_is_exact_for_a_pointwise_map() -> None:
    # A per-pixel map (nearest 8x upsampling + tanh) is unaffected by tiling: the blend of two
    # exact tiles is exact, so any misplaced tile or wrong weight normalisation shows here.
    x = torch.randn(1, 4, 37, 29, generator=torch.Generator().manual_seed(0))

    def fn(t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.interpolate(t, scale_factor=8.0, mode="nearest"))

    torch.testing.assert_close(tiled_apply(fn, x, 16, 6, 8), fn(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(tiled_apply(lambda t: t[:, :, ::4, ::4], x[..., :36, :28], 16, 8, 0.25),
                               x[..., :36:4, :28:4], rtol=0, atol=1e-6)


def test_tiled_decode_is_exact_when_one_tile_covers_the_latent() -> None:
    vae = tiny_vae()
    latents = smooth_latents(12, 10)
    with torch.no_grad():
        assert torch.equal(vae.decode_tiled(latents, tile_size=16, overlap=4), vae.decode(latents))


def test_tiled_decode_and_encode_approximate_untiled_on_smooth_input() -> None:
    # Random decoders are chaotic; a small residual scale makes this one local like a trained VAE.
    vae = tiny_vae(residual_scale=0.1)
    latents = smooth_latents(24, 24)
    with torch.no_grad():
        full = vae.decode(latents)  # (1, 3, 192, 192)
        shared = vae.decode_tiled(latents, tile_size=16, overlap=8)
        per_tile = vae.decode_tiled(latents, tile_size=16, overlap=8, shared_norm=False)
        images = full.clamp(-1, 1)
        mean = vae.encode(images)
        tiled_mean = vae.encode_tiled(images, tile_size=128, overlap=64)
        tiled_mean_per_tile = vae.encode_tiled(images, tile_size=128, overlap=64, shared_norm=False)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    assert shared.shape == full.shape and tiled_mean.shape == mean.shape == (1, 4, 24, 24)
    assert rel(shared, full) < 0.35  # measured 0.27
    assert rel(tiled_mean, mean) < 0.2  # measured 0.12
    # Shared GroupNorm statistics are what bring tiles close to the untiled result.
    assert rel(shared, full) < 0.8 * rel(per_tile, full)
    assert rel(tiled_mean, mean) < 0.5 * rel(tiled_mean_per_tile, mean)


def test_constant_latent_decodes_without_seams() -> None:
    vae = tiny_vae(residual_scale=0.1)
    latents = torch.tensor([0.4, -0.3, 0.2, 0.1]).reshape(1, 4, 1, 1).expand(1, 4, 16, 32)

    def max_column_jump(images: torch.Tensor) -> float:
        # A seam is a line: the mean step between adjacent columns, largest over the interior.
        steps = (images[..., 1:] - images[..., :-1]).abs().mean(dim=(0, 1, 2))
        return float(steps[32:-32].max())

    with torch.no_grad():
        untiled = vae.decode(latents)  # (1, 3, 128, 256)
        blended = vae.decode_tiled(latents, tile_size=16, overlap=8)
        stitched = vae.decode_tiled(latents, tile_size=16, overlap=0)  # hard border at x = 128
    assert max_column_jump(blended) <= max_column_jump(untiled)
    assert max_column_jump(stitched) > 2 * max_column_jump(untiled)  # the measure does see a seam


def test_tiling_arguments_are_checked() -> None:
    vae = tiny_vae()
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode_tiled(torch.zeros(1, 3, 64, 64), tile_size=60, overlap=8)
    with pytest.raises(ValueError, match="overlap < tile_size"):
        vae.decode_tiled(torch.zeros(1, 4, 40, 40), tile_size=16, overlap=16)
