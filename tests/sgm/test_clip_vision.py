"""CLIP vision towers and unCLIP conditioning (sgm.nets.clip_vision, sgm.io.clip_vision_files,
sgm.sampling.unclip).

The tower is checked against transformers' CLIPVisionModelWithProjection at reduced width
(random weights, fp32), loaded through our file loader from the transformers layout and from an
open_clip layout written here from the documented key correspondence. Preprocessing and the
noise augmentation are checked against hand computations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sgm.io.clip_vision_files import (
    build_clip_vision,
    infer_clip_vision_config,
    load_clip_vision,
    open_clip_to_transformers,
)
from sgm.io.state_dict import CheckpointError
from sgm.nets.clip_vision import CLIP_MEAN, CLIP_STD, CLIP_VISION_CONFIGS, ClipVisionModel, clip_preprocess
from sgm.sampling import unclip as uc
from tests.sgm.clip_vision_factories import to_open_clip

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH, LAYERS, HEADS, PROJECTION, IMAGE, PATCH = 64, 3, 4, 32, 56, 14


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def reference_model(act: str, seed: int = 0):
    config = transformers.CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        image_size=IMAGE, patch_size=PATCH, projection_dim=PROJECTION, hidden_act=act)
    torch.manual_seed(seed)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norms and biases off their initial 1 / 0, so a swapped name shows
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def hints(act: str) -> dict[str, str]:
    activation = "quick_gelu" if act == "quick_gelu" else "gelu"
    return {"latentflow.config": json.dumps({"clip_vision": {"heads": HEADS, "activation": activation}})}


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_tower_matches_transformers_from_both_layouts(tmp_path: Path, act: str) -> None:
    reference = reference_model(act)
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)
    state_dict = {k: v.contiguous() for k, v in reference.state_dict().items()}

    hf_file = tmp_path / "hf.safetensors"
    save_file(state_dict, str(hf_file), metadata=hints(act))
    ours = load_clip_vision(hf_file)
    assert ours.config.activation == ("quick_gelu" if act == "quick_gelu" else "gelu")
    with torch.no_grad():
        out = ours(pixels)
    assert relative_error(out.image_embeds, expected.image_embeds) <= 1e-4
    assert relative_error(out.last_hidden_state, expected.last_hidden_state) <= 1e-4
    assert relative_error(out.penultimate_hidden_states, expected.hidden_states[-2]) <= 1e-4
    assert out.image_embeds.shape == (2, PROJECTION) and out["last_hidden_state"].shape == (2, 17, WIDTH)

    open_file = tmp_path / "open_clip.safetensors"
    save_file(to_open_clip(state_dict), str(open_file), metadata=hints(act))
    with torch.no_grad():
        from_open_clip = load_clip_vision(open_file)(pixels)
    for name in ("image_embeds", "last_hidden_state", "penultimate_hidden_states"):
        assert torch.allclose(from_open_clip[name], out[name], rtol=0, atol=1e-6), name
    # Inside a checkpoint (SD 2.1 unCLIP's prefix), next to other weights.
    checkpoint = {**to_open_clip(state_dict, "embedder.model.visual."), "model.diffusion_model.out.2.bias": torch.zeros(4)}
    embedded = build_clip_vision(checkpoint, hints={"heads": HEADS, "activation": ours.config.activation})
    with torch.no_grad():
        assert torch.allclose(embedded(pixels).image_embeds, out.image_embeds, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CLIP_VISION_CONFIGS))
def test_released_sizes_are_read_from_shapes(name: str) -> None:
    config = CLIP_VISION_CONFIGS[name]
    with torch.device("meta"):
        state_dict = ClipVisionModel(config).state_dict()
    assert infer_clip_vision_config(state_dict) == config
    assert state_dict["vision_model.embeddings.position_embedding.weight"].shape == (257, config.width)


def test_files_without_a_tower_or_projection_are_refused() -> None:
    with pytest.raises(CheckpointError, match="no CLIP image tower"):
        build_clip_vision({"model.diffusion_model.out.2.bias": torch.zeros(4)})
    with pytest.raises(CheckpointError, match="proj"):
        open_clip_to_transformers({"visual.conv1.weight": torch.zeros(8, 3, 14, 14)})


# ------------------------------------------------------------------------------------ preprocessing


def normalised(values: torch.Tensor) -> torch.Tensor:
    """(..., 3) values in [0, 1] -> 8-bit rounded and normalised by CLIP's mean / std, channels first."""
    rounded = torch.round(values * 255) / 255
    return ((rounded - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).movedim(-1, -3)


def test_center_crop_keeps_the_middle_of_the_long_side() -> None:
    # 8 x 12 with size 8: the short side is already 8, so no resampling; columns 2..9 are kept.
    ramp = torch.linspace(0, 1, 12).view(1, 1, 12, 1).expand(1, 8, 12, 3)
    out = clip_preprocess(ramp, size=8, crop="center")
    assert out.shape == (1, 3, 8, 8)
    assert torch.allclose(out, normalised(ramp[:, :, 2:10]), atol=1e-5)
    # A 16 x 16 image halves; a flat colour stays that colour (8-bit rounded).
    flat = torch.full((2, 16, 16, 4), 0.3011)  # alpha dropped
    assert torch.allclose(clip_preprocess(flat, size=8), normalised(flat[..., :3])[:, :, :8, :8], atol=1e-5)


def test_crop_none_squeezes_the_whole_image() -> None:
    # Rows differ, columns do not: squeezing 12 columns into 8 leaves every row's value.
    rows = torch.linspace(0, 1, 8).view(1, 8, 1, 1).expand(1, 8, 12, 3)
    out = clip_preprocess(rows, size=8, crop="none")
    assert out.shape == (1, 3, 8, 8)
    assert torch.allclose(out, normalised(rows[:, :, :8]), atol=1e-5)
    # With "center" the same picture keeps its middle 8 columns: the same values here.
    assert torch.allclose(clip_preprocess(rows, size=8, crop="center"), out, atol=1e-5)
    with pytest.raises(ValueError, match="crop"):
        clip_preprocess(rows, size=8, crop="centre")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ unCLIP


def alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def test_cosine_schedule_is_the_capped_alpha_bar_ratio() -> None:
    alphas_cumprod = uc.squaredcos_cap_v2_alphas_cumprod()
    for t in (0, 1, 500, 900):  # betas are capped only at the very end
        assert alphas_cumprod[t].item() == pytest.approx(alpha_bar((t + 1) / 1000) / alpha_bar(0), rel=1e-9)
    assert alphas_cumprod[-1].item() < 1e-6
    assert (uc.noise_level(0.0), uc.noise_level(0.5), uc.noise_level(1.0)) == (0, 500, 999)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        uc.noise_level(1.5)


def test_augmentation_at_level_zero_is_the_embedding_plus_the_level_embedding() -> None:
    dim = 6
    embeds = torch.randn(1, dim, generator=torch.Generator().manual_seed(1))
    mean, std = torch.randn(1, dim) * 0.1, torch.rand(1, dim) + 0.5
    noise = torch.randn(1, dim, generator=torch.Generator().manual_seed(2))
    out = uc.EmbeddingNoiseAugmentation(dim, mean, std)(embeds, 0, noise)
    ab0 = alpha_bar(1 / 1000) / alpha_bar(0)
    expected = ((embeds - mean) / std * math.sqrt(ab0) + math.sqrt(1 - ab0) * noise) * std + mean
    assert torch.allclose(out[:, :dim], expected, atol=1e-6)
    assert torch.equal(out[:, dim:], torch.tensor([[1.0, 1, 1, 0, 0, 0]]))  # [cos 0 | sin 0]
    # At the top level the embedding is almost pure noise (in the data's scale).
    top = uc.EmbeddingNoiseAugmentation(dim, mean, std)(embeds, 999, noise)
    assert torch.allclose(top[:, :dim], noise * std + mean, atol=1e-3)
    with pytest.raises(ValueError, match="4 wide"):
        uc.EmbeddingNoiseAugmentation(dim)(torch.zeros(1, 4), 0, noise)


def test_unclip_vector_weights_by_strength_and_merges_several_images() -> None:
    dim, seed = 8, 123
    augmentation = uc.EmbeddingNoiseAugmentation(dim)
    first, second = torch.randn(2, 1, dim, generator=torch.Generator().manual_seed(3))
    noise = torch.randn((1, dim), generator=torch.manual_seed(seed))  # what ComfyUI draws for this seed

    one = uc.unclip_vector([(first, 1.0, 0.2)], augmentation, seed=seed)
    assert one.shape == (1, 2 * dim)
    assert torch.equal(one, augmentation(first, 200, noise))
    assert torch.allclose(uc.unclip_vector([(first, 2.5, 0.2)], augmentation, seed=seed), 2.5 * one)

    two = uc.unclip_vector([(first, 1.5, 0.0), (second, 0.5, 0.3)], augmentation, seed=seed)
    total = 1.5 * augmentation(first, 0, noise) + 0.5 * augmentation(second, 300, noise)
    assert torch.allclose(two, augmentation(total[:, :dim], uc.noise_level(0.05), noise), atol=1e-6)
    # A batch of two images is two conditions of one image each.
    batch = uc.unclip_vector([(torch.cat([first, second]), 1.0, 0.1)], augmentation, seed=seed)
    pair = uc.unclip_vector([(first, 1.0, 0.1), (second, 1.0, 0.1)], augmentation, seed=seed)
    assert torch.equal(batch, pair)
    assert not torch.allclose(batch, uc.unclip_vector([(torch.cat([first, second]), 1.0, 0.1)], augmentation,
                                                      seed=seed + 1))
    assert uc.unclip_adm_dim(2048) == 1024 and uc.unclip_adm_dim(1536) == 768


def test_an_unclip_unet_without_text_weights_is_told_from_sdxl_by_its_context() -> None:
    from sgm.io.state_dict import UNET_PREFIX, detect_family

    def unet(context: int, adm: int) -> dict[str, torch.Tensor]:
        return {UNET_PREFIX + "label_emb.0.0.weight": torch.empty(320, adm, device="meta"),
                UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                    torch.empty(320, context, device="meta")}

    assert detect_family(unet(1024, 2048), {}) == "sd2"  # SD 2.1 unCLIP-H
    assert detect_family(unet(1024, 1536), {}) == "sd2"  # unCLIP-L
    assert detect_family(unet(2048, 2816), {}) == "sdxl"
    assert detect_family(unet(1280, 2560), {}) == "sdxl-refiner"
