"""ComfyUI's CLIP vision nodes (nodes.comfy.clip_vision): interfaces as ComfyUI 0.3.64 has them, and
how sampling turns ``Condition.unclip`` into the UNet's vector (SD 2.1 unCLIP ``y``, SDXL Revision).
The model-backed runs are in tests/workflows/test_unclip.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nodes.sampling import _prepare_conditions
from nodes.values import ModelValue
from sgm.nets.clip_vision import ClipVisionOutput
from sgm.sampling import unclip as uc
from sgm.text.conditioning import Condition
from sgm.text.sdxl_conditioning import sdxl_vector
from tests.nodes.test_comfy_interface import check_interface
from tests.reference import COMFYUI_OBJECT_INFO, comfyui_object_info
from tests.sgm.model_factories import tiny_unet

NAMES = ("CLIPVisionLoader", "CLIPVisionEncode", "unCLIPConditioning", "unCLIPCheckpointLoader")
REFERENCE = comfyui_object_info()


# object_info and nodes: tests/nodes/conftest.py


@pytest.mark.skipif(REFERENCE is None, reason=f"the interface spec is not at {COMFYUI_OBJECT_INFO}")
@pytest.mark.parametrize("name", NAMES)
def test_interface_matches_comfyui(object_info: dict[str, Any], name: str) -> None:
    check_interface(name, REFERENCE[name], object_info[name])


def vision_output(rows: int, dim: int, seed: int) -> ClipVisionOutput:
    embeds = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))
    return ClipVisionOutput(embeds, torch.zeros(rows, 2, 4), torch.zeros(rows, 2, 4))


def test_unclip_conditioning_records_each_image_on_each_condition(nodes: dict[str, Any]) -> None:
    conditioning = [Condition(context=torch.zeros(1, 3, 8)), Condition(context=torch.ones(1, 3, 8))]
    first, second = vision_output(1, 4, 0), vision_output(2, 4, 1)
    once = nodes["unCLIPConditioning"](conditioning=conditioning, clip_vision_output=first, strength=0.7,
                                       noise_augmentation=0.2)
    twice = nodes["unCLIPConditioning"](conditioning=once, clip_vision_output=second, strength=-1.0,
                                        noise_augmentation=0.0)
    assert [len(c.unclip) for c in twice] == [2, 2] and conditioning[0].unclip == ()  # inputs untouched
    embeds, strength, level = twice[1].unclip[1]
    assert embeds is second.image_embeds and (strength, level) == (-1.0, 0.0)
    assert twice[0].unclip[0][1:] == (0.7, 0.2)
    # Strength 0 leaves the conditioning as it was (ComfyUI returns it unchanged).
    assert nodes["unCLIPConditioning"](conditioning=once, clip_vision_output=second, strength=0.0,
                                       noise_augmentation=0.5) is once


def unclip_model(embed_dim: int = 32) -> ModelValue:
    unet = tiny_unet("sd2", num_classes="sequential", adm_in_channels=2 * embed_dim)
    return ModelValue(unet=unet, model_sampling=None, family="sd2", name="unclip")


def test_unclip_models_get_the_augmented_embeddings_as_y() -> None:
    model = unclip_model()
    image = vision_output(1, 32, 3).image_embeds
    cond = Condition(context=torch.zeros(1, 77, 64), unclip=((image, 0.8, 0.25),))
    (prepared,) = _prepare_conditions((cond,), model, 64, 64, "test", seed=42)
    assert prepared.y.shape == (1, model.unet.adm_in_channels)
    expected = uc.unclip_vector(cond.unclip, uc.EmbeddingNoiseAugmentation(32), seed=42 + uc.NOISE_SEED_OFFSET)
    assert torch.equal(prepared.y, expected)
    # The level embedding of noise_augmentation 0.25 (step 250), weighted by the strength.
    assert torch.allclose(prepared.y[:, 32:], 0.8 * uc.timestep_embedding(torch.tensor([250.0]), 32))
    # Without an image the model gets zeros; a model without a vector input gets no y at all.
    (plain,) = _prepare_conditions((Condition(context=torch.zeros(1, 77, 64)),), model, 64, 64, "test")
    assert torch.equal(plain.y, torch.zeros(1, 64))
    sd2 = ModelValue(unet=tiny_unet("sd2"), model_sampling=None, family="sd2", name="sd2")
    assert _prepare_conditions((cond,), sd2, 64, 64, "test")[0].y is None
    with pytest.raises(ValueError, match="^test: .*16 wide, this model takes 32"):
        bad = Condition(context=torch.zeros(1, 77, 64), unclip=((torch.zeros(1, 16), 1.0, 0.0),))
        _prepare_conditions((bad,), model, 64, 64, "test")


def test_sdxl_revision_replaces_the_pooled_text() -> None:
    unet = tiny_unet("sdxl", pooled_dim=32)
    model = ModelValue(unet=unet, model_sampling=None, family="sdxl", name="sdxl")
    image = vision_output(1, 32, 4).image_embeds
    pooled_text = torch.randn(1, 32)
    cond = Condition(context=torch.zeros(1, 77, 64), pooled=pooled_text, unclip=((image, 1.0, 0.1),))
    (prepared,) = _prepare_conditions((cond,), model, 64, 96, "test", seed=7)
    revision = uc.unclip_vector(cond.unclip, uc.EmbeddingNoiseAugmentation(32), seed=7 + uc.NOISE_SEED_OFFSET)
    assert torch.equal(prepared.pooled, revision[:, :32])
    assert torch.equal(prepared.y, sdxl_vector(revision[:, :32], original_size=(64, 96), target_size=(64, 96)))
    assert prepared.y.shape == (1, unet.adm_in_channels)
    # A vector made already (CLIPTextEncodeSDXL) keeps its size features; only the pooled part changes.
    made = sdxl_vector(pooled_text, original_size=(1024, 1024), target_size=(512, 512))
    (kept,) = _prepare_conditions((cond.with_(y=made),), model, 64, 96, "test", seed=7)
    assert torch.equal(kept.y[:, 32:], made[:, 32:]) and torch.equal(kept.y[:, :32], revision[:, :32])
    # No image: the text's pooled output, as before.
    (text_only,) = _prepare_conditions((cond.with_(unclip=()),), model, 64, 96, "test", seed=7)
    assert torch.equal(text_only.y[:, :32], pooled_text)
