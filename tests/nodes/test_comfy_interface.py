"""ComfyUI's node interface (nodes.comfy): our /object_info entry of every core ComfyUI node is
ComfyUI 0.3.64's, field by field, and the pure-tensor mappings do what ComfyUI's nodes do.

The spec is the project's reference ``../shared/reference/comfyui-0.3.64-object_info.json``
(ComfyUI 0.3.64's ``/object_info``, descriptions removed), read where it lies, not copied. Model-backed mappings are tested in
tests/workflows/test_comfy_nodes.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.comfy import COMPAT, NATIVE, comfyui_names
from nodes.runtime import Runtime
from nodes.values import LatentValue
from tests.reference import COMFYUI_OBJECT_INFO, comfyui_object_info

HERE = Path(__file__).resolve().parent
# The SD1.x / SD2.x / SDXL core that issue 14 names (PrimitiveNode, Reroute and Note are UI-side).
CORE_NODES = ('CLIPLoader', 'CLIPSetLastLayer', 'CLIPTextEncode', 'CLIPTextEncodeSDXL', 'CLIPTextEncodeSDXLRefiner', 'CheckpointLoader', 'CheckpointLoaderSimple', 'ConditioningCombine', 'ConditioningSetArea', 'ConditioningZeroOut', 'DualCLIPLoader', 'EmptyLatentImage', 'ImageScale', 'ImageScaleBy', 'KSampler', 'LatentFromBatch', 'LatentUpscale', 'LatentUpscaleBy', 'LoadImage', 'LoadImageMask', 'LoraLoader', 'LoraLoaderModelOnly', 'PreviewImage', 'RepeatLatentBatch', 'SaveImage', 'SetLatentNoiseMask', 'UNETLoader', 'VAEDecode', 'VAEDecodeTiled', 'VAEEncode', 'VAEEncodeTiled', 'VAELoader')
# What ComfyUI's official SD1.5 / SDXL templates need besides (issue 15).
TEMPLATE_NODES = (
    'KSamplerAdvanced', 'KSamplerSelect', 'BasicScheduler', 'SDTurboScheduler', 'SamplerCustom', 'SamplerCustomAdvanced',
    'BasicGuider', 'CFGGuider', 'DualCFGGuider', 'RandomNoise', 'DisableNoise', 'SetFirstSigma', 'SplitSigmas',
    'SplitSigmasDenoise', 'FlipSigmas', 'VAEEncodeForInpaint', 'ImagePadForOutpaint', 'ImageScaleToTotalPixels',
    'ImageInvert', 'ImageBlur', 'ImageSharpen', 'LatentComposite', 'LatentBlend', 'InvertMask', 'GrowMask', 'SolidMask',
    'MaskComposite', 'FeatherMask', 'CropMask', 'ImageToMask', 'MaskToImage', 'ThresholdMask', 'ConditioningSetMask',
    'ConditioningConcat', 'ConditioningSetTimestepRange', 'ModelSamplingDiscrete', 'Canny')
REFERENCE = comfyui_object_info()
pytestmark = pytest.mark.skipif(REFERENCE is None, reason=f"the interface spec is not at {COMFYUI_OBJECT_INFO}")
SPEC = {name: REFERENCE[name] for name in CORE_NODES + TEMPLATE_NODES} if REFERENCE is not None else {}
# Choice lists ComfyUI fills from its folders: the reference machine's files are not ours.
FOLDER_CHOICES = {"ckpt_name", "vae_name", "lora_name", "unet_name", "clip_name", "clip_name1", "clip_name2", "image",
                  "gligen_name", "control_net_name", "model_name", "hypernetwork_name", "style_model_name"}
# The sampler and scheduler lists are the library's tables (another change completes them).
LIBRARY_CHOICES = {("KSampler", "sampler_name"), ("KSampler", "scheduler"), ("KSamplerAdvanced", "sampler_name"),
                   ("KSamplerAdvanced", "scheduler"), ("KSamplerSelect", "sampler_name"), ("BasicScheduler", "scheduler")}


# object_info and nodes: tests/nodes/conftest.py


def combo_entry(entry: list[Any]) -> list[Any]:
    """ComfyUI's newer (V3) nodes write a choice as ``["COMBO", {"options": [...], "multiselect": false}]``, the
    older ones (and we) as ``[[...], {}]``; the frontend reads both alike."""
    if entry[0] == "COMBO" and len(entry) > 1 and not entry[1].get("multiselect"):
        options = {k: v for k, v in entry[1].items() if k not in ("options", "multiselect")}
        return [list(entry[1].get("options", ())), options]  # no options: the frontend asks a route
    return entry


def normal_options(kind: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Options as the frontend reads them: tooltips aside, an INT's step defaults to 1."""
    options = {k: v for k, v in options.items() if k != "tooltip"}
    if kind == "INT":
        options.setdefault("step", 1)
    return options


