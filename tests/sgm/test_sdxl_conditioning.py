"""SDXL conditioning against diffusers' StableDiffusionXL(Img2Img)Pipeline at reduced width.

The pipelines are built from the same random text encoders (plus a tiny UNet whose
``add_time_proj`` builds diffusers' own vector); our side goes through the single-file
path: convert -> build_conditioner -> encode_text -> sdxl_vector.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sgm.io.convert_text import text_diffusers_to_original
from sgm.text.sdxl_conditioning import fourier_embedding, sdxl_refiner_vector, sdxl_vector
from sgm.text.encoders import build_conditioner
from sgm.text.tokenizer import BPE_FILE_NAME, ClipTokenizer

MERGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "clip" / BPE_FILE_NAME
WIDTH, LAYERS, PROJECTION = 128, 3, 96
PROMPTS = ["a castle on a hill at sunset, highly detailed", "🐱 Café & bar"]
NEGATIVE = ["blurry", ""]


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def test_fourier_embedding_closed_form() -> None:
    values = torch.tensor([[1024.0, 0.0]])
    emb = fourier_embedding(values)  # (1, 512): per value [cos(v f), sin(v f)]
    assert emb.shape == (1, 512)
    f = math.exp(-math.log(10000) * 5 / 128)
    # fp32 like sgm and diffusers: an argument of ~700 rad carries ~5e-5 rad of rounding.
    assert emb[0, 5].item() == pytest.approx(math.cos(1024 * f), abs=2e-4)
    assert emb[0, 128 + 5].item() == pytest.approx(math.sin(1024 * f), abs=2e-4)
    assert torch.equal(emb[0, 256:384], torch.ones(128)) and torch.equal(emb[0, 384:], torch.zeros(128))


def test_vector_sizes_at_full_width() -> None:
    pooled = torch.randn(2, 1280)
    y = sdxl_vector(pooled, original_size=(1024, 768), crop_top_left=(0, 0), target_size=(1024, 768))
    assert y.shape == (2, 2816) and torch.equal(y[:, :1280], pooled)
    y_refiner = sdxl_refiner_vector(pooled, original_size=(1024, 1024), aesthetic_score=2.5)
    assert y_refiner.shape == (2, 2560)
    # Height comes first (sgm's original_size_as_tuple order): swapping h and w changes y.
    swapped = sdxl_vector(pooled, original_size=(768, 1024), target_size=(1024, 768))
    assert not torch.allclose(swapped, y)
    with pytest.raises(ValueError, match="pooled"):
        sdxl_vector(torch.randn(1280), original_size=(1, 1), target_size=(1, 1))


diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def make_text_model(seed: int, *, act: str, projection: int | None = None):
    config = transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
        num_attention_heads=WIDTH // 64, max_position_embeddings=77, hidden_act=act,
        projection_dim=projection or WIDTH, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    torch.manual_seed(seed)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(config).eval()


def make_unet(vector_dim: int):
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=WIDTH, attention_head_dim=4, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=vector_dim,
    ).eval()


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory):
    if not MERGES.is_file():
        pytest.skip(f"CLIP merges test data missing: expected {MERGES}")
    ours = ClipTokenizer.from_bpe_file(MERGES)
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "vocab.json").write_text(json.dumps(ours.vocab), encoding="utf-8")
    merges = sorted(ours.ranks, key=ours.ranks.__getitem__)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    reference = transformers.CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    reference_2 = transformers.CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, pad_token="!")
    return ours, reference, reference_2


@torch.no_grad()
def test_sdxl_matches_diffusers_pipeline(tokenizers) -> None:
    ours_tok, tok, tok_2 = tokenizers
    te1, te2 = make_text_model(10, act="quick_gelu"), make_text_model(11, act="gelu", projection=PROJECTION)
    unet = make_unet(PROJECTION + 6 * 256)
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=None, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok_2, unet=unet,
        scheduler=None, force_zeros_for_empty_prompt=False, add_watermarker=False,
    )
    embeds, negative_embeds, pooled_ref, negative_pooled_ref = pipe.encode_prompt(
        PROMPTS, device=torch.device("cpu"), num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt=NEGATIVE,
    )
    sd = text_diffusers_to_original("sdxl", te1.state_dict(), te2.state_dict())
    cond = build_conditioner(sd, "sdxl", {}, model_path=None, device="cpu", dtype=torch.float32, tokenizer=ours_tok)
    assert cond is not None
    context, pooled = cond.encode_text(PROMPTS)
    negative, negative_pooled = cond.encode_text(NEGATIVE)
    assert context.shape == embeds.shape == (2, 77, 2 * WIDTH)
    assert relative_error(context, embeds) < 1e-4 and relative_error(negative, negative_embeds) < 1e-4
    assert pooled is not None and negative_pooled is not None
    assert relative_error(pooled, pooled_ref) < 1e-4 and relative_error(negative_pooled, negative_pooled_ref) < 1e-4
    # diffusers' clip_skip counts layers skipped beyond the penultimate: its 1 is our 3.
    skipped_ref = pipe.encode_prompt(PROMPTS, device=torch.device("cpu"), do_classifier_free_guidance=False,
                                     clip_skip=1)[0]
    skipped, _ = cond.encode_text(PROMPTS, clip_skip=3)
    assert relative_error(skipped, skipped_ref) < 1e-4

    # The vector y: diffusers builds it inside the UNet from time ids and its add_time_proj.
    original, crop, target = (640, 512), (16, 32), (768, 512)
    time_ids = pipe._get_add_time_ids(original, crop, target, dtype=torch.float32,
                                      text_encoder_projection_dim=PROJECTION).repeat(2, 1)  # (B, 6)
    time_embeds = unet.add_time_proj(time_ids.flatten()).reshape(2, -1)  # (B, 6 * 256)
    y_ref = torch.cat([pooled_ref, time_embeds], dim=-1)
    y = sdxl_vector(pooled, original_size=original, crop_top_left=crop, target_size=target)
    assert y.shape == (2, PROJECTION + 1536)
    assert relative_error(y, y_ref) < 1e-4
    # ... and what the UNet makes of it through its own path.
    aug_ref = unet.get_aug_embed(torch.zeros(2, 1), embeds, {"text_embeds": pooled_ref, "time_ids": time_ids})
    assert relative_error(unet.add_embedding(y), aug_ref) < 1e-4


@torch.no_grad()
def test_refiner_matches_diffusers_img2img_pipeline(tokenizers) -> None:
    ours_tok, _, tok_2 = tokenizers
    te2 = make_text_model(12, act="gelu", projection=PROJECTION)
    unet = make_unet(PROJECTION + 5 * 256)
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=None, text_encoder=None, text_encoder_2=te2, tokenizer=None, tokenizer_2=tok_2, unet=unet,
        scheduler=None, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False,
    )
    embeds, _, pooled_ref, _ = pipe.encode_prompt(PROMPTS, device=torch.device("cpu"), do_classifier_free_guidance=False)
    sd = text_diffusers_to_original("sdxl-refiner", None, te2.state_dict())
    cond = build_conditioner(sd, "sdxl-refiner", {}, model_path=None, device="cpu", dtype=torch.float32,
                             tokenizer=ours_tok)
    assert cond is not None
    context, pooled = cond.encode_text(PROMPTS)
    assert context.shape == embeds.shape == (2, 77, WIDTH)
    assert relative_error(context, embeds) < 1e-4
    assert pooled is not None and relative_error(pooled, pooled_ref) < 1e-4
    original, crop = (1024, 768), (0, 8)
    time_ids, _ = pipe._get_add_time_ids(
        original, crop, (1024, 768), 6.0, 2.5, original, crop, (1024, 768),
        dtype=torch.float32, text_encoder_projection_dim=PROJECTION,
    )
    time_embeds = unet.add_time_proj(time_ids.repeat(2, 1).flatten()).reshape(2, -1)  # (B, 5 * 256)
    y = sdxl_refiner_vector(pooled, original_size=original, crop_top_left=crop, aesthetic_score=6.0)
    assert relative_error(y, torch.cat([pooled_ref, time_embeds], dim=-1)) < 1e-4


@torch.no_grad()
def test_encode_condition_builds_the_family_vector(tokenizers) -> None:
    from sgm.text.encoders import encode_condition

    ours_tok = tokenizers[0]
    te1, te2 = make_text_model(20, act="quick_gelu"), make_text_model(21, act="gelu", projection=PROJECTION)
    sdxl = build_conditioner(text_diffusers_to_original("sdxl", te1.state_dict(), te2.state_dict()), "sdxl", {},
                             model_path=None, device="cpu", dtype=torch.float32, tokenizer=ours_tok)
    condition = encode_condition(sdxl, "a (cat:1.2)", size=(768, 1024), crop_top_left=(8, 0))
    context, pooled = sdxl.encode_text(["a (cat:1.2)"])
    assert torch.equal(condition.context, context) and torch.equal(condition.pooled, pooled)
    expected = sdxl_vector(pooled, original_size=(768, 1024), crop_top_left=(8, 0), target_size=(768, 1024))
    assert condition.y is not None and torch.equal(condition.y, expected)
    assert condition.extra["prompt"] == "a (cat:1.2)"
    with pytest.raises(ValueError, match="size"):
        encode_condition(sdxl, "a cat")
    refiner = build_conditioner(text_diffusers_to_original("sdxl-refiner", None, te2.state_dict()), "sdxl-refiner",
                                {}, model_path=None, device="cpu", dtype=torch.float32, tokenizer=ours_tok)
    low = encode_condition(refiner, "a cat", size=(512, 512), aesthetic_score=2.5)
    assert low.y is not None and low.y.shape == (1, PROJECTION + 5 * 256)
    assert torch.equal(low.y, sdxl_refiner_vector(low.pooled, original_size=(512, 512), aesthetic_score=2.5))
    sd1 = build_conditioner(text_diffusers_to_original("sd1", te1.state_dict(), None), "sd1", {},
                            model_path=None, device="cpu", dtype=torch.float32, tokenizer=ours_tok)
    plain = encode_condition(sd1, "a cat")
    assert plain.y is None and plain.pooled is None and plain.context.shape == (1, 77, WIDTH)
