"""ComfyUI's latent nodes (nodes.comfy.latent_ops) on small tensors with hand-computed values, and
InpaintModelConditioning through KSampler into a tiny 9-channel inpainting UNet."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from engine.api import NodeContext
from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from nodes.values import LatentValue, ModelValue, VaeValue
from sgm.sampling.denoisers import model_sampling_for
from sgm.sampling.pix2pix import CONCAT_KEY
from sgm.text.conditioning import Condition
from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet

SCALE = 0.5  # the pooling VAE's latent scale factor


class PoolVae(nn.Module):
    """A VAE stand-in whose latent is easy to compute by hand: each 8 x 8 block's mean of R, G, B and
    of their mean."""

    downscale = 8

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8)
        pooled = nn.functional.avg_pool2d(x, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


def latent(samples: torch.Tensor, **fields: Any) -> LatentValue:
    return LatentValue(samples, **fields)


def context() -> NodeContext:
    return NodeContext("test", threading.Event(), lambda node_id, progress: None)


@pytest.fixture()
def runtime(tmp_path: Path) -> Runtime:
    return Runtime(Settings.for_root(tmp_path), device="cpu")


@pytest.fixture()
def found(runtime: Runtime) -> dict[str, Any]:
    return {spec.id: spec.function for spec in build_nodes(runtime)}


# --------------------------------------------------------------------------- InpaintModelConditioning


def test_inpaint_model_conditioning_feeds_mask_and_masked_image_latent_to_a_9_channel_unet(
        found: dict[str, Any]) -> None:
    vae = VaeValue(PoolVae(), SCALE, "pool")
    pixels = torch.ones(1, 34, 36, 3)  # white; cropped to 32 x 32 from row 1, column 2
    pixels[:, 1:9, 2:10] = 0.0  # black top-left latent pixel of the crop
    mask = torch.zeros(1, 34, 36)
    mask[:, 25:33, 26:34] = 0.75  # the crop's bottom-right 8 x 8 block: rounds to 1 = repaint
    cond = [Condition(context=torch.randn(1, 77, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(0)))]
    positive, negative, out = found["InpaintModelConditioning"](positive=cond, negative=cond, vae=vae,
                                                                pixels=pixels, mask=mask, noise_mask=True)
    # latent of the cropped image: block means of 2 x pixel - 1, times the scale
    expected = torch.ones(4, 4) * SCALE
    expected[0, 0] = -SCALE
    assert out.samples.shape == (1, 4, 4, 4) and torch.allclose(out.samples[0, 0], expected)
    # the masked image: the repaint block grey (0.5 -> 0 in the VAE's range)
    masked = expected.clone()
    masked[3, 3] = 0.0
    assert torch.allclose(out.masked_latent[0, 3], masked)
    assert out.noise_mask.shape == (1, 32, 32) and out.noise_mask[0, 24:, 24:].eq(0.75).all()
    assert out.noise_mask.sum() == 0.75 * 64 and (out.width, out.height) == (32, 32)
    for conditioning in (positive, negative):
        assert torch.allclose(conditioning[0].extra[CONCAT_KEY], out.masked_latent / SCALE)  # raw, as ComfyUI's
        assert torch.equal(conditioning[0].extra["concat_mask"], out.noise_mask)
    assert CONCAT_KEY not in cond[0].extra  # the input is not changed
    without = found["InpaintModelConditioning"](positive=cond, negative=cond, vae=vae, pixels=pixels, mask=mask,
                                                noise_mask=False)[2]
    assert without.noise_mask is None and torch.equal(without.masked_latent, out.masked_latent)

    # KSampler on a 9-channel UNet: its input channels 4..8 are [mask, masked-image latent]
    unet = tiny_unet("sd1", in_channels=9)
    seen: list[torch.Tensor] = []
    unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    model = ModelValue(unet=unet, model_sampling=model_sampling_for("eps"), family="sd1", name="tiny-inpaint")
    assert model.is_inpaint
    sampled = found["KSampler"](model=model, seed=1, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal",
                                positive=positive, negative=negative, latent_image=out, denoise=1.0, ctx=context())
    assert len(seen) == 2 and seen[0].shape == (1, 9, 4, 4)
    latent_mask = torch.zeros(4, 4)
    latent_mask[3, 3] = 0.75  # the mask at latent size (bilinear of whole blocks)
    for x in seen:
        assert torch.allclose(x[0, 4], latent_mask) and torch.allclose(x[0, 5:], out.masked_latent[0])
    kept = latent_mask == 0
    assert torch.allclose(sampled.samples[0, :, kept], out.samples[0, :, kept], atol=1e-5)  # outside: kept

    # noise_mask off: the latent has no noise mask, and the UNet still gets the conditions' mask
    positive, negative, without = found["InpaintModelConditioning"](positive=cond, negative=cond, vae=vae,
                                                                    pixels=pixels, mask=mask, noise_mask=False)
    seen.clear()
    found["KSampler"](model=model, seed=1, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal",
                      positive=positive, negative=negative, latent_image=without, denoise=1.0, ctx=context())
    assert len(seen) == 2
    for x in seen:
        assert torch.allclose(x[0, 4], latent_mask) and torch.allclose(x[0, 5:], out.masked_latent[0])


def test_inpaint_model_conditioning_rejects_images_smaller_than_a_latent_pixel(found: dict[str, Any]) -> None:
    vae = VaeValue(PoolVae(), SCALE, "pool")
    with pytest.raises(ValueError, match=r"InpaintModelConditioning: the image \(7x20\) is smaller than one latent"):
        found["InpaintModelConditioning"](positive=[], negative=[], vae=vae, pixels=torch.ones(1, 20, 7, 3),
                                          mask=torch.zeros(1, 20, 7), noise_mask=True)


# --------------------------------------------------------------------------- compositing and math


def test_latent_composite_masked_places_clips_masks_and_repeats(found: dict[str, Any]) -> None:
    destination = latent(torch.zeros(3, 1, 4, 4), noise_mask=torch.ones(1, 4, 4))
    source = latent(torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)]))
    out = found["LatentCompositeMasked"](destination=destination, source=source, x=8, y=16, resize_source=False)
    assert out.samples[0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]]
    assert out.samples[1, 0, 2, 1] == 2 and out.samples[2, 0, 2, 1] == 1  # source batch repeated: 1, 2, 1
    assert out.noise_mask is destination.noise_mask and not destination.samples.any()
    edge = found["LatentCompositeMasked"](destination=destination, source=source, x=24, y=0, resize_source=False,
                                          mask=torch.tensor([[1.0, 0.0], [0.5, 1.0]]))
    assert edge.samples[0, 0].tolist() == [[0, 0, 0, 1], [0, 0, 0, 0.5], [0, 0, 0, 0], [0, 0, 0, 0]]
    resized = found["LatentCompositeMasked"](destination=destination, source=source, x=0, y=0, resize_source=True)
    assert torch.allclose(resized.samples[1], torch.tensor(2.0))


def test_latent_add_subtract_multiply_fit_size_and_batch(found: dict[str, Any]) -> None:
    first = latent(torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4))
    second = latent(torch.full((1, 4, 2, 2), 3.0))  # resized to 4 x 4 (constant stays 3), repeated to 2
    assert torch.equal(found["LatentAdd"](samples1=first, samples2=second).samples, first.samples + 3)
    assert torch.equal(found["LatentSubtract"](samples1=first, samples2=second).samples, first.samples - 3)
    assert torch.equal(found["LatentMultiply"](samples=first, multiplier=-0.5).samples, first.samples * -0.5)


def test_latent_interpolate_mixes_directions_and_lengths(found: dict[str, Any]) -> None:
    a = torch.zeros(1, 4, 1, 2)
    b = torch.zeros(1, 4, 1, 2)
    a[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0, 0.0])  # length 5
    b[0, :, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 2.0])  # length 2
    b[0, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # a is zero there: its direction counts as 0
    out = found["LatentInterpolate"](samples1=latent(a), samples2=latent(b), ratio=0.5).samples
    mixed = torch.tensor([0.3, 0.4, 0.0, 0.5])  # (0.6, 0.8, 0, 0) / 2 + (0, 0, 0, 1) / 2, length sqrt(0.5)
    assert torch.allclose(out[0, :, 0, 0], mixed / 0.5 ** 0.5 * 3.5)  # length (5 + 2) / 2
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([0.5, 0.0, 0.0, 0.0]))  # direction of b, length 1 / 2
    same = found["LatentInterpolate"](samples1=latent(a), samples2=latent(b), ratio=1.0).samples
    assert torch.allclose(same, a)


def test_latent_batch_concatenates_with_seed_offsets_and_masks(found: dict[str, Any]) -> None:
    first = latent(torch.zeros(2, 4, 4, 4), noise_mask=torch.zeros(1, 32, 32))
    second = latent(torch.ones(1, 4, 2, 2), batch_index=(7,))
    out = found["LatentBatch"](samples1=first, samples2=second)
    assert out.samples.shape == (3, 4, 4, 4) and out.samples[2].eq(1).all()
    assert out.batch_index == (0, 1, 7)
    assert out.noise_mask.shape == (3, 32, 32) and out.noise_mask[:2].eq(0).all() and out.noise_mask[2].eq(1).all()
    plain = found["LatentBatch"](samples1=latent(torch.zeros(1, 4, 2, 2)), samples2=latent(torch.ones(2, 4, 2, 2)))
    assert plain.batch_index == (0, 0, 1) and plain.noise_mask is None  # ComfyUI: samples2 restarts at 0


def test_latent_flip_rotate_crop_move_masks_along(found: dict[str, Any]) -> None:
    grid = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(1, 4, 2, 2).clone()
    source = latent(grid, noise_mask=grid[:, 0].clone(), width=16, height=16)
    flipped = found["LatentFlip"](samples=source, flip_method="x-axis: vertically")
    assert flipped.samples[0, 0].tolist() == [[3, 4], [1, 2]] and flipped.noise_mask[0].tolist() == [[3, 4], [1, 2]]
    mirrored = found["LatentFlip"](samples=source, flip_method="y-axis: horizontally")
    assert mirrored.samples[0, 0].tolist() == [[2, 1], [4, 3]]
    wide = latent(torch.arange(6.0).reshape(1, 1, 2, 3), width=24, height=16)
    turned = found["LatentRotate"](samples=wide, rotation="90 degrees")  # clockwise
    assert turned.samples[0, 0].tolist() == [[3, 0], [4, 1], [5, 2]] and (turned.width, turned.height) == (16, 24)
    assert found["LatentRotate"](samples=wide, rotation="180 degrees").samples[0, 0].tolist() == [[5, 4, 3],
                                                                                                 [2, 1, 0]]
    assert found["LatentRotate"](samples=wide, rotation="270 degrees").samples[0, 0].tolist() == [[2, 5], [1, 4],
                                                                                                 [0, 3]]
    big = latent(torch.arange(256.0).reshape(1, 1, 16, 16), noise_mask=torch.rand(1, 128, 128))
    crop = found["LatentCrop"](samples=big, width=64, height=512, x=200, y=8)
    # x 200 -> latent 25, moved in to 16 - 8 = 8; y 8 -> 1; 8 wide, to the bottom (15 rows)
    assert crop.samples.shape == (1, 1, 15, 8) and crop.samples[0, 0, 0, 0] == 1 * 16 + 8
    assert torch.equal(crop.noise_mask, big.noise_mask[:, 8:128, 64:128]) and (crop.width, crop.height) == (64, 120)


def test_rebatch_latents_regroups_and_breaks_at_size_changes(found: dict[str, Any]) -> None:
    a = latent(torch.zeros(3, 4, 4, 4), noise_mask=torch.zeros(1, 32, 32))
    b = latent(torch.ones(2, 4, 4, 4))
    c = latent(torch.full((1, 4, 2, 2), 2.0))
    out = found["RebatchLatents"](latents=[a, b, c], batch_size=[2])
    assert [o.samples.shape[0] for o in out] == [2, 2, 1, 1]
    assert [o.batch_index for o in out] == [(0, 1), (2, 3), (4,), (5,)]
    assert out[1].samples[0].eq(0).all() and out[1].samples[1].eq(1).all() and out[3].samples.shape[-1] == 2
    assert out[0].noise_mask.eq(0).all() and out[1].noise_mask[0].eq(0).all() and out[1].noise_mask[1].eq(1).all()
    assert out[2].noise_mask is None and out[3].noise_mask is None  # all ones: no mask


def test_latent_batch_seed_behavior(found: dict[str, Any]) -> None:
    source = latent(torch.zeros(3, 4, 2, 2), batch_index=(4, 5, 6))
    assert found["LatentBatchSeedBehavior"](samples=source, seed_behavior="fixed").batch_index == (4, 4, 4)
    assert found["LatentBatchSeedBehavior"](samples=latent(torch.zeros(2, 4, 2, 2)),
                                            seed_behavior="fixed").batch_index == (0, 0)
    assert found["LatentBatchSeedBehavior"](samples=source, seed_behavior="random").batch_index is None


def test_ksampler_seeds_each_item_by_its_batch_index(found: dict[str, Any]) -> None:
    """seed + batch_index[i] seeds item i: "fixed" gives every item item 0's noise, and a batch made
    by LatentBatch keeps the noise each part had on its own."""
    unet = tiny_unet("sd1")
    model = ModelValue(unet=unet, model_sampling=model_sampling_for("eps"), family="sd1", name="tiny")
    cond = [Condition(context=torch.randn(1, 77, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(0)))]

    def ksampler(image: LatentValue) -> torch.Tensor:
        return found["KSampler"](model=model, seed=10, steps=2, cfg=1.0, sampler_name="euler_ancestral",
                                 scheduler="normal", positive=cond, negative=cond, latent_image=image, denoise=1.0,
                                 ctx=context()).samples

    three = latent(torch.zeros(3, 4, 4, 4))
    plain = ksampler(three)
    assert not torch.allclose(plain[0], plain[1])  # seeds 10, 11, 12
    fixed = ksampler(found["LatentBatchSeedBehavior"](samples=three, seed_behavior="fixed"))
    assert torch.allclose(fixed[1], plain[0], atol=1e-6) and torch.allclose(fixed[2], plain[0], atol=1e-6)
    joined = ksampler(found["LatentBatch"](samples1=latent(torch.zeros(1, 4, 4, 4)),
                                           samples2=latent(torch.zeros(2, 4, 4, 4))))  # indices 0, 0, 1
    assert torch.allclose(joined[0], plain[0], atol=1e-6) and torch.allclose(joined[1], plain[0], atol=1e-6)
    assert torch.allclose(joined[2], plain[1], atol=1e-6)


# --------------------------------------------------------------------------- files


def test_save_and_load_latent_round_trip_in_comfyui_s_layout(runtime: Runtime, found: dict[str, Any]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    settings = runtime.settings
    samples = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(3))
    ctx = NodeContext("9", threading.Event(), lambda node_id, progress: None,
                      services={"prompt": {"9": {"class_type": "SaveLatent"}},
                                "extra_pnginfo": {"workflow": {"a": 1}}})
    result = found["SaveLatent"](samples=latent(samples), filename_prefix="latents/ComfyUI", ctx=ctx)
    again = found["SaveLatent"](samples=latent(samples), filename_prefix="latents/ComfyUI", ctx=ctx)
    assert result.ui["latents"] == [{"filename": "ComfyUI_00001_.latent", "subfolder": "latents", "type": "output"}]
    assert again.ui["latents"][0]["filename"] == "ComfyUI_00002_.latent"
    path = Path(settings.output_dir) / "latents" / "ComfyUI_00001_.latent"
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == {"latent_tensor", "latent_format_version_0"}
        assert torch.allclose(handle.get_tensor("latent_tensor"), samples / 0.18215)  # raw, as ComfyUI's
        assert handle.metadata()["prompt"] == '{"9": {"class_type": "SaveLatent"}}'
        assert handle.metadata()["workflow"] == '{"a": 1}'
    inputs = Path(settings.input_dir)
    inputs.mkdir(parents=True)
    (inputs / "mine.latent").write_bytes(path.read_bytes())
    save_file({"latent_tensor": samples, "latent_format_version_0": torch.tensor([])}, str(inputs / "comfy.latent"))
    save_file({"latent_tensor": samples}, str(inputs / "old.latent"))
    assert torch.allclose(found["LoadLatent"](latent="mine.latent").samples, samples, atol=1e-6)
    assert torch.allclose(found["LoadLatent"](latent="comfy.latent").samples, samples * 0.18215)  # raw VAE latent
    assert torch.equal(found["LoadLatent"](latent="old.latent").samples, samples)  # older files: already scaled
    choices = {spec.id: spec for spec in build_nodes(runtime)}["LoadLatent"].input("latent").widget.options()
    assert choices == ["comfy.latent", "mine.latent", "old.latent"]
    with pytest.raises(FileNotFoundError, match="LoadLatent: latent 'gone.latent' is not in"):
        found["LoadLatent"](latent="gone.latent")
    with pytest.raises(ValueError, match=r"SaveLatent: filename_prefix '../x' must name a file inside"):
        found["SaveLatent"](samples=latent(samples), filename_prefix="../x", ctx=ctx)