def test_every_core_comfyui_node_is_registered(object_info: dict[str, Any]) -> None:
    assert sorted(set(SPEC) - set(object_info)) == []


@pytest.mark.parametrize("name", sorted(SPEC))
def test_interface_matches_comfyui(object_info: dict[str, Any], name: str) -> None:
    check_interface(name, SPEC[name], object_info[name])


def test_every_other_adapter_has_comfyui_s_interface(object_info: dict[str, Any]) -> None:
    """Adapters beyond the lists above (ControlNet, upscale models, CLIP vision, merging, ...) are
    held to the same check: any node marked as ComfyUI's must be ComfyUI's, field by field."""
    others = sorted(name for name, info in object_info.items()
                    if info.get("compat") == COMPAT and name not in SPEC and name not in ("Note", "MarkdownNote"))
    assert [name for name in others if name not in REFERENCE] == []  # no invented ComfyUI names
    for name in others:
        check_interface(name, REFERENCE[name], object_info[name])


def check_interface(name: str, spec: dict[str, Any], ours: dict[str, Any]) -> None:
    assert ours["category"] == spec["category"]
    assert ours["display_name"] == (spec["display_name"] or name)  # null: the frontend shows the name
    assert ours["output"] == spec["output"]
    assert ours["output_name"] == spec["output_name"]
    assert ours["output_is_list"] == spec["output_is_list"]
    assert ours["output_node"] == spec["output_node"]
    assert bool(ours.get("deprecated")) == bool(spec.get("deprecated"))
    for section in ("required", "optional", "hidden"):
        assert ours["input_order"].get(section, []) == spec["input_order"].get(section, []), section
        expected, actual = spec["input"].get(section, {}), ours["input"].get(section, {})
        assert list(actual) == spec["input_order"].get(section, []), section  # dict order = widget order
        if section == "hidden":
            assert actual == expected
            continue
        for input_name, entry in expected.items():
            entry = combo_entry(entry)
            kind, options = entry[0], entry[1] if len(entry) > 1 else {}
            our_kind, our_options = actual[input_name][0], actual[input_name][1]
            where = f"{name}.{input_name}"
            if isinstance(kind, list):
                assert isinstance(our_kind, list) and all(isinstance(c, str) for c in our_kind), where
                if input_name in FOLDER_CHOICES:
                    pass  # this installation's files
                elif (name, input_name) in LIBRARY_CHOICES:
                    shared = [c for c in kind if c in our_kind]
                    assert our_kind[:len(shared)] == shared, f"{where}: ComfyUI's names first, in its order"
                else:
                    assert our_kind == kind, where
            else:
                assert our_kind == kind, where
            assert normal_options(our_kind, our_options) == normal_options(kind, options), where


def test_ksampler_offers_every_comfyui_sampler_and_scheduler(object_info: dict[str, Any]) -> None:
    required = object_info["KSampler"]["input"]["required"]
    for input_name in ("sampler_name", "scheduler"):
        missing = [n for n in SPEC["KSampler"]["input"]["required"][input_name][0] if n not in required[input_name][0]]
        assert missing == [], f"sgm.sampling lacks ComfyUI's {input_name} values {missing}"


