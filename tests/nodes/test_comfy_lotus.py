"""Lotus-D: UNETLoader tells a Lotus UNet by its 4-wide vector input and gives it the img-to-img
sampling; LotusConditioning gives the stored null prompt with the depth task's vector; and
ComfyUI's template graph (VAEEncode -> one euler step from sigma 999 with DisableNoise ->
VAEDecode -> ImageInvert) computes exactly ``1 - decode(F(E(image), t=999, null prompt, task))``."""

from __future__ import annotations

import json
import math
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
from sgm.io.lotus import (LOTUS_TIMESTEP, NULL_PROMPT_FILE, ImgToImgDiscreteModelSampling, is_lotus_unet,
                          lotus_model_sampling, save_null_prompt, task_embedding)
from sgm.io.state_dict import UNET_PREFIX
from tests.nodes.test_comfy_interface import REFERENCE, check_interface
from tests.sgm.model_factories import tiny_unet, tiny_vae

LOTUS_FILE = "lotus-depth-d-v1-1.safetensors"
HEAD_CHANNELS = 16  # the tiny UNets' head width (shapes cannot tell it: a latentflow.config hint)


def write_tiny_lotus(path: Path, *, context_dim: int = 1024, seed: int = 0) -> Path:
    """A reduced-width random Lotus-D UNet file (UNet keys only, as ComfyUI's diffusion_models file):
    SD 2 layout (linear transformer projections, ``context_dim``-wide text) with the 4-wide vector
    input of the task switcher."""
    unet = tiny_unet("sd2", seed=seed, context_dim=context_dim, num_classes="sequential", adm_in_channels=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({UNET_PREFIX + k: v.contiguous() for k, v in unet.state_dict().items()}, str(path),
              metadata={"latentflow.config": json.dumps({"unet": {"num_head_channels": HEAD_CHANNELS}})})
    return path


def write_null_prompt_stand_in(models: Path, width: int = 1024, seed: int = 0) -> torch.Tensor:
    """A random (1, 2, width) null prompt in models/text_encoders/ (the real one is SD 2's encoding of "")."""
    embedding = torch.randn(1, 2, width, generator=torch.Generator().manual_seed(seed))
    save_null_prompt(models / "text_encoders" / NULL_PROMPT_FILE, embedding)
    return embedding


def context() -> NodeContext:
    return NodeContext("test", threading.Event(), lambda node_id, progress: None)


@pytest.fixture()
def installation(tmp_path: Path) -> Path:
    write_tiny_lotus(tmp_path / "models" / "diffusion_models" / LOTUS_FILE, context_dim=64)
    sd2 = tiny_unet("sd2", seed=1)
    save_file({UNET_PREFIX + k: v.contiguous() for k, v in sd2.state_dict().items()},
              str(tmp_path / "models" / "diffusion_models" / "sd2.safetensors"),
              metadata={"latentflow.config": json.dumps({"unet": {"num_head_channels": HEAD_CHANNELS}})})
    return tmp_path


@pytest.fixture()
def nodes(installation: Path) -> dict[str, Any]:
    runtime = Runtime(Settings.for_root(installation, extra={"dtype": "fp32"}), device="cpu")
    return {spec.id: spec.function for spec in build_nodes(runtime)}


@pytest.mark.skipif(REFERENCE is None, reason="the interface spec is missing")
def test_interface_matches_comfyui(object_info: dict[str, Any]) -> None:
    check_interface("LotusConditioning", REFERENCE["LotusConditioning"], object_info["LotusConditioning"])


def test_task_embedding_is_sin_and_cos_of_the_switcher() -> None:
    expected = torch.tensor([[math.sin(1.0), 0.0, math.cos(1.0), 1.0]])
    assert torch.allclose(task_embedding(), expected, atol=1e-7)
    assert torch.allclose(task_embedding((0.0, 1.0)), torch.tensor([[0.0, math.sin(1.0), 1.0, math.cos(1.0)]]))


def test_img_to_img_sampling_takes_the_input_as_is_and_the_output_as_the_result() -> None:
    sampling = lotus_model_sampling()
    sigma = torch.tensor([999.0, 14.6146, 1.0])
    s = sampling.scalings(sigma, 4)
    assert torch.equal(s.c_in.flatten(), torch.ones(3)) and torch.equal(s.c_out.flatten(), torch.ones(3))
    assert torch.equal(s.c_skip.flatten(), torch.zeros(3))
    # sigma 999 is far above SD's largest (14.6): the timestep is the last one, Lotus's 999
    assert sampling.timestep(torch.tensor([999.0])).item() == LOTUS_TIMESTEP
    assert sampling.sigma_max == pytest.approx(14.6146, abs=1e-3)
    x, output = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert torch.equal(sampling.denoised_from_output(x, sigma[:1], output), output)


def test_unet_loader_sets_lotus_up_and_leaves_other_unets(nodes: dict[str, Any]) -> None:
    (lotus,) = (nodes["UNETLoader"](unet_name=LOTUS_FILE, weight_dtype="default"),)
    assert is_lotus_unet(lotus.unet) and lotus.family == "lotus"
    assert isinstance(lotus.model_sampling, ImgToImgDiscreteModelSampling)
    assert lotus.unet.adm_in_channels == 4 and lotus.unet.context_dim == 64 and lotus.unet.in_channels == 4
    sd2 = nodes["UNETLoader"](unet_name="sd2.safetensors", weight_dtype="default")
    assert not is_lotus_unet(sd2.unet) and sd2.family != "lotus"
    assert type(sd2.model_sampling).__name__ == "DiscreteModelSampling" and sd2.model_sampling.prediction == "eps"
    ours = nodes["LoadUNet"](unet_name=LOTUS_FILE)  # our loader sets it up the same way
    assert ours.family == "lotus" and isinstance(ours.model_sampling, ImgToImgDiscreteModelSampling)
    # ComfyUI's ModelSamplingDiscrete img_to_img gives any model the same sampling
    other = nodes["ModelSamplingDiscrete"](model=sd2, sampling="img_to_img", zsnr=False)
    assert isinstance(other.model_sampling, ImgToImgDiscreteModelSampling)
    sigma = torch.tensor([3.0])
    mine, theirs = other.model_sampling.scalings(sigma, 4), lotus.model_sampling.scalings(sigma, 4)
    assert all(torch.equal(getattr(mine, k), getattr(theirs, k)) for k in ("c_skip", "c_out", "c_in"))
    assert float(mine.c_in) == 1.0 and float(mine.c_skip) == 0.0  # the input as it is, the output as the result


def test_lotus_conditioning_needs_its_file_and_gives_it_with_the_task(nodes: dict[str, Any],
                                                                      installation: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"LotusConditioning: lotus-null-prompt\.safetensors not found.*"
                                                 r"\(1, 2, 1024\)"):
        nodes["LotusConditioning"]()
    stored = write_null_prompt_stand_in(installation / "models", width=64)
    (condition,) = nodes["LotusConditioning"]()
    assert condition.context.shape == (1, 2, 64) and torch.equal(condition.context, stored)
    assert torch.equal(condition.y, task_embedding()) and condition.pooled is None


def test_template_graph_is_one_x0_step_at_t999(nodes: dict[str, Any], installation: Path) -> None:
    """ComfyUI's image_lotus_depth_v1_1 graph, node by node, against the UNet called by hand."""
    null_prompt = write_null_prompt_stand_in(installation / "models", width=64, seed=3)
    from nodes.values import VaeValue

    vae = VaeValue(tiny_vae(seed=2), 0.18215, "vae")
    image = torch.rand(1, 32, 40, 3, generator=torch.Generator().manual_seed(4))  # IMAGE (B, H, W, C)

    model = nodes["UNETLoader"](unet_name=LOTUS_FILE, weight_dtype="default")
    latent = nodes["VAEEncode"](pixels=image, vae=vae)
    guider = nodes["BasicGuider"](model=model, conditioning=nodes["LotusConditioning"]())
    sigmas = nodes["SetFirstSigma"](sigmas=nodes["BasicScheduler"](model=model, scheduler="normal", steps=1,
                                                                   denoise=1.0), sigma=999.0)
    assert torch.allclose(sigmas, torch.tensor([999.0, 0.0]))
    output, _ = nodes["SamplerCustomAdvanced"](noise=nodes["DisableNoise"](), guider=guider,
                                               sampler=nodes["KSamplerSelect"](sampler_name="euler"), sigmas=sigmas,
                                               latent_image=latent, ctx=context())
    (decoded,) = (nodes["VAEDecode"](samples=output, vae=vae),)
    depth = nodes["ImageInvert"](image=decoded)

    with torch.no_grad():  # by hand: the scaled image latent in, unscaled; t = 999; null prompt and task vector
        expected = model.unet(latent.samples, torch.tensor([999.0]), context=null_prompt, y=task_embedding())
    assert output.samples.shape == latent.samples.shape == (1, 4, 4, 5)
    assert torch.allclose(output.samples, expected, atol=1e-4)
    # an eps reading (input scaled by 1/sqrt(sigma^2+1), D = x - sigma F) would be far off
    assert (output.samples - latent.samples).abs().max() > 1e-2
    assert depth.shape == image.shape and torch.allclose(depth, 1.0 - decoded, atol=1e-6)


def test_diffusers_layout_lotus_loads_and_matches_diffusers(installation: Path, nodes: dict[str, Any]) -> None:
    """A Lotus UNet in diffusers' layout (the task switcher as a projection class embedding) loads
    through UNETLoader as a Lotus model and gives diffusers' output for the task's class labels."""
    from diffusers import UNet2DConditionModel

    from tests.sgm.model_factories import randomize_, tiny_diffusers_unet_kwargs

    torch.manual_seed(5)
    reference = randomize_(UNet2DConditionModel(**tiny_diffusers_unet_kwargs("sd2"), class_embed_type="projection",
                                                projection_class_embeddings_input_dim=4), 5).eval()
    assert "class_embedding.linear_1.weight" in reference.state_dict()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              str(installation / "models" / "diffusion_models" / "lotus-diffusers.safetensors"))
    model = nodes["UNETLoader"](unet_name="lotus-diffusers.safetensors", weight_dtype="default")
    assert model.family == "lotus" and isinstance(model.model_sampling, ImgToImgDiscreteModelSampling)
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 2, reference.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        ours = model.unet(x, torch.tensor([999.0]), context=text, y=task_embedding())
        theirs = reference(x, torch.tensor([999]), encoder_hidden_states=text, class_labels=task_embedding()).sample
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_null_prompt_embedding_is_the_unpadded_encoding_of_the_empty_prompt(tmp_path: Path) -> None:
    """The first two rows of SD 2's 77-token encoding of "" equal the encoding of [BOS, EOS] alone
    (what Lotus was trained with: causal attention never sees the padding); and the file round-trips."""
    from sgm.io.lotus import load_null_prompt, null_prompt_embedding
    from sgm.text.encoders import build_conditioner
    from tests.workflows.model_files import text_state_dict, write_byte_tokenizer

    write_byte_tokenizer(tmp_path / "tokenizer")
    conditioner = build_conditioner(text_state_dict("sd2", 0), "sd2", {}, model_path=tmp_path / "sd2.safetensors")
    embedding = null_prompt_embedding(conditioner)
    role, tower = conditioner.towers[0]
    ids = torch.tensor([[conditioner.tokenizer.bos_id, conditioner.tokenizer.eos_id]])
    with torch.no_grad():
        unpadded, _ = tower(tower.embed_tokens(ids), hidden_layer=tower.config.layers - role.default_clip_skip + 1,
                            final_norm=role.final_norm, eos_index=None)
    assert embedding.shape == (1, 2, tower.config.width)
    assert torch.allclose(embedding, unpadded, atol=1e-5)
    path = save_null_prompt(tmp_path / NULL_PROMPT_FILE, embedding)
    assert torch.equal(load_null_prompt(path), embedding)
    save_file({"other": embedding}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="no 'prompt_embeds' tensor"):
        load_null_prompt(tmp_path / "bad.safetensors")
