"""TAESD: parity with diffusers' AutoencoderTiny both ways, madebyollin's key layout on disk,
the latent scale, finding files, previews and the errors for wrong files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sgm.io.taesd_files import (
    TaesdFileError,
    family_from_name,
    find_preview_decoder,
    find_taesd_file,
    latent_scale,
    load_taesd_part,
    load_tiny_autoencoder,
    split_halves,
    taesd_vae_names,
    to_diffusers,
)
from sgm.nets.taesd import Clamp, TinyAutoencoder, TinyAutoencoderError, TinyDecoder, TinyEncoder
from sgm.sampling.latent_preview import taesd_preview_image, taesd_to_rgb

pytestmark = pytest.mark.usefixtures("one_thread")

SD1, SDXL = 0.18215, 0.13025


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def random_halves(width: int = 16, seed: int = 0) -> tuple[TinyEncoder, TinyDecoder]:
    torch.manual_seed(seed)
    return TinyEncoder(4, width).eval(), TinyDecoder(4, width).eval()


def diffusers_tiny(width: int = 64) -> torch.nn.Module:
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(encoder_block_out_channels=(width,) * 4, decoder_block_out_channels=(width,) * 4).eval()


def test_key_layout_is_madebyollins() -> None:
    encoder, decoder = TinyEncoder(), TinyDecoder()
    enc_keys, dec_keys = set(encoder.state_dict()), set(decoder.state_dict())
    # encoder: 0 conv, 1 Block, 2 stride-2 conv (no bias), ..., 14 output conv; 10 Blocks of 3 convs
    assert len(enc_keys) == 67 and len(dec_keys) == 67
    assert {"0.weight", "0.bias", "1.conv.0.weight", "1.conv.4.bias", "2.weight", "13.conv.2.weight",
            "14.weight", "14.bias"} <= enc_keys
    assert not {"2.bias", "6.bias", "10.bias", "1.skip.weight"} & enc_keys
    # decoder: 0 Clamp, 1 conv, 2 ReLU, 3-5 Blocks, 6 Upsample, 7 conv (no bias), ..., 18 Block, 19 conv
    assert {"1.weight", "1.bias", "3.conv.0.weight", "7.weight", "12.weight", "17.weight", "18.conv.4.bias",
            "19.weight", "19.bias"} <= dec_keys
    assert not {"0.weight", "2.weight", "6.weight", "7.bias", "12.bias", "17.bias"} & dec_keys
    assert encoder.state_dict()["14.weight"].shape == (4, 64, 3, 3)
    assert decoder.state_dict()["1.weight"].shape == (64, 4, 3, 3)
    # 30 Block convs of 64*64*9+64, the input conv 4*64*9+64, 3 bias-free 64*64*9, the output 64*3*9+3
    assert sum(p.numel() for p in decoder.parameters()) == 30 * 36928 + 2368 + 3 * 36864 + 1731 == 1_222_531


def test_clamp_is_three_tanh_of_a_third() -> None:
    x = torch.tensor([0.0, 1.5, 3.0, -30.0])
    expected = torch.tensor([0.0, 3 * math.tanh(0.5), 3 * math.tanh(1.0), -3 * math.tanh(10.0)])
    assert torch.allclose(Clamp()(x), expected, atol=1e-7)
    assert isinstance(TinyDecoder()[0], Clamp)


def test_diffusers_weights_converted_to_ours_match_autoencoder_tiny() -> None:
    torch.manual_seed(1)
    reference = diffusers_tiny()
    halves = split_halves(reference.state_dict())
    ours = load_from_halves(halves, SD1)
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    latents = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(3)) * 2  # scaled, as diffusers takes
    with torch.no_grad():
        # diffusers' AutoencoderTiny speaks scaled latents (its scaling_factor is 1.0); ours unscaled
        assert rel_error(ours.encode(images) * SD1, reference.encode(images).latents) <= 1e-5
        assert rel_error(ours.decode(latents / SD1), reference.decode(latents).sample) <= 1e-5


def test_our_weights_converted_to_diffusers_match_autoencoder_tiny() -> None:
    encoder, decoder = random_halves(64, seed=4)
    reference = diffusers_tiny()
    state = {**to_diffusers(encoder.state_dict(), "encoder"), **to_diffusers(decoder.state_dict(), "decoder")}
    reference.load_state_dict(state, strict=True)
    ours = TinyAutoencoder(encoder, decoder, SDXL, family="sdxl")
    images = torch.rand(1, 3, 40, 24, generator=torch.Generator().manual_seed(5)) * 2 - 1
    latents = torch.randn(1, 4, 5, 3, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert rel_error(ours.encode(images) * SDXL, reference.encode(images).latents) <= 1e-5
        assert rel_error(ours.decode(latents / SDXL), reference.decode(latents).sample) <= 1e-5


def load_from_halves(halves: dict, scale: float) -> TinyAutoencoder:
    from sgm.io.taesd_files import build_half

    return TinyAutoencoder(build_half(halves["encoder"], "encoder"), build_half(halves["decoder"], "decoder"), scale)


def test_latent_scale_and_image_range_by_hand() -> None:
    encoder, decoder = random_halves(8)
    seen: dict[str, torch.Tensor] = {}
    decoder.register_forward_pre_hook(lambda module, args: seen.update(dec_in=args[0].clone()))
    decoder.register_forward_hook(lambda module, args, out: seen.update(dec_out=out.clone()))
    encoder.register_forward_pre_hook(lambda module, args: seen.update(enc_in=args[0].clone()))
    encoder.register_forward_hook(lambda module, args, out: seen.update(enc_out=out.clone()))
    z = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(7))
    images = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(8)) * 2 - 1
    for scale, shift in ((SD1, 0.0), (SDXL, 0.0), (1.5305, 0.0609)):  # the last: an SD3-like shifted space
        vae = TinyAutoencoder(encoder, decoder, scale, shift)
        with torch.no_grad():
            decoded = vae.decode(z)
            encoded = vae.encode(images)
        assert torch.allclose(seen["dec_in"], (z - shift) * scale, atol=1e-7)  # TAESD decodes scaled latents
        assert torch.allclose(decoded, seen["dec_out"] * 2 - 1, atol=1e-7)  # [0, 1] -> [-1, 1]
        assert torch.allclose(seen["enc_in"], (images + 1) / 2, atol=1e-7)  # [-1, 1] -> [0, 1]
        assert torch.allclose(encoded, seen["enc_out"] / scale + shift, atol=1e-6)
    assert z.shape == (1, 4, 3, 5) and decoded.shape == (1, 3, 24, 40) and encoded.shape == (1, 4, 2, 3)


def test_family_names_and_scales() -> None:
    assert family_from_name("taesd_decoder.pth") == "sd1"
    assert family_from_name("models/vae_approx/taesdxl_encoder.safetensors") == "sdxl"
    assert family_from_name("my_tiny_decoder.safetensors") is None
    assert latent_scale("sd2-v") == (SD1, 0.0) and latent_scale("sdxl-refiner") == (SDXL, 0.0)
    with pytest.raises(TaesdFileError, match="16-channel variants for SD3 / Flux"):
        family_from_name("taef1_decoder.safetensors")
    with pytest.raises(TaesdFileError, match="no TAESD latent scale for family 'tiny-shapes'"):
        latent_scale("tiny-shapes")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_madebyollin_files_round_trip(tmp_path: Path, suffix: str) -> None:
    encoder, decoder = random_halves(16, seed=9)
    paths = {}
    for part, module in (("encoder", encoder), ("decoder", decoder)):
        path = paths[part] = tmp_path / f"taesdxl_{part}{suffix}"
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    vae = load_tiny_autoencoder(paths["encoder"], paths["decoder"])
    assert (vae.family, vae.scale_factor, vae.shift_factor) == ("sdxl", SDXL, 0.0)
    for ours, loaded in ((encoder, vae.encoder), (decoder, vae.decoder)):
        assert ours.state_dict().keys() == loaded.state_dict().keys()
        assert all(torch.equal(ours.state_dict()[k], loaded.state_dict()[k]) for k in ours.state_dict())
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        assert torch.equal(vae.decode(z), decoder(z * SDXL) * 2 - 1)
    # the family is overridable for a file whose name does not say it
    renamed = tmp_path / f"tiny_decoder{suffix}"
    paths["decoder"].rename(renamed)
    assert load_tiny_autoencoder(decoder_path=renamed, family="sd2").scale_factor == SD1
    with pytest.raises(TaesdFileError, match="cannot tell the family of tiny_decoder"):
        load_tiny_autoencoder(decoder_path=renamed)


def test_a_diffusers_file_gives_both_halves(tmp_path: Path) -> None:
    torch.manual_seed(11)
    reference = diffusers_tiny(16)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    vae = load_tiny_autoencoder(decoder_path=path, family="sd1")
    assert vae.encoder is not None and vae.decoder is not None
    assert isinstance(load_taesd_part(path, "encoder"), TinyEncoder)
    latents = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        assert rel_error(vae.decode(latents / SD1), reference.decode(latents).sample) <= 1e-5


def test_half_models_fail_clearly() -> None:
    encoder, decoder = random_halves(8)
    decoder_only = TinyAutoencoder(None, decoder, SDXL, family="sdxl")
    with pytest.raises(TinyAutoencoderError, match="without its encoder, so it cannot encode images; put "
                                                   "taesdxl_encoder.safetensors"):
        decoder_only.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TinyAutoencoderError, match="cannot encode"):
        decoder_only.encode_tiled(torch.zeros(1, 3, 8, 8))
    encoder_only = TinyAutoencoder(encoder, None, SD1)
    with pytest.raises(TinyAutoencoderError, match="without its decoder, so it cannot decode latents; put "
                                                   "taesd_decoder"):
        encoder_only.decode(torch.zeros(1, 4, 1, 1))
    assert encoder_only.encode(torch.zeros(1, 3, 8, 8)).shape == (1, 4, 1, 1)


def test_wrong_files_are_refused_with_what_was_found(tmp_path: Path) -> None:
    encoder, decoder = random_halves(8)
    not_taesd = tmp_path / "taesd_decoder.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)}, str(not_taesd))
    with pytest.raises(TaesdFileError, match=r"taesd_decoder.safetensors is not a TAESD encoder or decoder: "
                                             r".*found decoder.conv_in.weight"):
        load_tiny_autoencoder(decoder_path=not_taesd)
    swapped = tmp_path / "taesd_encoder.pth"
    torch.save(decoder.state_dict(), swapped)
    with pytest.raises(TaesdFileError, match="the name says TAESD encoder, but the file holds a TAESD decoder"):
        load_tiny_autoencoder(encoder_path=swapped)
    wide = tmp_path / "taesd3_decoder.safetensors"
    save_file(TinyDecoder(16, 8).state_dict(), str(wide))
    with pytest.raises(TaesdFileError, match="16-channel"):
        load_tiny_autoencoder(decoder_path=wide)
    with pytest.raises(TaesdFileError, match="a TAESD decoder for 16-channel latents"):
        load_tiny_autoencoder(decoder_path=wide, family="sd1")
    truncated = tmp_path / "taesd_decoder.pth"
    torch.save({k: v for k, v in decoder.state_dict().items() if not k.startswith("18.")}, truncated)
    with pytest.raises(TaesdFileError, match=r"do not fit a TAESD decoder .*18.conv.0.weight"):
        load_tiny_autoencoder(decoder_path=truncated)


def test_tiled_decode_and_encode_equal_the_whole_away_from_tile_seams() -> None:
    encoder, decoder = random_halves(8, seed=13)
    vae = TinyAutoencoder(encoder, decoder, SD1)
    z = torch.randn(1, 4, 40, 40, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        whole, tiled = vae.decode(z), vae.decode_tiled(z, 32, 8)  # tiles start at 0 and 8: latents 0-7 in one
        assert tiled.shape == whole.shape == (1, 3, 320, 320) and tiled.dtype == torch.float32
        assert rel_error(tiled[..., :64, :64], whole[..., :64, :64]) <= 1e-5
        assert not torch.allclose(tiled, whole, atol=1e-4)  # the blend differs where tiles meet
        images = whole.clamp(-1, 1)
        assert torch.equal(vae.encode_tiled(images, 512, 64), vae.encode(images))  # one tile: untiled
        assert vae.encode_tiled(images, 256, 64).shape == (1, 4, 40, 40)
    with pytest.raises(ValueError, match="must be multiples of 8"):
        vae.encode_tiled(images, 100, 64)


def test_finding_files_in_vae_approx_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for name in ("taesd_decoder.pth", "taesd_decoder.safetensors", "taesd_decoder_fp16.safetensors",
                 "taesdxl_decoder.pth", "notes.txt"):
        (second / name).write_bytes(b"")
    (first / "taesdxl_decoder_fp16.safetensors").write_bytes(b"")
    folders = [first, second, tmp_path / "missing"]
    assert find_preview_decoder(folders, "sd1") == second / "taesd_decoder.safetensors"  # exact name, safetensors
    assert find_preview_decoder(folders, "sdxl-refiner") == first / "taesdxl_decoder_fp16.safetensors"  # 1st folder
    assert find_preview_decoder(folders, "tiny-shapes") is None
    assert find_taesd_file(folders, "sd2", "encoder") is None
    assert taesd_vae_names(folders) == []
    (first / "taesdxl_encoder.pth").write_bytes(b"")
    assert taesd_vae_names(folders) == ["taesdxl"]
    (second / "taesd_encoder.pth").write_bytes(b"")
    assert taesd_vae_names(folders) == ["taesd", "taesdxl"]


def test_preview_decodes_scaled_latents(tmp_path: Path) -> None:
    encoder, decoder = random_halves(8, seed=15)
    latent = torch.randn(2, 4, 6, 10, generator=torch.Generator().manual_seed(16))  # scaled (a step's denoised)
    original = latent.clone()
    with torch.no_grad():
        images = decoder(latent[:1])[0] * 2 - 1  # (3, 48, 80)
    expected = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
    assert torch.equal(taesd_to_rgb(latent, decoder), expected)
    vae = TinyAutoencoder(encoder, decoder, SD1)
    assert torch.equal(taesd_to_rgb(latent[0], vae), expected)  # the wrapper takes the same scaled latent
    small = taesd_to_rgb(latent, decoder, max_size=40)
    assert small.shape == (24, 40, 3)
    pooled = torch.nn.functional.adaptive_avg_pool2d(images[None], (24, 40))[0]
    assert torch.equal(small, ((pooled.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0))
    image = taesd_preview_image(latent, decoder, max_size=512)
    assert image.size == (80, 48) and image.mode == "RGB"
    assert torch.equal(latent, original)
    with pytest.raises(ValueError, match=r"TAESD preview needs a \(4, h, w\) latent, got shape \(1, 16, 6, 10\)"):
        taesd_to_rgb(torch.zeros(1, 16, 6, 10), decoder)
