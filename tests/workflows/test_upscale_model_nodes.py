"""ComfyUI's UpscaleModelLoader and ImageUpscaleWithModel (nodes.comfy.upscale): ComfyUI 0.3.64's
interface, and a LoadImage -> UpscaleModelLoader -> ImageUpscaleWithModel -> SaveImage prompt run by the
engine on a tiny Real-ESRGAN compact file in a temporary models folder."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.api import Cancelled, NodeContext
from engine.registry import NodeRegistry
from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from tests.reference import COMFYUI_OBJECT_INFO, comfyui_object_info

NODES = ("UpscaleModelLoader", "ImageUpscaleWithModel")


def write_compact(path: Path, scale: int = 2) -> Path:
    """A Real-ESRGAN compact model (spandrel's SRVGGNetCompact, 8 features) with random weights."""
    from sgm.io.upscalers import import_spandrel

    import_spandrel()  # torchvision may be a stand-in (see there)
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    write_compact(tmp_path / "models" / "upscale_models" / "tiny-2x.safetensors")
    write_compact(tmp_path / "models" / "upscale_models" / "sub" / "tiny-4x.safetensors", scale=4)
    (tmp_path / "input").mkdir()
    pixels = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "input" / "photo.png")
    return tmp_path


@pytest.fixture()
def runtime(root: Path) -> Runtime:
    return Runtime(Settings.for_root(root, output_dir=root / "output", extra={"dtype": "fp32"}), device="cpu")


@pytest.fixture()
def registry(runtime: Runtime) -> NodeRegistry:
    registry = NodeRegistry()
    registry.register_pack(build_nodes(runtime), "nodes.builtin")
    return registry


@pytest.mark.skipif(comfyui_object_info() is None, reason=f"the interface spec is not at {COMFYUI_OBJECT_INFO}")
@pytest.mark.parametrize("name", NODES)
def test_interface_matches_comfyui(registry: NodeRegistry, name: str) -> None:
    from tests.nodes.test_comfy_interface import check_interface

    ours = registry.object_info()[name]
    check_interface(name, comfyui_object_info()[name], ours)
    if name == "UpscaleModelLoader":  # ComfyUI lists its own folder; we list ours, subfolders included
        assert ours["input"]["required"]["model_name"][0] == ["sub/tiny-4x.safetensors", "tiny-2x.safetensors"]


def test_nodes_load_once_and_upscale_by_the_file_scale(runtime: Runtime) -> None:
    from nodes.memory import result_size
    from sgm.io.upscalers import upscale_image

    nodes = {spec.id: spec.function for spec in build_nodes(runtime)}
    model = nodes["UpscaleModelLoader"](model_name="sub/tiny-4x.safetensors")
    again = nodes["UpscaleModelLoader"](model_name="sub/tiny-4x.safetensors")
    assert again is model and model.scale == 4
    assert result_size(model) == sum(p.numel() * 4 for p in model.module.parameters())  # the cache counts it
    image = torch.rand(2, 20, 30, 3, generator=torch.Generator().manual_seed(1))
    progress: list[tuple[int, int]] = []
    ctx = NodeContext("n", threading.Event(), lambda node_id, p: progress.append((p.value, p.max)))
    out = nodes["ImageUpscaleWithModel"](upscale_model=model, image=image, ctx=ctx)
    assert out.shape == (2, 80, 120, 3)
    assert torch.equal(out, upscale_image(model, image))
    assert progress == [(1, 2), (2, 2)]  # one tile per image
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        nodes["ImageUpscaleWithModel"](upscale_model=model, image=image,
                                       ctx=NodeContext("n", cancel, lambda node_id, p: None))
    with pytest.raises(FileNotFoundError, match="UpscaleModelLoader: model_name"):
        nodes["UpscaleModelLoader"](model_name="missing.pth")


def test_engine_runs_load_upscale_save(runtime: Runtime, registry: NodeRegistry, root: Path) -> None:
    from engine.cache import ResultCache
    from engine.scheduler import Executor
    from engine.validation import validate_document
    from nodes.memory import result_size

    settings = runtime.settings
    executor = Executor(registry, ResultCache(64, 1 << 30, size_of=result_size),
                        services={"settings": settings, "output_dir": settings.output_dir})
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny-2x.safetensors"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "upscaled"}},
    }
    report = validate_document(prompt, registry)
    assert report.ok, report.format()
    result = executor.run(report.workflow, services={"prompt": prompt})
    assert result.status == "success", result.failure and result.failure.message
    (saved,) = result.outputs["4"]["images"]
    with Image.open(Path(settings.output_dir) / saved["subfolder"] / saved["filename"]) as image:
        assert image.size == (112, 80)

    bad = dict(prompt, **{"2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "nope.pth"}}})
    report = validate_document(bad, registry)
    assert not report.ok and "nope.pth" in report.format() and "tiny-2x.safetensors" in report.format()
