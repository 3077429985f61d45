"""ComfyUI's ControlNet nodes on tiny stand-in files: loaders by content, strength / window /
stacking through KSampler, LoRA and inpainting models, and a whole API prompt through the engine."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.api import NodeContext
from engine.registry import NodeRegistry
from engine.scheduler import Executor
from engine.validation import validate_document
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from sgm.nets.controlnet import ControlNet
from sgm.nets.t2i_adapter import T2IAdapter
from tests.sgm.model_factories import randomize_
from tests.workflows.model_files import CHECKPOINTS, LORAS

SD1, SDXL, INPAINT = CHECKPOINTS["sd1"], CHECKPOINTS["sdxl"], CHECKPOINTS["sd1-inpaint"]
CONTROLNETS = {"sd1": "tiny-sd1-canny.safetensors", "sdxl": "tiny-sdxl-canny.safetensors",
               "t2i": "tiny-sd1-t2i-sketch.safetensors", "diff": "tiny-sd1-diff.safetensors"}


def write_controlnet(path: Path, checkpoint: Path, seed: int, *, diff: bool = False) -> Path:
    """A ControlNet for the checkpoint's UNet: encoder copied, the rest random (not zero, so it acts)."""
    from sgm.io.checkpoints import load_checkpoint
    from sgm.io.controlnet_files import controlnet_from_unet

    unet = load_checkpoint(checkpoint).unet
    hints = json.loads(load_checkpoint_metadata(checkpoint)["latentflow.config"])["unet"]
    torch.manual_seed(seed)  # the hint encoder's default initialisation
    controlnet = randomize_(controlnet_from_unet(unet, hints), seed, std=0.05)
    tensors = {f"control_model.{k}": v.contiguous() for k, v in controlnet.state_dict().items()}
    if diff:  # stored as differences from the UNet, with ComfyUI's marker
        base = unet.state_dict()
        tensors = {k: v - base[k[len("control_model."):]] if k[len("control_model."):] in base else v
                   for k, v in tensors.items()}
        tensors["difference"] = torch.tensor([])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"latentflow.config": json.dumps({"unet": hints})})
    return path


def load_checkpoint_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata() or {}


@pytest.fixture(scope="module")
def controlnets(installation: Path) -> Path:
    folder = installation / "models" / "controlnet"
    write_controlnet(folder / CONTROLNETS["sd1"], installation / "models" / "checkpoints" / SD1, seed=1)
    write_controlnet(folder / CONTROLNETS["sdxl"], installation / "models" / "checkpoints" / SDXL, seed=2)
    write_controlnet(folder / CONTROLNETS["diff"], installation / "models" / "checkpoints" / SD1, seed=1, diff=True)
    torch.manual_seed(3)
    adapter = randomize_(T2IAdapter(hint_channels=1, channels=(32, 64), num_res_blocks=1, unet_res_blocks=1), 3)
    t2i = installation / "models" / "t2i_adapter" / CONTROLNETS["t2i"]
    t2i.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(t2i),
              metadata={"latentflow.config": json.dumps({"unet": {"unet_res_blocks": 1}})})
    return folder


@pytest.fixture(scope="module")
def nodes(installation: Path, controlnets: Path) -> dict[str, Any]:
    from engine.settings import Settings

    runtime = Runtime(Settings.for_root(installation, extra={"dtype": "fp32"}), device="cpu")
    return {spec.id: spec.function for spec in build_nodes(runtime)}