def test_adapters_are_marked_and_ours_are_not(object_info: dict[str, Any]) -> None:
    marked = {name for name, info in object_info.items() if info.get("compat") == COMPAT}
    assert set(SPEC) - set(NATIVE) <= marked
    assert marked - set(SPEC) - {"Note", "MarkdownNote"} <= set(REFERENCE)  # ComfyUI's too (checked above)
    assert not marked & set(NATIVE)
    for name in ("LoadCheckpoint", "TextEncode", "EmptyLatent", "SampleLatent", "Decode", "EncodeLatent",
                 "SaveImage", "PreviewImage"):
        assert "compat" not in object_info[name], name


def test_comfyui_names_lists_adapters_and_native_nodes(tmp_path: Path) -> None:
    specs = build_nodes(Runtime(Settings.for_root(tmp_path), device="cpu"))
    names = set(comfyui_names(specs))
    assert set(SPEC) | {"Note", "MarkdownNote"} <= names <= set(REFERENCE) | {"Note", "MarkdownNote"}
    assert {"LoadCheckpoint", "SampleLatent", "TextEncode"}.isdisjoint(names)


# --------------------------------------------------------------------------- mappings on plain values


def latent(batch: int = 2, seed: int = 0, **fields: Any) -> LatentValue:
    samples = torch.randn(batch, 4, 6, 8, generator=torch.Generator().manual_seed(seed))
    return LatentValue(samples, width=64, height=48, **fields)


def test_empty_latent_image_rounds_sizes_down_to_multiples_of_8(nodes: dict[str, Any]) -> None:
    out = nodes["EmptyLatentImage"](width=100, height=64, batch_size=2)
    assert out.samples.shape == (2, 4, 8, 12) and out.empty and not out.samples.any()


def test_set_latent_noise_mask_is_set_latent_mask(nodes: dict[str, Any]) -> None:
    source = latent()
    mask = torch.rand(1, 1, 48, 64)  # ComfyUI accepts any leading shape
    out = nodes["SetLatentNoiseMask"](samples=source, mask=mask)
    ours = nodes["SetLatentMask"](latent=source, mask=mask[:, 0])
    assert torch.equal(out.noise_mask, ours.noise_mask) and out.noise_mask.shape == (1, 48, 64)
    assert out.samples is source.samples and source.noise_mask is None


def test_latent_upscale_by_scales_latent_pixels(nodes: dict[str, Any]) -> None:
    source = latent()
    out = nodes["LatentUpscaleBy"](samples=source, upscale_method="bilinear", scale_by=1.5)
    assert out.samples.shape == (2, 4, 9, 12) and (out.width, out.height) == (96, 72)
    same = nodes["ScaleLatent"](latent=source, width=96, height=72, method="bilinear")
    assert torch.equal(out.samples, same.samples)
    with pytest.raises(ValueError, match="LatentUpscaleBy: upscale_method 'bislerp' is not supported"):
        nodes["LatentUpscaleBy"](samples=source, upscale_method="bislerp", scale_by=2.0)


def test_latent_upscale_zero_keeps_aspect_and_crop_centres(nodes: dict[str, Any]) -> None:
    source = latent()  # 64 x 48 pixels
    assert nodes["LatentUpscale"](samples=source, upscale_method="nearest-exact", width=0, height=0,
                                  crop="disabled") is source
    wide = nodes["LatentUpscale"](samples=source, upscale_method="nearest-exact", width=128, height=0,
                                  crop="disabled")
    assert wide.samples.shape[-2:] == (12, 16)  # height from the 4:3 aspect: 96 px
    square = nodes["LatentUpscale"](samples=source, upscale_method="nearest-exact", width=48, height=48,
                                    crop="center")
    assert square.samples.shape[-2:] == (8, 8)  # sizes under 64 px become 64
    centre = source.samples[..., 1:7]  # 6 x 8 latent cropped to 1:1: columns 1..6
    expected = torch.nn.functional.interpolate(centre, size=(8, 8), mode="nearest-exact")
    assert torch.equal(square.samples, expected)


