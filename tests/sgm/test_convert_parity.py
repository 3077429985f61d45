"""Parity with diffusers: diffusers folder -> our convert -> load_checkpoint gives the same outputs,
and converting back reproduces the diffusers state dict exactly (fp32, random weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sgm.io.checkpoints import load_checkpoint, read_state_dict
from sgm.io.convert_files import convert
from tests.sgm.model_factories import (
    TINY_CONTEXT_DIM,
    TINY_POOLED_DIM,
    sdxl_vector,
    tiny_diffusers_unet,
    tiny_diffusers_vae,
    write_diffusers_folder,
)

pytest.importorskip("diffusers")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


def unet_inputs(family: str, generator: torch.Generator) -> dict:
    x = torch.randn(2, 4, 16, 16, generator=generator)  # (B, 4, h, w)
    t = torch.tensor([3.0, 781.5])
    context = torch.randn(2, 7, TINY_CONTEXT_DIM, generator=generator)  # (B, S, context_dim)
    inputs = {"x": x, "t": t, "context": context}
    if family == "sdxl":
        inputs["pooled"] = torch.randn(2, TINY_POOLED_DIM, generator=generator)
        inputs["time_ids"] = torch.tensor([[512.0, 512, 0, 0, 512, 512], [1024, 768, 16, 8, 1024, 1024]])
    return inputs


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_unet_parity_and_round_trip(family: str, tmp_path: Path) -> None:
    reference = tiny_diffusers_unet(family, seed=1)
    folder = write_diffusers_folder(tmp_path / "diffusers", unet=reference)
    report = convert(folder, tmp_path / "model.safetensors")
    assert report.family == family

    checkpoint = load_checkpoint(tmp_path / "model.safetensors")
    assert checkpoint.family == family
    assert checkpoint.unet is not None and checkpoint.vae is None

    inputs = unet_inputs(family, torch.Generator().manual_seed(0))
    extra, y = {}, None
    if family == "sdxl":
        extra = {"added_cond_kwargs": {"text_embeds": inputs["pooled"], "time_ids": inputs["time_ids"]}}
        y = sdxl_vector(inputs["pooled"], inputs["time_ids"])
    with torch.no_grad():
        expected = reference(inputs["x"], inputs["t"], inputs["context"], **extra).sample
        actual = checkpoint.unet(inputs["x"], inputs["t"], inputs["context"], y)
    assert actual.shape == expected.shape == (2, 4, 16, 16)
    assert relative_error(actual, expected) < 1e-4

    # Back to diffusers: identical tensors under identical names, and a config diffusers loads.
    convert(tmp_path / "model.safetensors", tmp_path / "back")
    back, _ = read_state_dict(tmp_path / "back" / "unet" / "diffusion_pytorch_model.safetensors")
    original = reference.state_dict()
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[k], original[k]) for k in original)

    from diffusers import UNet2DConditionModel

    reloaded = UNet2DConditionModel.from_pretrained(tmp_path / "back" / "unet").eval()
    with torch.no_grad():
        again = reloaded(inputs["x"], inputs["t"], inputs["context"], **extra).sample
    assert torch.allclose(again, expected, atol=1e-6)


def test_vae_parity_and_round_trip(tmp_path: Path) -> None:
    reference = tiny_diffusers_vae(seed=2)
    folder = write_diffusers_folder(tmp_path / "diffusers", vae=reference)
    convert(folder, tmp_path / "vae.safetensors")
    checkpoint = load_checkpoint(tmp_path / "vae.safetensors")
    assert checkpoint.vae is not None and checkpoint.unet is None
    assert checkpoint.scale_factor == pytest.approx(reference.config.scaling_factor)

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1  # (B, 3, H, W) in [-1, 1]
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    with torch.no_grad():
        expected_mean = reference.encode(images).latent_dist.mean
        expected_images = reference.decode(latents).sample
        actual_mean = checkpoint.vae.encode(images)
        actual_images = checkpoint.vae.decode(latents)
    assert actual_mean.shape == (2, 4, 8, 8)
    assert relative_error(actual_mean, expected_mean) < 1e-4
    assert relative_error(actual_images, expected_images) < 1e-4

    convert(tmp_path / "vae.safetensors", tmp_path / "back")
    back, _ = read_state_dict(tmp_path / "back" / "vae" / "diffusion_pytorch_model.safetensors")
    original = reference.state_dict()
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    config = json.loads((tmp_path / "back" / "vae" / "config.json").read_text())
    assert config["block_out_channels"] == list(reference.config.block_out_channels)


def test_v_prediction_and_fp16_travel_through_convert(tmp_path: Path) -> None:
    folder = write_diffusers_folder(tmp_path / "d", unet=tiny_diffusers_unet("sd2"), prediction_type="v_prediction")
    report = convert(folder, tmp_path / "v.safetensors", dtype=torch.float16)
    assert report.family == "sd2-v"
    tensors, _ = read_state_dict(tmp_path / "v.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    checkpoint = load_checkpoint(tmp_path / "v.safetensors", dtype=torch.float32)
    assert (checkpoint.family, checkpoint.prediction) == ("sd2-v", "v")
    assert checkpoint.unet is not None and checkpoint.unet.out[2].weight.dtype == torch.float32


def test_text_encoder_tensors_round_trip_through_convert(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    # 64-wide heads as in CLIP (the head count of a converted config is read as width // 64).
    config = transformers.CLIPTextConfig(vocab_size=1000, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=1, max_position_embeddings=77)
    text_encoder = transformers.CLIPTextModel(config).eval()
    folder = write_diffusers_folder(tmp_path / "d", unet=tiny_diffusers_unet("sd1"))
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    convert(folder, tmp_path / "model.safetensors")
    tensors, _ = read_state_dict(tmp_path / "model.safetensors")
    text_keys = [k for k in tensors if k.startswith("cond_stage_model.transformer.text_model.")]
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in text_keys

    report = convert(tmp_path / "model.safetensors", tmp_path / "back")
    assert report.family == "sd1"
    original, _ = read_state_dict(folder / "text_encoder" / "model.safetensors")
    back, _ = read_state_dict(tmp_path / "back" / "text_encoder" / "model.safetensors")
    # transformers 5 saves CLIPTextModel without the "text_model." prefix that released
    # diffusers folders carry; our converter writes the released layout.
    original = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in original.items()}
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    reloaded = transformers.CLIPTextModel.from_pretrained(tmp_path / "back" / "text_encoder").eval()
    ids = torch.tensor([[0, 5, 17, 2]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).last_hidden_state, text_encoder(ids).last_hidden_state)
