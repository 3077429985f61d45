"""Built-in nodes called directly: shapes, conventions, and that inputs are never mutated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.memory import result_size
from nodes.runtime import Runtime
from nodes.values import LatentValue, VaeValue
from sgm.text.conditioning import Area, Condition

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def runtime(tmp_path: Path) -> Runtime:
    return Runtime(Settings.for_root(tmp_path), device="cpu")


@pytest.fixture()
def nodes(runtime: Runtime) -> dict[str, Any]:
    return {spec.id: spec.function for spec in build_nodes(runtime)}


def condition(seed: int, tokens: int = 77, pooled: bool = True) -> Condition:
    generator = torch.Generator().manual_seed(seed)
    return Condition(context=torch.randn(1, tokens, 8, generator=generator),
                     pooled=torch.randn(1, 4, generator=generator) if pooled else None)


def test_sampler_and_scheduler_choices_are_the_library_tables() -> None:
    from nodes.sampling import sampler_names, scheduler_names
    from sgm.sampling.samplers import SAMPLERS
    from sgm.sampling.schedules import SCHEDULERS

    assert sampler_names() == list(SAMPLERS)  # the torch-free names are the tables' keys, in order
    assert scheduler_names() == list(SCHEDULERS)
    assert sampler_names()[:3] == ["euler", "euler_cfg_pp", "euler_ancestral"]  # ComfyUI's order


def test_building_listing_and_validating_do_not_import_torch() -> None:
    # `main.py nodes` and `main.py validate` answer in a fraction of a second: only running a
    # node imports torch. (LoadCheckpoint lists files; the sampler names come from sgm.sampling.names.)
    code = ("import sys, json, main; r = main.build_registry(custom_nodes=None, entry_points=False); "
            "assert 'SampleLatent' in r and 'KSampler' in r and 'LoadCheckpoint' in r, r.ids(); "
            "info = r.object_info(); assert 'dpmpp_2m' in info['KSampler']['input']['required']['sampler_name'][0]; "
            "from engine.validation import validate_document; "
            "report = validate_document(json.load(open('workflows/txt2img.json')), r); assert report.ok, report.format(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_empty_latent_and_upscale_and_batch_pick(nodes: dict[str, Any]) -> None:
    latent = nodes["EmptyLatent"](width=64, height=48, batch_size=3)
    assert latent.samples.shape == (3, 4, 6, 8) and latent.empty and (latent.width, latent.height) == (64, 48)
    with pytest.raises(ValueError, match="multiples of 8"):
        nodes["EmptyLatent"](width=63, height=48, batch_size=1)
    filled = LatentValue(torch.randn(3, 4, 6, 8), width=64, height=48)
    original = filled.samples.clone()
    bigger = nodes["ScaleLatent"](latent=filled, width=128, height=96, method="bilinear")
    assert bigger.samples.shape == (3, 4, 12, 16) and (bigger.width, bigger.height) == (128, 96)
    picked = nodes["SliceLatentBatch"](latent=filled, batch_index=1, length=5)
    assert picked.batch_index == (1, 2) and torch.equal(picked.samples, filled.samples[1:])
    again = nodes["SliceLatentBatch"](latent=picked, batch_index=1, length=1)
    assert again.batch_index == (2,)  # offsets into the original batch: the seed stays item 2's
    with pytest.raises(ValueError, match="outside the batch"):
        nodes["SliceLatentBatch"](latent=filled, batch_index=3, length=1)
    assert torch.equal(filled.samples, original)


def test_set_latent_mask_returns_a_new_latent(nodes: dict[str, Any]) -> None:
    latent = LatentValue(torch.zeros(1, 4, 8, 8))
    masked = nodes["SetLatentMask"](latent=latent, mask=torch.ones(64, 64))
    assert latent.noise_mask is None and masked.noise_mask.shape == (1, 64, 64)
    assert masked.samples is latent.samples  # shared, never copied or changed


def test_conditioning_nodes(nodes: dict[str, Any]) -> None:
    a, b = condition(0), condition(1, tokens=154)
    a_context = a.context.clone()
    assert nodes["CombineConditioning"](conditioning_1=[a], conditioning_2=[b]) == [a, b]
    (mixed,) = nodes["ConditioningAverage"](conditioning_to=[a], conditioning_from=[b], conditioning_to_strength=0.25)
    assert mixed.context.shape == a.context.shape  # 'from' cut to the 'to' length
    assert torch.allclose(mixed.context, 0.25 * a.context + 0.75 * b.context[:, :77])
    assert torch.allclose(mixed.pooled, 0.25 * a.pooled + 0.75 * b.pooled)
    vector = Condition(context=a.context, pooled=a.pooled, y=torch.cat([a.pooled, torch.ones(1, 6)], dim=1))
    (zero,) = nodes["ZeroConditioning"](conditioning=[vector])
    assert zero.context.abs().max() == 0 and zero.pooled.abs().max() == 0
    assert torch.equal(zero.y[:, 4:], torch.ones(1, 6)) and zero.y[:, :4].abs().max() == 0  # sizes kept
    (area,) = nodes["SetConditioningArea"](conditioning=[a], width=32, height=16, x=8, y=24, strength=0.5)
    assert area.area == Area(x=1, y=3, width=4, height=2) and area.strength == 0.5
    assert a.area is None and torch.equal(a.context, a_context)


def test_load_image_reads_alpha_as_the_repaint_mask(nodes: dict[str, Any], runtime: Runtime) -> None:
    from tests.workflows.model_files import write_example_image

    write_example_image(Path(runtime.settings.input_dir) / "sub" / "pic.png", size=32)
    image, mask = nodes["LoadInputImage"](image="sub/pic.png")
    assert image.shape == (1, 32, 32, 3) and mask.shape == (1, 32, 32)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert mask[0, 16, 16] == 1.0 and mask[0, 0, 0] == 0.0  # transparent centre = repaint
    assert abs(float(image[0, 0, 31, 0]) - 1.0) < 1e-6  # red ramps left to right
    with pytest.raises(FileNotFoundError, match="not in"):
        nodes["LoadInputImage"](image="../outside.png")


def test_image_scale_sizes_and_centre_crop(nodes: dict[str, Any]) -> None:
    image = torch.rand(2, 20, 40, 3)
    for method in ("nearest-exact", "bilinear", "bicubic", "area", "lanczos"):
        out = nodes["ScaleImage"](image=image, width=16, height=12, method=method, crop="disabled")
        assert out.shape == (2, 12, 16, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    stripes = torch.zeros(1, 10, 30, 3)
    stripes[:, :, 10:20] = 1.0  # a bright middle third
    cropped = nodes["ScaleImage"](image=stripes, width=10, height=10, method="nearest-exact", crop="center")
    assert float(cropped.min()) == 1.0  # only the middle third survives a centred square crop


def test_encode_decode_round_trip_shapes_and_mask_fitting(nodes: dict[str, Any]) -> None:
    from tests.sgm.model_factories import tiny_vae

    vae = VaeValue(tiny_vae(), 0.5, "tiny")
    image = torch.rand(1, 36, 44, 3)  # not a multiple of 8: centre-cropped to 32x40
    mask = torch.zeros(1, 36, 44)
    mask[:, 10:20, 10:20] = 1.0
    latent = nodes["EncodeLatent"](vae=vae, image=image, mask=mask, tiled=False)
    assert latent.samples.shape == (1, 4, 4, 5) and (latent.width, latent.height) == (40, 32)
    assert latent.noise_mask.shape == (1, 32, 40) and latent.masked_latent.shape == latent.samples.shape
    assert not torch.equal(latent.masked_latent, latent.samples)  # the repaint region was blanked
    decoded = nodes["Decode"](vae=vae, latent=latent, tiled=False)
    assert decoded.shape == (1, 32, 40, 3) and float(decoded.min()) >= 0 and float(decoded.max()) <= 1
    direct = vae.vae.decode(latent.samples / 0.5)
    assert torch.allclose(decoded, ((direct.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1), atol=1e-5)
    with pytest.raises(ValueError, match="no VAE"):
        nodes["Decode"](vae=None, latent=latent, tiled=False)


def test_result_size_counts_tensors_once() -> None:
    samples = torch.zeros(2, 4, 8, 8)
    latent = LatentValue(samples, noise_mask=torch.zeros(1, 64, 64))
    assert result_size(latent) == samples.numel() * 4 + 64 * 64 * 4
    assert result_size((latent, latent, "text", 3)) == result_size(latent)
    assert result_size(torch.nn.Linear(10, 10)) == (100 + 10) * 4
    assert result_size({"a": [samples]}) == samples.numel() * 4


def test_unet_family_from_shapes() -> None:
    from nodes.loaders import unet_family
    from tests.sgm.model_factories import tiny_unet

    assert unet_family(tiny_unet("sd1")) == "sd1"
    assert unet_family(tiny_unet("sd1", in_channels=9)) == "sd1-inpaint"
    assert unet_family(tiny_unet("sdxl")) == "sdxl"
    assert unet_family(tiny_unet("sdxl", pooled_dim=2560 - 6 * 256)) == "sdxl-refiner"  # adm 2560
    # SD 2.1 unCLIP: a vector input (image embeds + noise level) beside SD 2's 1024-wide text
    assert unet_family(tiny_unet("sd2", context_dim=1024, num_classes="sequential", adm_in_channels=64)) == "sd2"


def test_every_built_in_node_has_a_tooltip_and_a_category(runtime: Runtime) -> None:
    specs = build_nodes(runtime)
    expected = {"LoadCheckpoint", "LoadVAE", "LoadUNet", "LoadTextEncoder", "LoadLoRA", "SetClipLayer", "TextEncode",
                "TextEncodeSDXL", "CombineConditioning", "ConditioningAverage", "ZeroConditioning",
                "SetConditioningArea", "EmptyLatent", "EncodeLatent", "SetLatentMask", "ScaleLatent",
                "SliceLatentBatch", "UNetDenoise", "Scheduler", "SamplerSelect", "Sampler", "SampleLatent", "Decode",
                "LoadInputImage", "ScaleImage", "SaveImage", "PreviewImage"}
    assert expected <= {spec.id for spec in specs}
    for spec in specs:
        assert spec.description and spec.category and spec.display_name, spec.id
        assert spec.description.split("\n")[0].strip(), spec.id


def test_load_dtype_follows_settings_or_the_device_policy(tmp_path: Path) -> None:
    from sgm.devices import default_dtype

    def dtype_for(choice: str | None) -> Any:
        extra = {} if choice is None else {"dtype": choice}
        return Runtime(Settings.for_root(tmp_path, extra=extra), device="cpu").load_dtype()

    assert dtype_for(None) == default_dtype("cpu")
    assert (dtype_for("fp32"), dtype_for("bf16"), dtype_for("fp16")) == (torch.float32, torch.bfloat16, torch.float16)
    with pytest.raises(ValueError, match="not one of auto, fp32"):
        dtype_for("float8")


def test_load_checkpoint_in_bf16_prepares_the_model_and_shares_it(tmp_path: Path) -> None:
    from tests.workflows.model_files import write_tiny_shapes_standin

    write_tiny_shapes_standin(tmp_path / "models" / "checkpoints" / "m.safetensors")
    runtime = Runtime(Settings.for_root(tmp_path, extra={"dtype": "bf16"}), device="cpu")
    load = {spec.id: spec.function for spec in build_nodes(runtime)}["LoadCheckpoint"]
    model, clip, vae = load(ckpt_name="m.safetensors")
    assert next(model.unet.parameters()).dtype == torch.bfloat16 and model.family == "tiny-shapes"
    assert next(vae.vae.parameters()).dtype == torch.bfloat16
    again, _, _ = load(ckpt_name="m.safetensors")
    assert again.unet is model.unet and runtime.models.loads == 1


def test_load_checkpoint_samples_on_the_schedule_the_file_was_trained_on(tmp_path: Path) -> None:
    from tests.workflows.model_files import write_tiny_shapes_standin

    folder = tmp_path / "models" / "checkpoints"
    write_tiny_shapes_standin(folder / "sd.safetensors")
    write_tiny_shapes_standin(folder / "ztsnr.safetensors", config={"prediction": "v", "zero_terminal_snr": True})
    load = {spec.id: spec.function for spec in build_nodes(Runtime(Settings.for_root(tmp_path), device="cpu"))}
    sd, _, _ = load["LoadCheckpoint"](ckpt_name="sd.safetensors")
    ztsnr, _, _ = load["LoadCheckpoint"](ckpt_name="ztsnr.safetensors")
    assert sd.model_sampling.prediction == "eps" and abs(sd.model_sampling.sigma_max - 14.6146) < 1e-3
    assert ztsnr.model_sampling.prediction == "v" and ztsnr.model_sampling.sigma_max > 1000


def test_names_are_confined_to_their_folder_but_symlinked_models_load(tmp_path: Path) -> None:
    from nodes.runtime import confined

    folder = tmp_path / "checkpoints"
    assert confined(folder, "sub/a.safetensors") == folder / "sub" / "a.safetensors"
    assert confined(folder, "..notes.safetensors") == folder / "..notes.safetensors"
    for escape in ("../a.safetensors", "sub/../../a.safetensors", "/etc/passwd", "", "."):
        assert confined(folder, escape) is None, escape
    outside = tmp_path / "elsewhere" / "big.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    folder.mkdir()
    (folder / "big.safetensors").symlink_to(outside)
    runtime = Runtime(Settings.for_root(tmp_path, models_dir=tmp_path), device="cpu")
    assert runtime.resolve_model(("checkpoints",), "big.safetensors", "LoadCheckpoint", "ckpt_name").is_file()