def test_repeat_latent_batch_repeats_items_masks_and_seed_offsets(nodes: dict[str, Any]) -> None:
    source = latent(batch=2, noise_mask=torch.rand(2, 48, 64), batch_index=(3, 4))
    out = nodes["RepeatLatentBatch"](samples=source, amount=3)
    assert out.samples.shape[0] == 6 and torch.equal(out.samples[4:], source.samples)
    assert out.noise_mask.shape[0] == 6 and torch.equal(out.noise_mask[2:4], source.noise_mask)
    assert out.batch_index == (3, 4, 5, 6, 7, 8)  # each copy continues past the last: new noise
    plain = nodes["RepeatLatentBatch"](samples=latent(batch=1, noise_mask=torch.rand(1, 48, 64)), amount=2)
    assert plain.batch_index is None and plain.noise_mask.shape[0] == 1  # broadcast mask kept


def test_latent_from_batch_clamps_like_comfyui(nodes: dict[str, Any]) -> None:
    source = latent(batch=3)
    out = nodes["LatentFromBatch"](samples=source, batch_index=10, length=4)
    assert out.batch_index == (2,) and torch.equal(out.samples, source.samples[2:])
    two = nodes["LatentFromBatch"](samples=source, batch_index=1, length=64)
    assert two.batch_index == (1, 2)


def test_image_scale_by_and_zero_sizes(nodes: dict[str, Any]) -> None:
    image = torch.rand(1, 20, 30, 3, generator=torch.Generator().manual_seed(1))
    by = nodes["ImageScaleBy"](image=image, upscale_method="bicubic", scale_by=0.5)
    same = nodes["ScaleImage"](image=image, width=15, height=10, method="bicubic", crop="disabled")
    assert by.shape == (1, 10, 15, 3) and torch.equal(by, same)
    kept = nodes["ImageScale"](image=image, upscale_method="area", width=0, height=0, crop="disabled")
    assert kept is image
    tall = nodes["ImageScale"](image=image, upscale_method="area", width=0, height=40, crop="disabled")
    assert tall.shape == (1, 40, 60, 3)
    lanczos = nodes["ImageScale"](image=image, upscale_method="lanczos", width=12, height=12, crop="center")
    assert lanczos.shape == (1, 12, 12, 3)


def test_load_image_mask_takes_the_chosen_channel(tmp_path: Path) -> None:
    from PIL import Image

    settings = Settings.for_root(tmp_path)
    Path(settings.input_dir).mkdir(parents=True, exist_ok=True)
    pixels = Image.new("RGBA", (4, 2), (255, 0, 51, 255))
    pixels.putpixel((0, 0), (0, 102, 0, 0))  # transparent corner
    pixels.save(Path(settings.input_dir) / "m.png")
    found = {spec.id: spec.function for spec in build_nodes(Runtime(settings, device="cpu"))}
    red = found["LoadImageMask"](image="m.png", channel="red")
    assert red.shape == (1, 2, 4) and red[0, 0, 1] == 1.0 and red[0, 0, 0] == 0.0
    assert found["LoadImageMask"](image="m.png", channel="blue")[0, 1, 1] == pytest.approx(0.2)
    alpha = found["LoadImageMask"](image="m.png", channel="alpha")
    assert alpha[0, 0, 0] == 1.0 and alpha[0, 1, 1] == 0.0  # transparent = 1 = repaint
    _, mask = found["LoadImage"](image="m.png")
    assert torch.equal(mask, alpha)
    with pytest.raises(FileNotFoundError, match="LoadImageMask: image 'gone.png' is not in"):
        found["LoadImageMask"](image="gone.png", channel="red")


def test_conditioning_nodes_are_ours(nodes: dict[str, Any]) -> None:
    from sgm.text.conditioning import Condition

    a = Condition(context=torch.ones(1, 77, 8), pooled=torch.ones(1, 4))
    b = Condition(context=torch.zeros(1, 77, 8), pooled=None)
    assert nodes["ConditioningCombine"](conditioning_1=[a], conditioning_2=[b]) == [a, b]
    (zero,) = nodes["ConditioningZeroOut"](conditioning=[a])
    assert not zero.context.any() and not zero.pooled.any() and a.context.all()
    (area,) = nodes["ConditioningSetArea"](conditioning=[a], width=64, height=128, x=8, y=16, strength=0.5)
    assert (area.area.x, area.area.y, area.area.width, area.area.height, area.strength) == (1, 2, 8, 16, 0.5)


def test_notes_run_nothing(nodes: dict[str, Any]) -> None:
    assert nodes["Note"](text="remember") is None and nodes["MarkdownNote"](text="# x") is None


