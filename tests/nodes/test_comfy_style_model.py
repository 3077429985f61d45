"""ComfyUI's style model nodes (nodes.comfy.style_model): interfaces as ComfyUI 0.3.64 has them, loading
from models/style_models/, the tokens StyleModelApply appends, and a sampling run with them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from engine.api import NodeContext
from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from nodes.values import LatentValue, ModelValue
from sgm.nets.clip_vision import ClipVisionOutput
from sgm.nets.style_adapter import StyleAdapterConfig
from sgm.sampling.denoisers import model_sampling_for
from sgm.text.conditioning import Condition
from tests.nodes.test_comfy_interface import check_interface
from tests.reference import COMFYUI_OBJECT_INFO, comfyui_object_info
from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet
from tests.sgm.test_style_adapter import _RefAdapter, reference_state

NAMES = ("StyleModelLoader", "StyleModelApply")
REFERENCE = comfyui_object_info()
# A tiny adapter whose tokens fit the tiny UNet's context width.
CONFIG = StyleAdapterConfig(width=32, context_dim=TINY_CONTEXT_DIM, heads=8, layers=2, num_token=4)


@pytest.mark.skipif(REFERENCE is None, reason=f"the interface spec is not at {COMFYUI_OBJECT_INFO}")
@pytest.mark.parametrize("name", NAMES)
def test_interface_matches_comfyui(object_info: dict[str, Any], name: str) -> None:
    check_interface(name, REFERENCE[name], object_info[name])


@pytest.fixture()
def found(tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "models" / "style_models"
    folder.mkdir(parents=True)
    save_file(reference_state(seed=5, config=CONFIG), str(folder / "style_tiny.safetensors"))
    save_file({"redux_up.weight": torch.zeros(2, 2), "redux_down.weight": torch.zeros(2, 2)},
              str(folder / "flux1-redux-dev.safetensors"))
    runtime = Runtime(Settings.for_root(tmp_path, extra={"dtype": "fp32"}), device="cpu")  # exact comparisons
    return {spec.id: spec.function for spec in build_nodes(runtime)}


def vision_output(images: int = 1, seed: int = 0) -> ClipVisionOutput:
    states = torch.randn(images, 5, CONFIG.width, generator=torch.Generator().manual_seed(seed))
    return ClipVisionOutput(torch.zeros(images, 8), states, torch.zeros_like(states))


def expected_tokens(output: ClipVisionOutput) -> torch.Tensor:
    """The original architecture's tokens of each image, one after another: (1, B * N, C)."""
    ref = _RefAdapter(CONFIG)
    ref.load_state_dict(reference_state(seed=5, config=CONFIG))
    with torch.no_grad():
        return ref.eval()(output.last_hidden_state).reshape(1, -1, CONFIG.context_dim)


def test_loader_reads_the_folder_and_refuses_redux(found: dict[str, Any]) -> None:
    model = found["StyleModelLoader"](style_model_name="style_tiny.safetensors")
    assert model.config == CONFIG
    with pytest.raises(Exception, match="Flux Redux"):
        found["StyleModelLoader"](style_model_name="flux1-redux-dev.safetensors")


def test_apply_appends_the_tokens_scaled_by_strength(found: dict[str, Any]) -> None:
    model = found["StyleModelLoader"](style_model_name="style_tiny.safetensors")
    text = torch.randn(1, 7, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(1))
    conditioning = [Condition(context=text), Condition(context=-text)]
    images = vision_output(images=2)
    tokens = expected_tokens(images)  # (1, 8, C): two images, four tokens each
    out = found["StyleModelApply"](conditioning=conditioning, style_model=model, clip_vision_output=images,
                                   strength=1.0, strength_type="multiply")
    assert [c.context.shape for c in out] == [(1, 15, TINY_CONTEXT_DIM)] * 2
    assert torch.equal(out[1].context[:, :7], -text) and conditioning[0].context.shape == (1, 7, TINY_CONTEXT_DIM)
    torch.testing.assert_close(out[0].context[:, 7:], tokens, rtol=1e-5, atol=1e-5)
    half = found["StyleModelApply"](conditioning=conditioning, style_model=model, clip_vision_output=images,
                                    strength=0.5, strength_type="multiply")
    torch.testing.assert_close(half[0].context[:, 7:], 0.5 * tokens, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="^StyleModelApply: strength_type 'attn_bias' with strength 0.5"):
        found["StyleModelApply"](conditioning=conditioning, style_model=model, clip_vision_output=images,
                                 strength=0.5, strength_type="attn_bias")
    with pytest.raises(ValueError, match="^StyleModelApply: style adapter: expected CLIP vision hidden states"):
        wide = ClipVisionOutput(torch.zeros(1, 8), torch.zeros(1, 5, 64), torch.zeros(1, 5, 64))
        found["StyleModelApply"](conditioning=conditioning, style_model=model, clip_vision_output=wide,
                                 strength=1.0, strength_type="multiply")


def test_ksampler_runs_with_the_styled_conditioning(found: dict[str, Any]) -> None:
    model = found["StyleModelLoader"](style_model_name="style_tiny.safetensors")
    unet = ModelValue(unet=tiny_unet("sd1"), model_sampling=model_sampling_for("eps"), family="sd1", name="tiny")
    text = torch.randn(1, 77, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(2))
    positive, negative = [Condition(context=text)], [Condition(context=torch.zeros_like(text))]
    images = vision_output(seed=3)
    styled = found["StyleModelApply"](conditioning=positive, style_model=model, clip_vision_output=images,
                                      strength=1.0, strength_type="multiply")
    ctx = NodeContext("test", threading.Event(), lambda node_id, progress: None)

    def sample(cond: list[Condition]) -> torch.Tensor:
        return found["KSampler"](model=unet, seed=4, steps=2, cfg=3.0, sampler_name="euler", scheduler="normal",
                                 positive=cond, negative=negative, latent_image=LatentValue(torch.zeros(1, 4, 8, 8)),
                                 denoise=1.0, ctx=ctx).samples

    out = sample(styled)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    # The same as sampling a prompt whose context holds the tokens by hand, and not the plain prompt.
    by_hand = [Condition(context=torch.cat([text, expected_tokens(images)], dim=1))]
    torch.testing.assert_close(out, sample(by_hand), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, sample(positive), atol=1e-3)
