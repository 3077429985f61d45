"""Upscale models through spandrel (sgm.io.upscalers): files of several architectures, built with random
weights here and saved under their original key names, load by content; the tiled run equals spandrel's
untiled output; an out-of-memory tile halves the tile size and gives the same image.

Measured (fp32, CPU, 2 x 150 x 190 images, these configs): the conv nets (ESRGAN old arch, Real-ESRGAN,
compact) differ from the untiled output by <= 4e-7 with an overlap whose quarter covers their receptive
radius; the window transformers by 4e-5 (SwinIR) and 1.8e-4 (DAT) with 16-aligned tiles (their windows see
the same pixels as untiled). Tiles cut without overlap differ by 0.09 to 1.0.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import save_file

from sgm.io import upscalers
from sgm.io.upscalers import (UpscaleMemoryError, UpscaleModelError, edge_weights, import_spandrel, load_upscale_model,
                              tile_spans, upscale_image)

import_spandrel()  # before spandrel.architectures: torchvision may be a stand-in (see there)


def esrgan_old() -> torch.nn.Module:
    """ESRGAN's original ("old arch", ``model.N``) layout, 4x, one RRDB block of 8 features."""
    from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

    return RRDBNet(num_filters=8, num_blocks=1, scale=4)


def compact() -> torch.nn.Module:
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    return SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2)


def swinir() -> torch.nn.Module:
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    return SwinIR(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4, mlp_ratio=2.0, upscale=2,
                  upsampler="pixelshuffledirect")


def dat() -> torch.nn.Module:
    from spandrel.architectures.DAT.__arch.DAT import DAT

    return DAT(img_size=16, embed_dim=24, depth=[2], num_heads=[2], split_size=[2, 4], expansion_factor=2.0,
               upscale=2, upsampler="pixelshuffledirect")


def real_esrgan_keys(state_dict: dict[str, torch.Tensor], blocks: int, upsamples: int = 2) -> dict[str, torch.Tensor]:
    """Real-ESRGAN's (BasicSR's RRDBNet) key names for an old-arch ESRGAN state dict with ``upsamples``
    2x upsampling convs (old arch: ``model.3``, ``model.6``, ...; then the HR conv and the last conv)."""
    last_up = 3 * upsamples
    fixed = {"model.0.": "conv_first.", f"model.1.sub.{blocks}.": "conv_body.",
             **{f"model.{3 * i}.": f"conv_up{i}." for i in range(1, upsamples + 1)},
             f"model.{last_up + 2}.": "conv_hr.", f"model.{last_up + 4}.": "conv_last."}
    out = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key)
        if match:
            block, rdb, conv, kind = match.groups()
            out[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
            continue
        prefix = next(p for p in fixed if key.startswith(p))
        out[fixed[prefix] + key[len(prefix):]] = value
    return out


def livelier(net: torch.nn.Module, gain: float) -> torch.nn.Module:
    """Scale the random weights up so that every pixel of the receptive field moves the output (ESRGAN's
    initialisation is damped by 0.1, which would hide a wrong tile border)."""
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("weight") and parameter.dim() == 4:
                parameter.mul_(gain)
    return net


# name -> (builder, key transform, file suffix, scale, tile, overlap, tolerance)
CASES: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[dict], dict], str, int, int, int, float]] = {
    # receptive radius ~18 input pixels: overlap 80 drops 20 at each inner edge
    "esrgan-old-arch": (lambda: livelier(esrgan_old(), 3.0), lambda sd: sd, ".pth", 4, 96, 80, 1e-4),
    "real-esrgan": (lambda: livelier(esrgan_old(), 3.0), lambda sd: {"params_ema": real_esrgan_keys(sd, 1)},
                    ".pth", 4, 96, 80, 1e-4),
    "compact": (compact, lambda sd: sd, ".safetensors", 2, 48, 16, 1e-4),
    "swinir": (swinir, lambda sd: sd, ".safetensors", 2, 48, 16, 5e-4),
    "dat": (dat, lambda sd: sd, ".safetensors", 2, 48, 16, 5e-4),
}


def write_model(folder: Path, name: str) -> tuple[Path, torch.nn.Module]:
    build, keys, suffix, *_ = CASES[name]
    torch.manual_seed(0)
    net = build().eval()
    state_dict = keys({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()})
    path = folder / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)
    return path, net


