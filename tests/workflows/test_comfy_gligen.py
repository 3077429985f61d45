"""ComfyUI's GLIGEN template graph (GLIGENLoader -> GLIGENTextBoxApply x2 -> KSampler) as an API
prompt through the engine, on the embedded model with a GLIGEN file made for its UNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.cache import ResultCache
from engine.scheduler import Executor
from engine.validation import validate_document
from nodes.memory import result_size
from sgm.io.checkpoints import load_checkpoint
from tests.workflows.gligen_files import write_tiny_gligen
from tests.workflows.model_files import CHECKPOINTS

EMBEDDED = CHECKPOINTS["tiny-shapes"]


def prompt(boxes: bool) -> dict[str, Any]:
    graph: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle on a blue background",
                                                         "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 3, "steps": 4, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    if boxes:
        graph["8"] = {"class_type": "GLIGENLoader", "inputs": {"gligen_name": "tiny-shapes-gligen.safetensors"}}
        graph["9"] = {"class_type": "GLIGENTextBoxApply", "inputs": {
            "conditioning_to": ["2", 0], "clip": ["1", 1], "gligen_textbox_model": ["8", 0], "text": "red circle",
            "width": 32, "height": 32, "x": 0, "y": 0}}
        graph["10"] = {"class_type": "GLIGENTextBoxApply", "inputs": {
            "conditioning_to": ["9", 0], "clip": ["1", 1], "gligen_textbox_model": ["8", 0], "text": "blue square",
            "width": 24, "height": 16, "x": 32, "y": 40}}
        graph["5"]["inputs"]["positive"] = ["10", 0]
    return graph


def test_gligen_template_graph_runs_and_grounds(registry: Any, settings: Any, installation: Path) -> None:
    checkpoint = load_checkpoint(installation / "models" / "checkpoints" / EMBEDDED)
    write_tiny_gligen(installation / "models" / "gligen" / "tiny-shapes-gligen.safetensors", checkpoint.unet,
                      int(checkpoint.unet.context_dim))
    executor = Executor(registry, ResultCache(64, 1 << 30, size_of=result_size),
                        services={"settings": settings, "output_dir": settings.output_dir})
    pictures = {}
    for boxes in (False, True):
        report = validate_document(prompt(boxes), registry)
        assert report.ok, report.format()
        result = executor.run(report.workflow)
        assert result.status == "success", result.failure and result.failure.message
        (image,) = result.outputs["7"]["images"]
        with Image.open(image["path"]) as picture:
            pictures[boxes] = np.asarray(picture, dtype=np.float32)
    assert np.abs(pictures[True] - pictures[False]).mean() > 1.0  # the boxes reach the UNet's fusers


def test_text_boxes_are_kept_in_latent_pixels_per_condition(installation: Path, tmp_path: Path) -> None:
    from engine.settings import Settings
    from nodes.builtin import build_nodes
    from nodes.runtime import Runtime

    checkpoint = load_checkpoint(installation / "models" / "checkpoints" / EMBEDDED)
    width = int(checkpoint.unet.context_dim)
    write_tiny_gligen(installation / "models" / "gligen" / "tiny-shapes-gligen.safetensors", checkpoint.unet, width)
    runtime = Runtime(Settings.for_root(installation, output_dir=tmp_path, extra={"dtype": "fp32"}), device="cpu")
    nodes = {spec.id: spec.function for spec in build_nodes(runtime)}
    _, clip, _ = nodes["CheckpointLoaderSimple"](ckpt_name=EMBEDDED)
    positive = nodes["CLIPTextEncode"](text="a red circle", clip=clip)
    gligen = nodes["GLIGENLoader"](gligen_name="tiny-shapes-gligen.safetensors")
    one = nodes["GLIGENTextBoxApply"](conditioning_to=positive, clip=clip, gligen_textbox_model=gligen,
                                      text="red circle", width=32, height=32, x=0, y=0)
    two = nodes["GLIGENTextBoxApply"](conditioning_to=one, clip=clip, gligen_textbox_model=gligen,
                                      text="blue square", width=24, height=16, x=32, y=40)
    model_, boxes = two[0].gligen
    assert model_ is gligen and positive[0].gligen is None and len(one[0].gligen[1]) == 1
    assert [(b.x, b.y, b.width, b.height) for b in boxes] == [(0, 0, 4, 4), (4, 5, 3, 2)]  # latent pixels
    assert boxes[0].phrase.shape == (1, width)
    _, pooled = clip.conditioner.encode_text(["red circle"], force_pooled=True)
    assert torch.allclose(boxes[0].phrase, pooled, atol=1e-5)  # the phrase's pooled embedding
    other = load_gligen_copy(gligen)
    try:
        nodes["GLIGENTextBoxApply"](conditioning_to=two, clip=clip, gligen_textbox_model=other, text="x",
                                    width=8, height=8, x=0, y=0)
    except ValueError as error:
        assert "another GLIGEN model" in str(error)
    else:
        raise AssertionError("boxes of two GLIGEN models on one prompt must be refused")


def load_gligen_copy(gligen: Any) -> Any:
    import copy

    return copy.deepcopy(gligen)
