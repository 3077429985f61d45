"""Size checks of the built-in nodes at validation (nodes.limits), with the free memory made
small by monkeypatching, and the node wrapper that makes every built-in node interruptible."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.api import Cancelled, NodeContext
from engine.registry import NodeRegistry
from engine.settings import Settings
from engine.validation import validate_document
from nodes import limits
from nodes.builtin import NODES
from nodes.interrupts import HIDDEN_CONTEXT

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


@pytest.fixture
def registry(tmp_path: Path) -> NodeRegistry:
    (tmp_path / "input").mkdir()
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "m.safetensors").write_bytes(b"")
    registry = NodeRegistry()
    registry.register_pack(NODES(Settings.for_root(tmp_path)), "builtin")
    return registry


@pytest.fixture
def free_4gib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "free_host_bytes", lambda: 4 * GIB)
    monkeypatch.setattr(limits, "gpu_total_bytes", lambda: None)


def txt2img(width: int, height: int, batch: int = 1, *, tiled: bool = False, empty: str = "EmptyLatent") -> dict:
    size_names = ("width", "height", "batch_size")
    return {"version": 1, "nodes": {
        "1": {"type": "LoadCheckpoint", "inputs": {"ckpt_name": "m.safetensors"}},
        "2": {"type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": "a cat"}},
        "4": {"type": empty, "inputs": dict(zip(size_names, (width, height, batch)))},
        "5": {"type": "SampleLatent", "inputs": {"model": ["1", "model"], "positive": ["2", 0], "negative": ["2", 0],
                                                 "latent": ["4", 0], "seed": 1, "steps": 2}},
        "6": {"type": "Decode", "inputs": {"vae": ["1", "vae"], "latent": ["5", 0], "tiled": tiled}},
        "7": {"type": "SaveImage", "inputs": {"images": ["6", 0]}},
    }}


def errors(report: Any) -> list[tuple[str, str, str | None]]:
    return [(p.code, p.node_id, p.input) for p in report.errors]


def test_an_impossible_size_is_refused_with_the_estimate_and_the_limit(registry, free_4gib):
    report = validate_document(txt2img(16384, 16384), registry)
    # every pass that cannot fit says so: sampling, decoding, converting the images for saving
    assert errors(report) == [("resource_limit", "5", None), ("resource_limit", "6", None),
                              ("resource_limit", "7", None)]
    decode = report.errors[1]
    assert decode.message == ("decoding 16384x16384x1 (size set by EmptyLatent 4) needs about 1.0 TiB "
                              "(limit 3.0 GiB: 75% of the 4.0 GiB of host memory free)")
    assert "tiled=true" in decode.hint
    assert decode.format().startswith("error: node 6 (Decode): decoding 16384x16384x1")


def test_normal_sizes_pass_and_the_limit_follows_free_memory(registry, free_4gib, monkeypatch):
    assert validate_document(txt2img(512, 512), registry).ok
    # 1024x1024 decodes in about 4.1 GiB: refused with 4 GiB free (limit 3 GiB), accepted with 16 GiB free
    assert errors(validate_document(txt2img(1024, 1024), registry)) == [("resource_limit", "6", None)]
    monkeypatch.setattr(limits, "free_host_bytes", lambda: 16 * GIB)
    assert validate_document(txt2img(1024, 1024), registry).ok


def test_tiled_decode_and_batch_count(registry, free_4gib):
    assert validate_document(txt2img(1024, 1024, tiled=True), registry).ok
    assert errors(validate_document(txt2img(512, 512, batch=4), registry)) == [("resource_limit", "6", None)]
    assert errors(validate_document(txt2img(512, 512, batch=4096, tiled=True), registry))[0] == (
        "resource_limit", "5", None)  # the sampler: 1 TiB


def test_on_a_gpu_the_bound_is_its_total_memory_at_half_precision(registry, free_4gib, monkeypatch):
    monkeypatch.setattr(limits, "gpu_total_bytes", lambda: 8 * GIB)
    assert validate_document(txt2img(1024, 1024), registry).ok  # ~2 GiB at half precision, image in host memory
    report = validate_document(txt2img(4096, 4096), registry)
    assert errors(report) == [("resource_limit", "5", None), ("resource_limit", "6", None)]
    assert "(limit 7.2 GiB: 90% of the 8.0 GiB of GPU memory in all)" in report.errors[1].message


def test_repeat_batch_multiplies_the_estimate(registry, free_4gib):
    document = txt2img(256, 256)
    document["nodes"]["8"] = {"type": "RepeatLatentBatch", "inputs": {"samples": ["4", 0], "amount": 64}}
    document["nodes"]["5"]["inputs"]["latent"] = ["8", 0]
    report = validate_document(document, registry)
    assert ("resource_limit", "6", None) in errors(report)
    assert "256x256x64 (size set by RepeatLatentBatch 8)" in report.errors[-1].message


def test_our_empty_latent_refuses_a_size_that_is_no_multiple_of_8_and_comfyuis_rounds_down(registry, free_4gib):
    report = validate_document(txt2img(500, 512), registry)
    (problem,) = report.errors
    assert (problem.code, problem.node_id, problem.input, problem.actual) == ("bad_value", "4", "width", "500")
    assert problem.message.startswith("width 500 is not a multiple of 8") and problem.hint == "use 496 or 504"
    assert validate_document(txt2img(500, 512, empty="EmptyLatentImage"), registry).ok  # ComfyUI's node rounds


def test_null_widget_value_of_a_real_node_is_refused(registry, free_4gib):
    document = txt2img(512, 512)
    document["nodes"]["5"]["inputs"]["cfg"] = None
    (problem,) = validate_document(document, registry).errors
    assert (problem.code, problem.node_id, problem.input) == ("null_value", "5", "cfg")


def test_image_scale_is_estimated_from_its_target_size(registry, free_4gib):
    document = txt2img(512, 512)
    document["nodes"]["8"] = {"type": "ImageScale", "inputs": {"image": ["6", 0], "upscale_method": "bilinear",
                                                               "width": 16384, "height": 16384, "crop": "disabled"}}
    document["nodes"]["7"]["inputs"]["images"] = ["8", 0]
    scaled, saved = validate_document(document, registry).errors
    assert scaled.node_id == "8" and scaled.message.startswith("scaling to 16384x16384x1 needs about 9.0 GiB")
    assert saved.node_id == "7" and saved.message.startswith(
        "saving 16384x16384x1 (size set by ImageScale 8) needs about 10.0 GiB")
    document["nodes"]["8"]["inputs"].update(width=0, height=1024)  # 0 keeps the aspect ratio of the 512x512 input
    assert validate_document(document, registry).ok


def test_load_image_reads_the_header_and_refuses_too_many_pixels(registry, free_4gib, tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (300, 200)).save(tmp_path / "input" / "big.png")
    document = {"version": 1, "nodes": {
        "1": {"type": "LoadImage", "inputs": {"image": "big.png"}},
        "2": {"type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }}
    assert validate_document(document, registry).ok
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 100 * 100)
    (problem,) = validate_document(document, registry).errors
    assert (problem.code, problem.node_id, problem.input, problem.actual) == ("resource_limit", "1", "image", "300x200")
    assert "'big.png' is 300x200" in problem.message


def test_validating_with_the_checks_imports_no_torch(tmp_path):
    script = (
        "import sys, json\n"
        "from engine.registry import NodeRegistry\nfrom engine.settings import Settings\n"
        "from engine.validation import validate_document\nfrom nodes.builtin import NODES\n"
        f"r = NodeRegistry(); r.register_pack(NODES(Settings.for_root({str(tmp_path)!r})), 'b')\n"
        f"doc = json.loads({json.dumps(json.dumps(txt2img(16384, 16384)))})\n"
        "report = validate_document(doc, r)\n"
        "assert [p.code for p in report.errors if p.code == 'resource_limit'], report.format()\n"
        "assert 'torch' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_builtin_node_runs_with_the_cancel_check_installed(registry):
    """A node without a Context gets a hidden one; inside it, sgm's interrupt points raise Cancelled."""
    from sgm.nets.interrupt import check_interrupt

    spec = registry.get("EmptyLatent")
    assert spec.context_param == HIDDEN_CONTEXT
    cancel = threading.Event()
    ctx = NodeContext("4", cancel, lambda node_id, progress: None)
    latent = spec.function(width=64, height=64, batch_size=1, **{HIDDEN_CONTEXT: ctx})
    assert tuple(latent.samples.shape) == (1, 4, 8, 8)
    cancel.set()
    original = registry.get("EmptyLatent").function.__wrapped__

    def probe(**kwargs: Any) -> None:
        check_interrupt()

    from dataclasses import replace

    from nodes.interrupts import interruptible_spec

    wrapped = interruptible_spec(replace(spec, function=probe, context_param=None))
    with pytest.raises(Cancelled):
        wrapped.function(**{HIDDEN_CONTEXT: ctx})
    assert callable(original)


