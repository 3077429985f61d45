"""unCLIP and CLIP vision through the engine, on tiny stand-ins written with the released key names:
an SD 2.1 unCLIP checkpoint (UNet with a vector input, ``noise_augmentor.*`` buffers, the image
tower as ``embedder.model.visual.*``), standalone CLIP vision files in both layouts, and SDXL
Revision on a tiny SDXL checkpoint."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.api import NodeContext
from engine.registry import NodeRegistry
from engine.scheduler import Executor
from engine.settings import Settings
from engine.validation import validate_document
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from tests.sgm.clip_vision_factories import tiny_clip_vision, write_clip_vision_file, write_tiny_unclip_checkpoint
from tests.workflows.model_files import (
    TEXT_WIDTH,
    text_state_dict,
    write_byte_tokenizer,
    write_example_image,
    write_family_checkpoint,
)

UNCLIP, SDXL = "sd21-unclip-h.safetensors", "sd_xl_base_1.0.safetensors"
VISION, VISION_OPEN_CLIP = "tiny-vit.safetensors", "tiny-vit-open-clip.safetensors"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unclip")
    checkpoints = root / "models" / "checkpoints"
    write_byte_tokenizer(checkpoints / "tokenizer")
    vision = tiny_clip_vision(seed=3)
    write_tiny_unclip_checkpoint(checkpoints / UNCLIP, text_state_dict("sd2", seed=10), context_dim=TEXT_WIDTH,
                                 vision=vision, seed=10)
    write_tiny_unclip_checkpoint(checkpoints / "no-vision-unclip.safetensors", text_state_dict("sd2", seed=10),
                                 context_dim=TEXT_WIDTH, vision=None, seed=10)
    write_family_checkpoint(checkpoints / SDXL, "sdxl", seed=20)
    write_clip_vision_file(root / "models" / "clip_vision" / VISION, vision)
    write_clip_vision_file(root / "models" / "clip_vision" / VISION_OPEN_CLIP, vision, layout="open_clip")
    write_example_image(root / "input" / "example.png")
    return root


@pytest.fixture(scope="module")
def settings(root: Path) -> Settings:
    return Settings.for_root(root, output_dir=root / "output", extra={"dtype": "fp32"})


@pytest.fixture(scope="module")
def nodes(settings: Settings) -> dict[str, Any]:
    return {spec.id: spec.function for spec in build_nodes(Runtime(settings, device="cpu"))}


def context() -> NodeContext:
    return NodeContext("test", threading.Event(), lambda node_id, progress: None)


def unclip_prompt(strength: float, noise_augmentation: float) -> dict[str, Any]:
    return {
        "1": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": UNCLIP}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "3": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 3], "image": ["2", 0],
                                                           "crop": "center"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "5": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["4", 0], "clip_vision_output": ["3", 0],
                                                             "strength": strength,
                                                             "noise_augmentation": noise_augmentation}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["1", 0], "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["7", 0]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": f"unclip-{strength}", "images": ["9", 0]}},
    }


def run_prompt(settings: Settings, prompt: dict[str, Any]) -> np.ndarray:
    from engine.cache import ResultCache
    from nodes.memory import result_size

    registry = NodeRegistry()
    registry.register_pack(build_nodes(Runtime(settings, device="cpu")), "nodes.builtin")
    executor = Executor(registry, ResultCache(64, 1 << 30, size_of=result_size),
                        services={"settings": settings, "output_dir": settings.output_dir})
    report = validate_document(prompt, registry)
    assert report.ok, report.format()
    result = executor.run(report.workflow, services={"prompt": prompt})
    assert result.status == "success", result.failure and result.failure.message
    (saved,) = result.outputs["10"]["images"]
    with Image.open(Path(settings.output_dir) / saved["filename"]) as image:
        assert image.size == (64, 64)
        return np.asarray(image, dtype=np.float32)


def test_unclip_workflow_runs_and_the_image_embedding_steers_it(settings: Settings) -> None:
    with_image = run_prompt(settings, unclip_prompt(1.0, 0.1))
    without = run_prompt(settings, unclip_prompt(0.0, 0.1))  # strength 0: the conditioning is left as it was
    again = run_prompt(settings, unclip_prompt(1.0, 0.1))
    assert with_image.std() > 1 and np.array_equal(with_image, again)  # a picture, deterministic
    assert np.abs(with_image - without).mean() > 0.5


def test_checkpoint_tower_and_standalone_files_encode_alike(nodes: dict[str, Any]) -> None:
    model, clip, vae, tower = nodes["unCLIPCheckpointLoader"](ckpt_name=UNCLIP)
    assert model.family == "sd2" and model.needs_vector and model.unet.adm_in_channels == 64
    assert clip is not None and vae is not None
    image, _ = nodes["LoadImage"](image="example.png")
    embedded = nodes["CLIPVisionEncode"](clip_vision=tower, image=image, crop="center")
    for name in (VISION, VISION_OPEN_CLIP):
        standalone = nodes["CLIPVisionEncode"](clip_vision=nodes["CLIPVisionLoader"](clip_name=name), image=image,
                                               crop="center")
        assert torch.allclose(standalone.image_embeds, embedded.image_embeds, atol=1e-5), name
    assert embedded.image_embeds.shape == (1, 32) and embedded.penultimate_hidden_states.shape == (1, 5, 64)
    squeezed = nodes["CLIPVisionEncode"](clip_vision=tower, image=image[:, :, :48], crop="none")
    cropped = nodes["CLIPVisionEncode"](clip_vision=tower, image=image[:, :, :48], crop="center")
    assert not torch.allclose(squeezed.image_embeds, cropped.image_embeds)


def test_a_checkpoint_without_a_tower_gives_none_and_encode_says_why(nodes: dict[str, Any]) -> None:
    *_, tower = nodes["unCLIPCheckpointLoader"](ckpt_name="no-vision-unclip.safetensors")
    assert tower is None
    image, _ = nodes["LoadImage"](image="example.png")
    with pytest.raises(ValueError, match="CLIPVisionLoader"):
        nodes["CLIPVisionEncode"](clip_vision=tower, image=image, crop="center")


def test_sdxl_revision_samples_with_image_embeds_in_place_of_pooled_text(nodes: dict[str, Any]) -> None:
    model, clip, _ = nodes["CheckpointLoaderSimple"](ckpt_name=SDXL)
    tower = nodes["CLIPVisionLoader"](clip_name=VISION)
    image, _ = nodes["LoadImage"](image="example.png")
    positive = nodes["CLIPTextEncode"](text="a photo", clip=clip)
    negative = nodes["CLIPTextEncode"](text="", clip=clip)
    revision = nodes["unCLIPConditioning"](conditioning=positive, clip_vision_output=nodes["CLIPVisionEncode"](
        clip_vision=tower, image=image, crop="center"), strength=1.0, noise_augmentation=0.0)
    latent = nodes["EmptyLatentImage"](width=64, height=64, batch_size=1)
    settings = dict(seed=3, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    text = nodes["KSampler"](model=model, positive=positive, negative=negative, latent_image=latent,
                             ctx=context(), **settings)
    steered = nodes["KSampler"](model=model, positive=revision, negative=negative, latent_image=latent,
                                ctx=context(), **settings)
    assert torch.isfinite(steered.samples).all()
    assert (steered.samples - text.samples).abs().mean() > 1e-3