def test_unsupported_choices_fail_naming_node_input_and_support(nodes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"CLIPLoader: type 'sd3' is not supported.*'stable_diffusion'"):
        nodes["CLIPLoader"](clip_name="x.safetensors", type="sd3")
    with pytest.raises(ValueError, match=r"DualCLIPLoader: type 'flux' is not supported.*'sdxl'"):
        nodes["DualCLIPLoader"](clip_name1="a.safetensors", clip_name2="b.safetensors", type="flux")
    with pytest.raises(FileNotFoundError, match="CLIPLoader: clip_name: .*'x.safetensors' not found"):
        nodes["CLIPLoader"](clip_name="x.safetensors", type="stable_diffusion")


# --------------------------------------------------------------------------- issue 15: template nodes on plain values


def test_mask_nodes(nodes: dict[str, Any]) -> None:
    mask = torch.zeros(1, 6, 6)
    mask[0, 2, 2] = 1.0
    assert torch.equal(nodes["InvertMask"](mask=mask), 1 - mask)
    assert nodes["GrowMask"](mask=mask, expand=1, tapered_corners=True).sum() == 5
    assert nodes["GrowMask"](mask=mask, expand=1, tapered_corners=False).sum() == 9
    solid = nodes["SolidMask"](value=0.25, width=5, height=3)
    assert solid.shape == (1, 3, 5) and solid.eq(0.25).all()
    composite = nodes["MaskComposite"](destination=solid, source=torch.ones(1, 2, 2), x=4, y=1, operation="add")
    assert composite[0, 1, 4] == 1.0 and composite[0, 2, 4] == 1.0 and composite[0, 1, 3] == 0.25
    feathered = nodes["FeatherMask"](mask=torch.ones(1, 2, 4), left=2, top=0, right=0, bottom=0)
    assert feathered[0, 0].tolist() == [0.5, 1.0, 1.0, 1.0]
    crop = nodes["CropMask"](mask=torch.arange(36.0).reshape(1, 6, 6), x=1, y=2, width=3, height=10)
    assert crop.shape == (1, 4, 3) and crop[0, 0, 0] == 13
    image = torch.rand(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(nodes["ImageToMask"](image=image, channel="green"), image[..., 1])
    as_image = nodes["MaskToImage"](mask=mask)
    assert as_image.shape == (1, 6, 6, 3) and torch.equal(as_image[..., 2], mask)
    assert nodes["ThresholdMask"](mask=torch.tensor([[[0.2, 0.5, 0.7]]]), value=0.5).tolist() == [[[0, 0, 1]]]
    with pytest.raises(ValueError, match="ImageToMask: channel 'alpha' needs 4 channels"):
        nodes["ImageToMask"](image=image[..., :3], channel="alpha")


def test_image_nodes(nodes: dict[str, Any]) -> None:
    image = torch.rand(1, 24, 32, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(nodes["ImageInvert"](image=image), 1 - image)
    scaled = nodes["ImageScaleToTotalPixels"](image=image, upscale_method="bilinear", megapixels=0.01)
    assert scaled.shape == (1, 89, 118, 3)  # int(0.01 * 2^20) = 10485 pixels: x sqrt(10485 / 768) = 3.695
    padded, mask = nodes["ImagePadForOutpaint"](image=image, left=8, top=0, right=0, bottom=0, feathering=4)
    assert padded.shape == (1, 24, 40, 3) and mask.shape == (1, 24, 40) and mask[0, 5, 8] == 1.0
    blurred = nodes["ImageBlur"](image=image, blur_radius=2, sigma=1.0)
    assert blurred.shape == image.shape and blurred.std() < image.std()
    sharpened = nodes["ImageSharpen"](image=image, sharpen_radius=1, sigma=1.0, alpha=1.0)
    assert sharpened.shape == image.shape and sharpened.min() >= 0 and sharpened.max() <= 1
    square = torch.zeros(1, 32, 32, 3)
    square[:, 8:24, 8:24] = 1.0
    edges = nodes["Canny"](image=square, low_threshold=0.1, high_threshold=0.2)
    assert edges.shape == (1, 32, 32, 3) and edges[0, 16, :, 0].sum() == 2 and edges[0, 16, 16, 0] == 0
    with pytest.raises(ValueError, match="Canny: low_threshold 0.9 is above high_threshold 0.5"):
        nodes["Canny"](image=square, low_threshold=0.9, high_threshold=0.5)


def test_latent_composite_and_blend(nodes: dict[str, Any]) -> None:
    to = LatentValue(torch.zeros(1, 4, 8, 8), width=64, height=64)
    source = LatentValue(torch.ones(1, 4, 4, 4), width=32, height=32)
    pasted = nodes["LatentComposite"](samples_to=to, samples_from=source, x=16, y=40, feather=0)
    assert pasted.samples[0, 0, 5:, 2:6].eq(1).all() and pasted.samples.sum() == 4 * 3 * 4
    assert (pasted.width, pasted.height) == (64, 64) and to.samples.sum() == 0
    soft = nodes["LatentComposite"](samples_to=to, samples_from=source, x=16, y=16, feather=16)
    assert soft.samples[0, 0, 2, 2] == pytest.approx(0.25) and soft.samples[0, 0, 3, 3] == 1
    blended = nodes["LatentBlend"](samples1=to, samples2=LatentValue(torch.ones(1, 4, 8, 8)), blend_factor=0.25)
    assert blended.samples.eq(0.75).all()
    resized = nodes["LatentBlend"](samples1=to, samples2=source, blend_factor=0.5)
    assert resized.samples.shape == (1, 4, 8, 8) and resized.samples.mean() == pytest.approx(0.5, abs=0.01)


def test_conditioning_mask_concat_and_timestep_range(nodes: dict[str, Any]) -> None:
    from sgm.sampling.guidance_extra import RANGE_KEY
    from sgm.text.conditioning import Condition

    a = Condition(context=torch.ones(1, 77, 8), pooled=torch.ones(1, 4))
    b = Condition(context=torch.zeros(1, 77, 8), pooled=torch.zeros(1, 4))
    mask = torch.zeros(64, 64)
    mask[20:36, 9:17] = 1.0
    (masked,) = nodes["ConditioningSetMask"](conditioning=[a], mask=mask, strength=0.5, set_cond_area="default")
    assert masked.mask.shape == (1, 64, 64) and masked.strength == 0.5 and masked.area is None
    (bounded,) = nodes["ConditioningSetMask"](conditioning=[a], mask=mask, strength=1.0, set_cond_area="mask bounds")
    area = bounded.area  # pixels 9..16 x 20..35 -> latent 1..2 x 2..4
    assert (area.x, area.y, area.width, area.height) == (1, 2, 2, 3)
    (joined,) = nodes["ConditioningConcat"](conditioning_to=[a], conditioning_from=[b, a])
    assert joined.context.shape == (1, 154, 8) and joined.context[0, 77:].eq(0).all() and joined.pooled is a.pooled
    (ranged,) = nodes["ConditioningSetTimestepRange"](conditioning=[a], start=0.2, end=0.8)
    assert ranged.extra[RANGE_KEY] == (0.2, 0.8) and RANGE_KEY not in a.extra


def test_sigma_nodes(nodes: dict[str, Any]) -> None:
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    high, low = nodes["SplitSigmas"](sigmas=sigmas, step=1)
    assert high.tolist() == [10.0, 5.0] and low.tolist() == [5.0, 2.0, 1.0, 0.0]
    high, low = nodes["SplitSigmasDenoise"](sigmas=sigmas, denoise=0.5)
    assert high.tolist() == [10.0, 5.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    assert nodes["FlipSigmas"](sigmas=sigmas).tolist() == pytest.approx([1e-4, 1.0, 2.0, 5.0, 10.0])
    assert nodes["SetFirstSigma"](sigmas=sigmas, sigma=136.0).tolist() == [136.0, 5.0, 2.0, 1.0, 0.0]
    assert nodes["KSamplerSelect"](sampler_name="dpmpp_2m").name == "dpmpp_2m"
    assert nodes["RandomNoise"](noise_seed=7).seed == 7 and nodes["DisableNoise"]().seed is None