def upscale_document() -> dict:
    return {"version": 1, "nodes": {
        "1": {"type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"type": "UpscaleModelLoader", "inputs": {"model_name": "tiny-2x.safetensors"}},
        "3": {"type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"type": "SaveImage", "inputs": {"images": ["3", 0]}},
    }}


def test_upscale_with_model_is_checked_with_the_scale_of_the_loaded_model(registry, tmp_path, monkeypatch):
    """Before the model was loaded its scale is unknown: validation passes and the node refuses
    before it runs; once loaded, validation knows the scale (until the file changes)."""
    import torch
    from PIL import Image

    from tests.workflows.test_upscale_model_nodes import write_compact

    Image.new("RGB", (300, 200)).save(tmp_path / "input" / "photo.png")
    model_file = write_compact(tmp_path / "models" / "upscale_models" / "tiny-2x.safetensors", scale=2)
    monkeypatch.setattr(limits, "gpu_total_bytes", lambda: None)
    monkeypatch.setattr(limits, "free_host_bytes", lambda: 64 << 20)
    assert validate_document(upscale_document(), registry).ok  # the scale is not known yet

    model = registry.get("UpscaleModelLoader").function(model_name="tiny-2x.safetensors")
    assert model.scale == 2
    # 300x200 -> 600x400: 12 B per input pixel, 2 x 12 + 4 B per output pixel, and the network on one
    # 128x128 tile (1024 B per input pixel + 768 x 2^2 per output pixel): 74,548,864 B in all
    need = 12 * 300 * 200 + (24 + 4) * 600 * 400 + 128 * 128 * (1024 + 768 * 4)
    assert need == limits.upscale_host_bytes(limits.Size(300, 200), 2) + limits.upscale_tile_bytes(
        limits.Size(300, 200), 2) == 74_548_864
    (problem,) = validate_document(upscale_document(), registry).errors
    assert (problem.code, problem.node_id) == ("resource_limit", "3")
    assert problem.message == ("upscaling by 2 (tiny-2x.safetensors) to 600x400x1 (size set by LoadImage 1) needs "
                               "about 71.1 MiB (limit 48.0 MiB: 75% of the 64.0 MiB of host memory free)")
    assert "smaller image" in problem.hint
    monkeypatch.setattr(limits, "free_host_bytes", lambda: 100 << 20)  # limit 75 MiB: fits
    assert validate_document(upscale_document(), registry).ok
    # The output size flows on: saving 600x400 is estimated (40 B per pixel) and refused alone.
    monkeypatch.setattr(limits, "SAVE_BYTES_PER_PIXEL", 400)
    (saved,) = validate_document(upscale_document(), registry).errors
    assert saved.node_id == "4" and saved.message.startswith(
        "saving 600x400x1 (size set by ImageUpscaleWithModel 3) needs about 91.6 MiB")
    monkeypatch.setattr(limits, "SAVE_BYTES_PER_PIXEL", 40)

    # At run time the node checks itself, with the model in hand (validation may not have known it).
    upscale = registry.get("ImageUpscaleWithModel")
    context = NodeContext("3", threading.Event(), lambda node_id, progress: None)
    image = torch.rand(1, 200, 300, 3)
    monkeypatch.setattr(limits, "free_host_bytes", lambda: 64 << 20)
    with pytest.raises(limits.ResourceLimitError, match=r"^upscaling by 2 \(tiny-2x.safetensors\) to 600x400x1 "
                                                        r"needs about 71.1 MiB \(limit 48.0 MiB"):
        upscale.function(upscale_model=model, image=image, ctx=context)
    monkeypatch.setattr(limits, "free_host_bytes", lambda: 100 << 20)
    assert tuple(upscale.function(upscale_model=model, image=image, ctx=context).shape) == (1, 400, 600, 3)

    # Another version of the file (a 4x model under the same name): its scale is unknown again.
    write_compact(model_file, scale=4)
    monkeypatch.setattr(limits, "free_host_bytes", lambda: 64 << 20)
    assert validate_document(upscale_document(), registry).ok
