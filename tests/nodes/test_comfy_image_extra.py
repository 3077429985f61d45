"""ComfyUI's everyday image nodes (nodes.comfy.image_extra) on small images with hand-computed values."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nodes.comfy.image_extra import bayer_matrix


def constant(value: float, batch: int = 1, height: int = 4, width: int = 4, channels: int = 3) -> torch.Tensor:
    return torch.full((batch, height, width, channels), value)


def test_image_composite_masked_places_clips_masks_and_repeats(nodes: dict[str, Any]) -> None:
    destination = constant(0.0, batch=2, height=4, width=5)
    source = torch.cat([constant(1.0, height=2, width=2), constant(0.5, height=2, width=2)])[:1]
    out = nodes["ImageCompositeMasked"](destination=destination, source=source, x=3, y=1, resize_source=False)
    assert out[:, 1:3, 3:5].eq(1).all() and out.sum() == 2 * 4 * 3 and not destination.any()
    edge = nodes["ImageCompositeMasked"](destination=destination, source=source, x=4, y=3, resize_source=False,
                                         mask=torch.tensor([[[0.5, 1.0], [1.0, 1.0]]]))
    assert edge[0, 3, 4, 0] == 0.5 and edge[0, :3].sum() == 0 and edge[0, 3, :4].sum() == 0  # one pixel shows
    big_mask = torch.zeros(4, 4)
    big_mask[:2, :2] = 1.0  # bilinear to the 2 x 2 source (samples at 0.5 and 2.5): [[1, 0], [0, 0]]
    masked = nodes["ImageCompositeMasked"](destination=destination, source=source, x=0, y=0, resize_source=False,
                                           mask=big_mask)
    assert masked[0, :, :, 0].tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    resized = nodes["ImageCompositeMasked"](destination=destination, source=source, x=0, y=0, resize_source=True)
    assert torch.allclose(resized, torch.tensor(1.0))
    rgba = nodes["ImageCompositeMasked"](destination=constant(0.0, channels=4), source=constant(0.5, height=1,
                                         width=1), x=0, y=0, resize_source=False)
    assert rgba[0, 0, 0].tolist() == [0.5, 0.5, 0.5, 1.0]  # the RGB source pastes as opaque


def test_image_batch_scales_the_second_to_the_first(nodes: dict[str, Any]) -> None:
    first = constant(0.0)
    ramp = (torch.arange(4.0) / 3).reshape(1, 1, 4, 1).expand(1, 2, 4, 3)  # 4 wide, 2 high: columns 0, 1/3, 2/3, 1
    out = nodes["ImageBatch"](image1=first, image2=ramp)
    # centre crop to 1:1 keeps columns 1..2, then bilinear 2 -> 4: 1/3, 1/3 + 1/12, 2/3 - 1/12, 2/3
    assert out.shape == (2, 4, 4, 3)
    assert torch.allclose(out[1, 0, :, 0], torch.tensor([4.0, 5.0, 7.0, 8.0]) / 12)
    alpha = nodes["ImageBatch"](image1=constant(0.2, channels=4), image2=constant(0.4))
    assert alpha.shape == (2, 4, 4, 4) and alpha[1, 0, 0].tolist() == pytest.approx([0.4, 0.4, 0.4, 1.0])


def test_empty_image_crop_flip_rotate(nodes: dict[str, Any]) -> None:
    orange = nodes["EmptyImage"](width=3, height=2, batch_size=2, color=0xFF8000)
    assert orange.shape == (2, 2, 3, 3) and orange[1, 1, 2].tolist() == pytest.approx([1.0, 128 / 255, 0.0])
    grid = torch.arange(12.0).reshape(1, 3, 4, 1).expand(1, 3, 4, 3).clone()  # rows 0..3, 4..7, 8..11
    crop = nodes["ImageCrop"](image=grid, width=2, height=5, x=1, y=1)
    assert crop[0, :, :, 0].tolist() == [[5, 6], [9, 10]]
    corner = nodes["ImageCrop"](image=grid, width=3, height=3, x=99, y=99)  # moved to the last pixel
    assert corner[0, :, :, 0].tolist() == [[11]]
    assert nodes["ImageFlip"](image=grid, flip_method="x-axis: vertically")[0, 0, :, 0].tolist() == [8, 9, 10, 11]
    assert nodes["ImageFlip"](image=grid, flip_method="y-axis: horizontally")[0, 0, :, 0].tolist() == [3, 2, 1, 0]
    turned = nodes["ImageRotate"](image=grid, rotation="90 degrees")  # clockwise: the left column on top
    assert turned.shape == (1, 4, 3, 3) and turned[0, 0, :, 0].tolist() == [8, 4, 0]
    assert nodes["ImageRotate"](image=grid, rotation="270 degrees")[0, 0, :, 0].tolist() == [3, 7, 11]
    assert torch.equal(nodes["ImageRotate"](image=grid, rotation="none"), grid)


@pytest.mark.parametrize(("mode", "factor", "expected"), [
    ("normal", 0.5, 0.5), ("multiply", 0.5, (0.25 + 0.1875) / 2), ("screen", 1.0, 0.8125),
    ("overlay", 1.0, 0.375), ("soft_light", 1.0, 0.375), ("difference", 1.0, 0.0), ("difference", 0.5, 0.0)])
def test_image_blend_modes(nodes: dict[str, Any], mode: str, factor: float, expected: float) -> None:
    # image1 0.25 under image2 0.75; soft light: 0.25 + (2 x 0.75 - 1) x (D(0.25) = 0.5 - 0.25);
    # difference 0.25 - 0.75 = -0.5 is clamped to 0
    out = nodes["ImageBlend"](image1=constant(0.25), image2=constant(0.75), blend_factor=factor, blend_mode=mode)
    assert out.shape == (1, 4, 4, 3) and torch.allclose(out, torch.tensor(expected))


def test_image_blend_scales_image2_and_difference(nodes: dict[str, Any]) -> None:
    out = nodes["ImageBlend"](image1=constant(0.75), image2=constant(0.25, height=2, width=8), blend_factor=1.0,
                              blend_mode="difference")
    assert out.shape == (1, 4, 4, 3) and torch.allclose(out, torch.tensor(0.5))


def test_batch_nodes_and_size(nodes: dict[str, Any]) -> None:
    images = torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 2, 5, 3)
    assert nodes["RepeatImageBatch"](image=images, amount=2)[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 1, 2]
    assert nodes["ImageFromBatch"](image=images, batch_index=1, length=9)[:, 0, 0, 0].tolist() == [1, 2]
    assert nodes["ImageFromBatch"](image=images, batch_index=7, length=2)[:, 0, 0, 0].tolist() == [2]
    parts = nodes["RebatchImages"](images=[images, images[:1]], batch_size=[3 - 1])
    assert [p[:, 0, 0, 0].tolist() for p in parts] == [[0, 1], [2, 0]]
    with pytest.raises(ValueError, match=r"RebatchImages: images 2..3 would share a batch but differ in size"):
        nodes["RebatchImages"](images=[images, constant(0.0)], batch_size=[2])
    singles = nodes["RebatchImages"](images=[images, constant(0.0)], batch_size=[1])
    assert [tuple(p.shape) for p in singles] == [(1, 2, 5, 3)] * 3 + [(1, 4, 4, 3)]
    assert nodes["GetImageSize"](image=images) == (5, 2, 3)


def test_scale_to_max_dimension_and_resize_and_pad(nodes: dict[str, Any]) -> None:
    wide = constant(0.5, height=10, width=20)
    assert nodes["ImageScaleToMaxDimension"](image=wide, upscale_method="nearest-exact",
                                             largest_size=8).shape == (1, 4, 8, 3)
    tall = constant(0.5, height=9, width=3)
    assert nodes["ImageScaleToMaxDimension"](image=tall, upscale_method="area", largest_size=6).shape == (1, 6, 2, 3)
    padded = nodes["ResizeAndPadImage"](image=constant(1.0, height=2, width=4), target_width=8, target_height=8,
                                        padding_color="black", interpolation="nearest-exact")
    # x2 to 8 x 4, centred: rows 2..5 white, the rest black
    assert padded.shape == (1, 8, 8, 3) and padded[0, 2:6].eq(1).all() and padded.sum() == 8 * 4 * 3
    white = nodes["ResizeAndPadImage"](image=constant(0.0, height=3, width=3), target_width=5, target_height=4,
                                       padding_color="white", interpolation="area")
    assert white[0, :, 4].eq(1).all() and white[0, :, :4].eq(0).all()  # x 4/3 to 4 x 4 at x (5 - 4) // 2 = 0


def test_image_stitch(nodes: dict[str, Any]) -> None:
    left = constant(0.0, batch=2, height=4, width=2)
    right = constant(1.0, height=2, width=3)
    padded = nodes["ImageStitch"](image1=left, direction="right", match_image_size=False, spacing_width=1,
                                  spacing_color="red", image2=right)
    # image2 padded to 4 high (1 black row above and below), 2 pixels of red spacing between
    assert padded.shape == (2, 4, 7, 3) and padded[1, 1:3, 4:].eq(1).all() and padded[1, 0, 4:].eq(0).all()
    assert padded[0, 0, 2].tolist() == [1.0, 0.0, 0.0] and padded[0, 0, 3].tolist() == [1.0, 0.0, 0.0]
    white = nodes["ImageStitch"](image1=left, direction="right", match_image_size=False, spacing_width=0,
                                 spacing_color="white", image2=right)
    assert white.shape == (2, 4, 5, 3) and white[0, 0, 2:].eq(1).all() and white[0, :, :2].eq(0).all()  # white pad
    matched = nodes["ImageStitch"](image1=left, direction="left", match_image_size=True, spacing_width=0,
                                   spacing_color="white", image2=right)
    assert matched.shape == (2, 4, 8, 3) and matched[:, :, :6].eq(1).all() and matched[:, :, 6:].eq(0).all()
    below = nodes["ImageStitch"](image1=left, direction="up", match_image_size=True, spacing_width=2,
                                 spacing_color="white", image2=right)
    assert below.shape == (2, 1 + 2 + 4, 2, 3)  # image2 scaled to 2 wide: int(2 / 1.5) = 1 high, on top
    assert below[:, 1:3].eq(1).all() and below[:, 3:].eq(0).all()
    assert torch.equal(nodes["ImageStitch"](image1=left, direction="down", match_image_size=True, spacing_width=0,
                                            spacing_color="white"), left)


def test_image_add_noise_is_comfyui_s_seeded_cpu_noise(nodes: dict[str, Any]) -> None:
    image = constant(0.5, height=3, width=3)
    out = nodes["ImageAddNoise"](image=image, seed=11, strength=0.25)
    with torch.random.fork_rng():
        torch.manual_seed(11)  # what ComfyUI seeds
        expected = (image + 0.25 * torch.randn(image.shape)).clamp(0, 1)
    assert torch.equal(out, expected) and not torch.equal(out, image)
    assert torch.equal(nodes["ImageAddNoise"](image=image, seed=11, strength=0.0), image)


def test_image_quantize(nodes: dict[str, Any]) -> None:
    two = constant(51 / 255, height=4, width=4)
    two[:, :, 2:] = 204 / 255
    assert torch.allclose(nodes["ImageQuantize"](image=two, colors=2, dither="none"), two)
    ramp = (torch.arange(16.0) / 15).reshape(1, 1, 16, 1).expand(1, 16, 16, 3).contiguous()
    for dither in ("none", "floyd-steinberg", "bayer-4"):
        out = nodes["ImageQuantize"](image=ramp, colors=2, dither=dither)
        assert out.shape == ramp.shape and len(torch.unique(out.reshape(-1, 3), dim=0)) <= 2, dither
    plain = nodes["ImageQuantize"](image=ramp, colors=2, dither="none")
    ordered = nodes["ImageQuantize"](image=ramp, colors=2, dither="bayer-4")
    assert not torch.equal(plain, ordered)
    assert (plain[0, :, :, 0] - plain[0, 0, :, 0]).abs().sum() == 0  # no dither: every row alike
    assert bayer_matrix(2).tolist() == [[-0.375, 0.125], [0.375, -0.125]]  # Bayer's [[0, 2], [3, 1]] / 4, centred
    assert sorted(bayer_matrix(4).flatten().tolist()) == [(i - 7.5) / 16 for i in range(16)]


def test_morphology(nodes: dict[str, Any]) -> None:
    dot = torch.zeros(1, 5, 5, 3)
    dot[:, 2, 2] = 1.0
    dilated = nodes["Morphology"](image=dot, operation="dilate", kernel_size=3)
    assert dilated[0, 1:4, 1:4].eq(1).all() and dilated.sum() == 9 * 3
    assert nodes["Morphology"](image=dot, operation="erode", kernel_size=3).sum() == 0
    assert nodes["Morphology"](image=dot, operation="open", kernel_size=3).sum() == 0
    assert torch.equal(nodes["Morphology"](image=dot, operation="close", kernel_size=3), dot)
    assert torch.equal(nodes["Morphology"](image=dot, operation="gradient", kernel_size=3), dilated)
    assert torch.equal(nodes["Morphology"](image=dot, operation="top_hat", kernel_size=3), dot)
    assert nodes["Morphology"](image=dot, operation="bottom_hat", kernel_size=3).sum() == 0
    even = nodes["Morphology"](image=dot, operation="dilate", kernel_size=4)  # reaches 2 down-right, 1 up-left
    assert even[0, 1:5, 1:5].eq(1).all() and even.sum() == 16 * 3
    ones = torch.ones(1, 4, 4, 3)
    assert torch.equal(nodes["Morphology"](image=ones, operation="erode", kernel_size=5), ones)  # no border effect


def test_rebatch_images_runs_as_a_list_in_an_api_prompt(tmp_path: Any) -> None:
    """RebatchImages gives a list: the next node runs once per batch, and PreviewAny shows each."""
    from engine.cache import ResultCache
    from engine.registry import NodeRegistry
    from engine.scheduler import Executor
    from engine.settings import Settings
    from engine.validation import validate_document
    from nodes.builtin import build_nodes
    from nodes.memory import result_size
    from nodes.runtime import Runtime

    settings = Settings.for_root(tmp_path)
    registry = NodeRegistry()
    registry.register_pack(build_nodes(Runtime(settings, device="cpu")), "nodes.builtin")
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 3, "height": 2, "batch_size": 3, "color": 0}},
        "2": {"class_type": "RebatchImages", "inputs": {"images": ["1", 0], "batch_size": 2}},
        "3": {"class_type": "GetImageSize", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}},
    }
    report = validate_document(prompt, registry)
    assert report.ok, report.format()
    executor = Executor(registry, ResultCache(64, 1 << 30, size_of=result_size), services={"settings": settings})
    result = executor.run(report.workflow)
    assert result.status == "success", result.failure and result.failure.message
    assert result.outputs["4"]["text"] == ["2", "1"]
