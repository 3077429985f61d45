"""VAELoader's taesd / taesdxl choices: listed only when both TAESD files are in
models/vae_approx/, loaded as a VAE that the ordinary decode and encode nodes run unchanged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from nodes.values import LatentValue, VaeValue
from sgm.nets.taesd import TinyAutoencoder, TinyDecoder, TinyEncoder

SD1, SDXL = 0.18215, 0.13025


def halves(seed: int) -> tuple[TinyEncoder, TinyDecoder]:
    torch.manual_seed(seed)
    return TinyEncoder(4, 8).eval(), TinyDecoder(4, 8).eval()


def write(folder: Path, name: str, module: torch.nn.Module) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path)) if path.suffix == ".safetensors" else torch.save(state, path)
    return path


def build(root: Path) -> dict[str, Any]:
    runtime = Runtime(Settings.for_root(root, extra={"dtype": "fp32"}), device="cpu")
    return {spec.id: spec for spec in build_nodes(runtime)}


def choices(specs: dict[str, Any]) -> list[str]:
    return specs["VAELoader"].input("vae_name").widget.options()


def test_taesd_is_a_choice_only_when_encoder_and_decoder_are_both_there(tmp_path: Path) -> None:
    approx = tmp_path / "models" / "vae_approx"
    encoder, decoder = halves(0)
    (tmp_path / "models" / "vae").mkdir(parents=True)
    (tmp_path / "models" / "vae" / "sdxl_vae.safetensors").write_bytes(b"")
    write(approx, "taesd_decoder.safetensors", decoder)
    write(approx, "taesdxl_encoder.pth", encoder)
    specs = build(tmp_path)
    assert choices(specs) == ["sdxl_vae.safetensors"]
    widget = specs["VAELoader"].input("vae_name").widget
    assert widget.check("taesd") == (f"VAE 'taesd' needs taesd_encoder (.safetensors or .pth, from madebyollin/taesd) "
                                     f"in {approx}/")
    with pytest.raises(FileNotFoundError, match="VAELoader: vae_name: VAE 'taesdxl' needs taesdxl_decoder"):
        specs["VAELoader"].function(vae_name="taesdxl")
    write(approx, "taesd_encoder.pth", encoder)
    assert choices(specs) == ["sdxl_vae.safetensors", "taesd"]
    write(approx, "taesdxl_decoder.safetensors", decoder)
    assert choices(specs) == ["sdxl_vae.safetensors", "taesd", "taesdxl"]
    assert widget.check("taesdxl") is None


def test_taesd_decodes_and_encodes_through_the_ordinary_nodes(tmp_path: Path) -> None:
    approx = tmp_path / "models" / "vae_approx"
    encoder, decoder = halves(1)
    write(approx, "taesdxl_encoder.safetensors", encoder)
    write(approx, "taesdxl_decoder.pth", decoder)
    specs = build(tmp_path)
    nodes = {name: spec.function for name, spec in specs.items()}
    vae = nodes["VAELoader"](vae_name="taesdxl")
    assert isinstance(vae, VaeValue) and isinstance(vae.vae, TinyAutoencoder)
    assert (vae.scale_factor, vae.downscale, vae.name, vae.vae.family) == (SDXL, 8, "taesdxl", "sdxl")

    samples = torch.randn(1, 4, 5, 7, generator=torch.Generator().manual_seed(2))  # scaled, as a sampler gives
    latent = LatentValue(samples.clone())
    with torch.no_grad():
        expected = ((decoder(samples) * 2 - 1).clamp(-1, 1) + 1) / 2  # TAESD takes the scaled latent as it is
    expected = expected.permute(0, 2, 3, 1)
    for image in (nodes["VAEDecode"](samples=latent, vae=vae), nodes["Decode"](vae=vae, latent=latent)):
        assert image.shape == (1, 40, 56, 3)
        assert torch.allclose(image, expected, atol=1e-6)
    tiled = nodes["VAEDecodeTiled"](samples=latent, vae=vae, tile_size=512, overlap=64, temporal_size=64,
                                    temporal_overlap=8)
    assert torch.allclose(tiled, expected, atol=1e-6)
    assert torch.equal(latent.samples, samples)

    pixels = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(3))
    encoded = nodes["VAEEncode"](pixels=pixels, vae=vae)
    with torch.no_grad():
        raw = encoder(pixels.permute(0, 3, 1, 2))  # TAESD's own encoder: [0, 1] images -> scaled latents
    assert encoded.samples.shape == (1, 4, 5, 7)
    assert torch.allclose(encoded.samples, raw, atol=1e-5)


def test_the_loader_reloads_when_either_file_changes(tmp_path: Path) -> None:
    approx = tmp_path / "models" / "vae_approx"
    encoder, decoder = halves(4)
    encoder_path = write(approx, "taesd_encoder.safetensors", encoder)
    write(approx, "taesd_decoder.safetensors", decoder)
    spec = build(tmp_path)["VAELoader"]
    before = spec.fingerprint(vae_name="taesd")
    first = spec.function(vae_name="taesd")
    assert spec.function(vae_name="taesd").vae is first.vae  # one cached model for the pair
    other, _ = halves(5)
    write(approx, "taesd_encoder.safetensors", other)
    stat = encoder_path.stat()
    os.utime(encoder_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert spec.fingerprint(vae_name="taesd") != before
    reloaded = spec.function(vae_name="taesd")
    assert reloaded.vae is not first.vae
    assert torch.equal(reloaded.vae.encoder.state_dict()["0.weight"], other.state_dict()["0.weight"])


def test_a_file_that_is_not_taesd_fails_naming_it(tmp_path: Path) -> None:
    approx = tmp_path / "models" / "vae_approx"
    encoder, _ = halves(6)
    write(approx, "taesd_encoder.safetensors", encoder)
    save_file({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)}, str(approx / "taesd_decoder.safetensors"))
    with pytest.raises(ValueError, match=r"VAELoader: cannot load taesd_decoder.safetensors .*taesd_decoder"
                                         r".safetensors is not a TAESD encoder or decoder"):
        build(tmp_path)["VAELoader"].function(vae_name="taesd")