def ksample(nodes: dict[str, Any], model: Any, positive: Any, negative: Any, latent: Any, **extra: Any) -> torch.Tensor:
    options = dict(seed=7, steps=3, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    options.update(extra)
    out = nodes["KSampler"](model=model, positive=positive, negative=negative, latent_image=latent,
                            ctx=NodeContext("test", threading.Event(), lambda node_id, progress: None), **options)
    return out.samples


def prompts(nodes: dict[str, Any], checkpoint: str) -> tuple[Any, Any, Any, Any]:
    model, clip, vae = nodes["CheckpointLoaderSimple"](ckpt_name=checkpoint)
    positive = nodes["CLIPTextEncode"](text="a red circle", clip=clip)
    negative = nodes["CLIPTextEncode"](text="", clip=clip)
    return model, clip, vae, (positive, negative)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_controlnet_strength_window_and_stacking_through_ksampler(nodes: dict[str, Any], family: str) -> None:
    model, _, _, (positive, negative) = prompts(nodes, SD1 if family == "sd1" else SDXL)
    controlnet = nodes["ControlNetLoader"](control_net_name=CONTROLNETS[family])
    assert isinstance(controlnet, ControlNet)
    image, _ = nodes["LoadImage"](image="example.png")  # (1, 64, 64, 3)
    latent = nodes["EmptyLatentImage"](width=64, height=64, batch_size=2)
    plain = ksample(nodes, model, positive, negative, latent)

    def apply(pos: Any, neg: Any, strength: float, start: float = 0.0, end: float = 1.0) -> tuple[Any, Any]:
        return nodes["ControlNetApplyAdvanced"](positive=pos, negative=neg, control_net=controlnet, image=image,
                                               strength=strength, start_percent=start, end_percent=end)

    assert torch.equal(ksample(nodes, model, *apply(positive, negative, 0.0), latent), plain)
    controlled = ksample(nodes, model, *apply(positive, negative, 1.0), latent)
    assert (controlled - plain).abs().max() > 1e-3
    # an empty window (start = end inside the sampling) acts at no step of 3
    assert torch.equal(ksample(nodes, model, *apply(positive, negative, 1.0, 0.3, 0.3), latent), plain)
    # strength 0.5 twice, stacked, is strength 1 (the residuals add up)
    half = apply(*apply(positive, negative, 0.5), 0.5)
    assert half[0][0].control.previous is not None
    assert torch.allclose(ksample(nodes, model, *half, latent), controlled, atol=1e-4)
    # the deprecated node controls one conditioning over the whole run
    old = nodes["ControlNetApply"](conditioning=positive, control_net=controlnet, image=image, strength=1.0)
    old_neg = nodes["ControlNetApply"](conditioning=negative, control_net=controlnet, image=image, strength=1.0)
    assert torch.allclose(ksample(nodes, model, old, old_neg, latent), controlled, atol=1e-3)  # two calls, not one


def test_controlnet_with_lora_inpainting_t2i_adapter_and_diff_file(nodes: dict[str, Any]) -> None:
    model, clip, vae, (positive, negative) = prompts(nodes, SD1)
    image, mask = nodes["LoadImage"](image="example.png")
    controlnet = nodes["ControlNetLoader"](control_net_name=CONTROLNETS["sd1"])
    latent = nodes["EmptyLatentImage"](width=64, height=64, batch_size=1)
    controlled = nodes["ControlNetApplyAdvanced"](positive=positive, negative=negative, control_net=controlnet,
                                                  image=image, strength=1.0, start_percent=0.0, end_percent=1.0)

    # LoRA: the UNet is patched while sampling, the ControlNet is not; both effects show.
    lora_model, _ = nodes["LoraLoader"](model=model, clip=clip, lora_name=LORAS["sd1"], strength_model=1.0,
                                        strength_clip=0.0)
    with_lora = ksample(nodes, lora_model, *controlled, latent)
    assert (with_lora - ksample(nodes, model, *controlled, latent)).abs().max() > 1e-4
    assert (with_lora - ksample(nodes, lora_model, positive, negative, latent)).abs().max() > 1e-4

    # A 9-channel inpainting model: the ControlNet reads the 4-channel noisy latent.
    inpaint_model, *_ = nodes["CheckpointLoaderSimple"](ckpt_name=INPAINT)
    masked = nodes["VAEEncodeForInpaint"](pixels=image, vae=vae, mask=mask, grow_mask_by=6)
    inpainted = ksample(nodes, inpaint_model, *controlled, masked)
    assert inpainted.shape == (1, 4, 8, 8)
    assert (inpainted - ksample(nodes, inpaint_model, positive, negative, masked)).abs().max() > 1e-4

    # A T2I-Adapter loads through ControlNetLoader (from models/t2i_adapter/) and applies alike.
    adapter = nodes["ControlNetLoader"](control_net_name=CONTROLNETS["t2i"])
    assert isinstance(adapter, T2IAdapter) and adapter.hint_channels == 1
    adapted = nodes["ControlNetApplyAdvanced"](positive=positive, negative=negative, control_net=adapter,
                                               image=image, strength=0.8, start_percent=0.0, end_percent=1.0)
    assert (ksample(nodes, model, *adapted, latent) - ksample(nodes, model, positive, negative, latent)).abs().max() > 1e-4

    # A "diff" ControlNet needs its model; added to the UNet it is the full ControlNet again.
    diff = nodes["DiffControlNetLoader"](model=model, control_net_name=CONTROLNETS["diff"])
    assert all(torch.allclose(diff.state_dict()[k], v, atol=1e-6) for k, v in controlnet.state_dict().items())
    with pytest.raises(ValueError, match="DiffControlNetLoader"):
        nodes["ControlNetLoader"](control_net_name=CONTROLNETS["diff"])


def controlnet_prompt(strength: float) -> dict[str, Any]:
    """CheckpointLoaderSimple + ControlNetLoader + ControlNetApplyAdvanced + KSampler + VAEDecode (API format)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD1}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROLNETS["sd1"]}},
        "11": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "12": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["10", 0], "image": ["11", 0],
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0, "vae": ["4", 2]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 3, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["12", 0], "negative": ["12", 1], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": f"control{strength}", "images": ["8", 0]}},
    }


def test_controlnet_api_prompt_runs_through_the_engine(settings: Any, nodes: dict[str, Any]) -> None:
    from engine.cache import ResultCache
    from nodes.memory import result_size

    registry = NodeRegistry()
    registry.register_pack(build_nodes(Runtime(settings, device="cpu")), "nodes.builtin")
    executor = Executor(registry, ResultCache(64, 1 << 30, size_of=result_size),
                        services={"settings": settings, "output_dir": settings.output_dir})
    saved = []
    for strength in (0.0, 1.0):
        prompt = controlnet_prompt(strength)
        report = validate_document(prompt, registry)
        assert report.ok, report.format()
        result = executor.run(report.workflow, services={"prompt": prompt})
        assert result.status == "success", result.failure and result.failure.message
        (entry,) = result.outputs["9"]["images"]
        with Image.open(Path(settings.output_dir) / entry["subfolder"] / entry["filename"]) as image:
            saved.append(np.asarray(image.convert("RGB"), dtype=np.int16))
    assert np.abs(saved[0] - saved[1]).max() > 0  # the control changes the picture

    # The engine's picture is the node functions' picture (same files, same seed).
    model, _, vae, (positive, negative) = prompts(nodes, SD1)
    controlnet = nodes["ControlNetLoader"](control_net_name=CONTROLNETS["sd1"])
    image, _ = nodes["LoadImage"](image="example.png")
    latent = nodes["EmptyLatentImage"](width=64, height=64, batch_size=1)
    controlled = nodes["ControlNetApplyAdvanced"](positive=positive, negative=negative, control_net=controlnet,
                                                  image=image, strength=1.0, start_percent=0.0, end_percent=1.0)
    samples = ksample(nodes, model, *controlled, latent, seed=3, cfg=5.0)
    decoded = nodes["VAEDecode"](samples=replace(latent, samples=samples, empty=False), vae=vae)
    expected = (decoded[0].clamp(0, 1) * 255).round().to(torch.int16).numpy()
    assert np.abs(expected - saved[1]).max() <= 1