def image(height: int, width: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A smooth random IMAGE (B, H, W, 3): structure at several scales, like a photo."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 8 + 1, width // 8 + 1, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    noisy = smooth + 0.15 * torch.rand(batch, 3, height, width, generator=g)
    return noisy.clamp(0, 1).permute(0, 2, 3, 1)


def untiled(model: upscalers.UpscaleModel, pixels: torch.Tensor) -> torch.Tensor:
    """spandrel's own call on the whole image, item by item -> (B, H*s, W*s, C)."""
    return torch.cat([model.descriptor(pixels[b:b + 1].permute(0, 3, 1, 2)) for b in range(len(pixels))]
                     ).permute(0, 2, 3, 1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_files_load_by_content_and_tiles_equal_the_untiled_model(tmp_path: Path, name: str) -> None:
    _, _, _, scale, tile, overlap, tolerance = CASES[name]
    path, net = write_model(tmp_path, name)
    model = load_upscale_model(path)
    assert model.scale == scale and model.input_channels == 3 and model.output_channels == 3
    assert model.name == path.name
    pixels = image(150, 190, batch=2)
    reference = untiled(model, pixels)
    # the file's network is the one we built: same output as the module we saved
    with torch.no_grad():
        direct = net(pixels[:1].permute(0, 3, 1, 2)).clamp(0, 1).permute(0, 2, 3, 1)
    assert (direct - reference[:1]).abs().max().item() <= 1e-5
    steps: list[tuple[int, int]] = []
    out = upscale_image(model, pixels, tile=tile, overlap=overlap, min_tile=16,
                        on_progress=lambda done, total: steps.append((done, total)))
    assert out.shape == (2, 150 * scale, 190 * scale, 3) and out.dtype == torch.float32
    assert len(steps) > 2 * 4 and steps[-1][0] == steps[-1][1]  # several tiles per image, all reported
    error = (out - reference).abs().max().item()
    assert error <= tolerance, f"{name}: tiled vs untiled max abs error {error:.2e}"
    # the check can fail: tiles cut without overlap visibly differ from the untiled image
    hard = upscale_image(model, pixels, tile=tile, overlap=0, min_tile=16)
    assert (hard - reference).abs().max().item() > 0.05


def test_out_of_memory_halves_the_tile_and_gives_the_same_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = write_model(tmp_path, "compact")
    model = load_upscale_model(path)
    pixels = image(100, 120)
    reference = untiled(model, pixels)
    original = upscalers._run_tile
    sizes: list[int] = []

    def run_tile(model: Any, x: torch.Tensor) -> torch.Tensor:
        sizes.append(max(x.shape[-2:]))
        if sizes[-1] >= 96:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(model, x)

    monkeypatch.setattr(upscalers, "_run_tile", run_tile)
    out = upscale_image(model, pixels, tile=96, overlap=16, min_tile=16)
    assert sizes[0] >= 96 and max(sizes[1:]) < 96 and len(sizes) > 2  # one failed big tile, then 48-pixel tiles
    assert (out - reference).abs().max().item() <= 1e-4

    def always_out_of_memory(model: Any, x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(upscalers, "_run_tile", always_out_of_memory)
    with pytest.raises(UpscaleMemoryError, match="ran out of memory even with 24-pixel tiles"):
        upscale_image(model, pixels, tile=96, overlap=8, min_tile=16)


def test_half_precision_where_the_architecture_supports_it(tmp_path: Path) -> None:
    path, _ = write_model(tmp_path, "compact")
    full, half = load_upscale_model(path), load_upscale_model(path, torch.bfloat16)
    assert half.descriptor.dtype == torch.bfloat16 and full.descriptor.dtype == torch.float32
    pixels = image(40, 48)
    out = upscale_image(half, pixels)
    assert out.dtype == torch.float32 and (out - upscale_image(full, pixels)).abs().max().item() < 0.05


def test_tile_spans_cover_the_axis_aligned_and_overlapping() -> None:
    assert tile_spans(40, 64, 16) == [(0, 40)]
    spans = tile_spans(150, 48, 16, align=16)
    assert spans == [(0, 48), (32, 48), (64, 48), (96, 54)]  # the last one ends at the border
    for (a, la), (b, _) in zip(spans, spans[1:]):
        assert b % 16 == 0 and a + la - b >= 16
    weights = edge_weights(48, 2, 16, True, True)
    assert weights[:8].eq(0).all() and weights[-8:].eq(0).all() and weights[24:72].eq(1).all()
    assert (weights[8:24].diff() > 0).all()
    # two neighbours' weights cross-fade: positive sum over the whole overlap
    left, right = edge_weights(48, 1, 16, False, True), edge_weights(48, 1, 16, True, False)
    assert (left[32:] + right[:16] > 0).all()


def test_tiles_respect_size_requirements(tmp_path: Path) -> None:
    """A model whose input must be a multiple of 4 (pixel-unshuffle Real-ESRGAN x2) runs on an odd-sized image."""
    from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

    torch.manual_seed(0)
    net = RRDBNet(num_filters=8, num_blocks=1, scale=4, in_nc=12, shuffle_factor=2)  # x4 trunk on a 2x unshuffle
    path = tmp_path / "x2.pth"
    torch.save({"params_ema": real_esrgan_keys(net.state_dict(), 1)}, path)
    model = load_upscale_model(path)
    assert model.scale == 2 and model.descriptor.size_requirements.multiple_of % 2 == 0
    pixels = image(75, 101)
    out = upscale_image(model, pixels, tile=64, overlap=32, min_tile=16)
    assert out.shape == (1, 150, 202, 3)
    assert (out - untiled(model, pixels)).abs().max().item() <= 1e-3


def test_grey_images_and_errors(tmp_path: Path) -> None:
    path, _ = write_model(tmp_path, "compact")
    model = load_upscale_model(path)
    grey = image(20, 24)[..., :1]
    out = upscale_image(model, grey)
    assert out.shape == (1, 40, 48, 3)
    assert torch.allclose(out, untiled(model, grey.expand(-1, -1, -1, 3)), atol=1e-6)
    with pytest.raises(UpscaleModelError, match="takes 3-channel images; this image has 2"):
        upscale_image(model, image(20, 24)[..., :2])
    junk = tmp_path / "junk.safetensors"
    save_file({"some.weight": torch.zeros(3, 3)}, str(junk))
    with pytest.raises(UpscaleModelError, match="not an upscale model architecture spandrel knows"):
        load_upscale_model(junk)
    with pytest.raises(UpscaleModelError, match="unsupported file type '.onnx'"):
        load_upscale_model(tmp_path / "model.onnx")


def test_inpainting_models_are_refused_with_the_reason(tmp_path: Path) -> None:
    from spandrel.architectures.LaMa.__arch.LaMa import LaMa

    torch.manual_seed(0)
    path = tmp_path / "lama.safetensors"
    save_file({k: v.contiguous() for k, v in LaMa().state_dict().items()}, str(path))
    with pytest.raises(UpscaleModelError, match="LaMa model for Inpainting, which needs more than an image"):
        load_upscale_model(path)
