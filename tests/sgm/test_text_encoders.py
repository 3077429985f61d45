"""Our text encoders against transformers' CLIPTextModel(WithProjection) at reduced width.

Random weights, fp32; the towers are converted with sgm.io.convert_text and loaded through
sgm.text.encoders.build_conditioner, i.e. the path a single-file checkpoint takes.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from sgm.io.convert_text import text_diffusers_to_original, text_original_to_diffusers, with_text_model_prefix
from sgm.text.encoders import build_conditioner
from sgm.text.tokenizer import BPE_FILE_NAME, ClipTokenizer

transformers = pytest.importorskip("transformers")

MERGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "clip" / BPE_FILE_NAME
pytestmark = pytest.mark.skipif(
    not MERGES.is_file(), reason=f"CLIP merges test data missing: expected {MERGES}"
)

PROMPTS = ["a photo of an astronaut riding a horse", "Café crème, 🐱 & 1234!"]
WIDTH, LAYERS = 128, 3  # 2 heads of 64, like every released CLIP text tower's head size


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def make_text_model(seed: int, *, act: str, projection: int | None = None, layers: int = LAYERS):
    config = transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=layers,
        num_attention_heads=WIDTH // 64, max_position_embeddings=77, hidden_act=act,
        projection_dim=projection or WIDTH, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    torch.manual_seed(seed)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    model = cls(config).eval()
    with torch.no_grad():  # random LayerNorm affine too, so a missing/misplaced norm shows
        for name, p in model.named_parameters():
            if "layer_norm" in name:  # (LayerNorm weights start at 1, biases at 0)
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer.from_bpe_file(MERGES)


def reference_ids(tok: ClipTokenizer, prompts: list[str], pad: int) -> torch.Tensor:
    return torch.tensor([tok.window(tok.encode(p), pad_id=pad) for p in prompts])  # (B, 77)


@torch.no_grad()
def test_sd1_clip_l_matches_transformers(tokenizer: ClipTokenizer) -> None:
    te = make_text_model(0, act="quick_gelu")
    sd = text_diffusers_to_original("sd1", te.state_dict(), None)
    assert "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in sd
    cond = build_conditioner(sd, "sd1", {}, model_path=None, device="cpu", dtype=torch.float32, tokenizer=tokenizer)
    assert cond is not None and cond.family == "sd1" and len(cond.modules) == 1
    out = te(reference_ids(tokenizer, PROMPTS, tokenizer.eos_id), output_hidden_states=True)
    context, pooled = cond.encode_text(PROMPTS)
    assert context.shape == (2, 77, WIDTH) and pooled is None
    assert relative_error(context, out.last_hidden_state) < 1e-4
    # clip_skip=2 = penultimate + final layer norm (diffusers' clip_skip=1).
    skipped, _ = cond.encode_text(PROMPTS, clip_skip=2)
    reference = te.final_layer_norm(out.hidden_states[-2])
    assert relative_error(skipped, reference) < 1e-4
    assert relative_error(skipped, context) > 1e-2  # the skip really changes the layer
    with pytest.raises(ValueError, match="clip_skip"):
        cond.encode_text(PROMPTS, clip_skip=LAYERS + 1)


@torch.no_grad()
def test_sd2_diffusers_folder_keeps_its_conditioning(tokenizer: ClipTokenizer) -> None:
    # diffusers' SD 2.x text encoder: OpenCLIP-H without its last layer, so its final
    # (normed) output *is* the penultimate conditioning. Converted, it must stay so.
    te = make_text_model(1, act="gelu")
    sd = text_diffusers_to_original("sd2-v", te.state_dict(), None)
    assert f"cond_stage_model.model.transformer.resblocks.{LAYERS}.attn.in_proj_weight" in sd  # identity layer
    assert sd["cond_stage_model.model.positional_embedding"].shape == (77, WIDTH)
    cond = build_conditioner(sd, "sd2-v", {}, model_path=None, device="cpu", dtype=torch.float32, tokenizer=tokenizer)
    assert cond is not None
    out = te(reference_ids(tokenizer, PROMPTS, 0))  # OpenCLIP pads with 0
    context, pooled = cond.encode_text(PROMPTS)
    assert pooled is None
    assert relative_error(context, out.last_hidden_state) < 1e-4
    te_back, te2_back = text_original_to_diffusers("sd2-v", sd)
    assert te2_back is None and te_back is not None
    reference = with_text_model_prefix(te.state_dict())
    reference.pop("text_model.embeddings.position_ids", None)
    assert te_back.keys() == reference.keys()
    assert all(torch.equal(te_back[k], reference[k]) for k in reference)


@torch.no_grad()
def test_sdxl_towers_hidden_penultimate_and_pooled(tokenizer: ClipTokenizer) -> None:
    te1 = make_text_model(2, act="quick_gelu")
    te2 = make_text_model(3, act="gelu", projection=96)
    sd = text_diffusers_to_original("sdxl", te1.state_dict(), te2.state_dict())
    assert sd["conditioner.embedders.1.model.text_projection"].shape == (WIDTH, 96)
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in sd
    cond = build_conditioner(sd, "sdxl", {}, model_path=None, device="cpu", dtype=torch.float32, tokenizer=tokenizer)
    assert cond is not None and len(cond.modules) == 2
    out1 = te1(reference_ids(tokenizer, PROMPTS, tokenizer.eos_id), output_hidden_states=True)
    out2 = te2(reference_ids(tokenizer, PROMPTS, 0), output_hidden_states=True)
    context, pooled = cond.encode_text(PROMPTS)
    assert context.shape == (2, 77, 2 * WIDTH) and pooled is not None and pooled.shape == (2, 96)
    assert relative_error(context[..., :WIDTH], out1.hidden_states[-2]) < 1e-4
    assert relative_error(context[..., WIDTH:], out2.hidden_states[-2]) < 1e-4
    assert relative_error(pooled, out2.text_embeds) < 1e-4
    # Every hidden state of each tower, through clip_skip.
    for skip in range(1, LAYERS + 1):
        ctx, _ = cond.encode_text(PROMPTS, clip_skip=skip)
        assert relative_error(ctx[..., WIDTH:], out2.hidden_states[-skip]) < 1e-4
    # Round trip to diffusers keys is exact.
    back1, back2 = text_original_to_diffusers("sdxl", sd)
    for back, te in ((back1, te1), (back2, te2)):
        reference = {k: v for k, v in with_text_model_prefix(te.state_dict()).items() if k != "text_model.embeddings.position_ids"}
        assert back is not None and back.keys() == reference.keys()
        assert all(torch.equal(back[k], reference[k]) for k in reference)


@torch.no_grad()
def test_refiner_is_one_bigg_tower(tokenizer: ClipTokenizer) -> None:
    te2 = make_text_model(4, act="gelu", projection=64)
    sd = text_diffusers_to_original("sdxl-refiner", None, te2.state_dict())
    assert all(k.startswith("conditioner.embedders.0.model.") for k in sd)
    cond = build_conditioner(sd, "sdxl-refiner", {}, model_path=None, device="cpu", dtype=torch.float32, tokenizer=tokenizer)
    assert cond is not None
    out = te2(reference_ids(tokenizer, PROMPTS, 0), output_hidden_states=True)
    context, pooled = cond.encode_text(PROMPTS)
    assert relative_error(context, out.hidden_states[-2]) < 1e-4
    assert pooled is not None and relative_error(pooled, out.text_embeds) < 1e-4


@pytest.fixture(scope="module")
def sd1(tokenizer: ClipTokenizer):
    te = make_text_model(5, act="quick_gelu")
    sd = text_diffusers_to_original("sd1", te.state_dict(), None)
    return build_conditioner(sd, "sd1", {}, model_path=None, device="cpu", dtype=torch.float32, tokenizer=tokenizer)


@torch.no_grad()
def test_long_prompts_are_chunked_and_batches_padded(sd1, tokenizer: ClipTokenizer) -> None:
    words = [f"w{i}" for i in range(40)]  # "w" + one token per digit: w0..w9 2 tokens, w10.. 3
    ids = tokenizer.encode(" ".join(words))
    assert len(ids) == 10 * 2 + 30 * 3
    context, _ = sd1.encode_text([" ".join(words), "short"])
    assert context.shape == (2, 154, WIDTH)
    # 74 tokens (w0..w27) fill the first window; w28 would straddle the boundary, so it
    # starts the second window whole (ComfyUI's rule) and the first ends early.
    first, _ = sd1.encode_text([" ".join(words[:28])])
    assert torch.allclose(context[0, :77], first[0], atol=1e-5)
    text_model = sd1.modules[0]
    window = torch.tensor([tokenizer.window(ids[74:], pad_id=tokenizer.eos_id)])
    second, _ = text_model(text_model.embed_tokens(window), hidden_layer=LAYERS, final_norm=True)
    assert torch.allclose(context[0, 77:], second[0], atol=1e-5)
    empty, _ = sd1.encode_text([""])
    assert torch.allclose(context[1, 77:], empty[0], atol=1e-5)  # padded with the empty prompt


@torch.no_grad()
def test_weights_move_tokens_away_from_the_empty_prompt(sd1, tokenizer: ClipTokenizer) -> None:
    plain, _ = sd1.encode_text(["a red car"])
    weighted, _ = sd1.encode_text(["a (red:1.5) car"])
    empty, _ = sd1.encode_text([""])
    red = 2  # [start, a, red, car, end]
    expected = empty[0, red] + 1.5 * (plain[0, red] - empty[0, red])
    assert torch.allclose(weighted[0, red], expected, atol=1e-5)
    others = [i for i in range(77) if i != red]
    assert torch.allclose(weighted[0, others], plain[0, others], atol=1e-5)
    batch, _ = sd1.encode_text(["a red car", "a (red:1.5) car"])  # weighting is per prompt
    assert torch.allclose(batch[0], plain[0], atol=1e-5) and torch.allclose(batch[1], weighted[0], atol=1e-5)


@torch.no_grad()
def test_textual_inversion_vectors_replace_tokens(sd1, tokenizer: ClipTokenizer, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    text_model = sd1.modules[0]
    vectors = text_model.embed_tokens(torch.tensor([tokenizer.encode("red car")]))[0]  # (2, C)
    save_file({"emb_params": vectors.contiguous()}, str(tmp_path / "redcar.safetensors"))
    with_embedding, _ = sd1.encode_text(["a embedding:redcar, fast"], embeddings_dir=tmp_path)
    plain, _ = sd1.encode_text(["a red car, fast"])
    assert torch.allclose(with_embedding, plain, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="redcar"):
        sd1.encode_text(["embedding:nothere"], embeddings_dir=tmp_path)
    save_file({"emb_params": torch.zeros(1, 1024)}, str(tmp_path / "sd2only.safetensors"))
    with pytest.raises(ValueError, match="width"):
        sd1.encode_text(["embedding:sd2only"], embeddings_dir=tmp_path)


def test_unknown_family_uses_metadata_hook_or_explains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = {"cond_stage_model.encoder.weight": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="latentflow.text_encoder"):
        build_conditioner(tensors, "tinyshapes", {}, model_path=None, device="cpu", dtype=None)
    (tmp_path / "my_text_hook.py").write_text(
        "def build(sd, family, metadata, *, model_path, device, dtype):\n"
        "    return ('built', sorted(sd), family, metadata['x'], device)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_text_hook", None)
    with pytest.raises(ValueError, match="may not make us import code"):  # a file names a module never imported
        build_conditioner(tensors, "tinyshapes", {"latentflow.text_encoder": "my_text_hook:build"},
                          model_path=None, device="cpu", dtype=None)
    assert "my_text_hook" not in sys.modules
    importlib.import_module("my_text_hook")  # as a plugin that brings this format would have
    result = build_conditioner(
        tensors, "tinyshapes", {"latentflow.text_encoder": "my_text_hook:build", "x": "1"},
        model_path=None, device="cpu", dtype=None,
    )
    assert result == ("built", ["cond_stage_model.encoder.weight"], "tinyshapes", "1", "cpu")
    sys.modules.pop("my_text_hook", None)
    assert build_conditioner({}, "sd1", {}, model_path=None, device="cpu", dtype=None) is None


def test_wrong_layout_is_reported_by_name() -> None:
    te = make_text_model(6, act="quick_gelu", layers=1)
    sd = text_diffusers_to_original("sd1", te.state_dict(), None)
    sd.pop("cond_stage_model.transformer.text_model.final_layer_norm.weight")
    with pytest.raises(KeyError, match="final_layer_norm.weight"):
        build_conditioner(sd, "sd1", {}, model_path=None, device="cpu", dtype=None)
    with pytest.raises(KeyError, match="conditioner.embedders.1."):
        build_conditioner(text_diffusers_to_original("sdxl", te.state_dict(), None), "sdxl", {},
                          model_path=None, device="cpu", dtype=None)
    with pytest.raises(KeyError, match="token_embedding"):
        build_conditioner({"cond_stage_model.transformer.x": torch.zeros(1)}, "sd1", {},
                          model_path=None, device="cpu", dtype=None)


def test_loads_on_meta_then_assigns_without_copy(tokenizer: ClipTokenizer) -> None:
    te = make_text_model(7, act="quick_gelu", layers=1)
    sd = text_diffusers_to_original("sd1", te.state_dict(), None)
    cond = build_conditioner(sd, "sd1", {}, model_path=None, device="cpu", dtype=torch.float32, tokenizer=tokenizer)
    weight = cond.modules[0].transformer.text_model.embeddings.token_embedding.weight
    source = sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    assert weight.data_ptr() == source.data_ptr()  # the checkpoint's tensor itself
    assert not weight.requires_grad
    half = build_conditioner(sd, "sd1", {}, model_path=None, device="cpu", dtype=torch.bfloat16, tokenizer=tokenizer)
    context, _ = half.encode_text(["a cat"])
    assert context.dtype == torch.bfloat16
    assert source.dtype == torch.float32  # input untouched


@torch.no_grad()
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_load_checkpoint_encodes_with_tokenizer_folder_beside_it(
    family: str, tokenizer: ClipTokenizer, tmp_path: Path
) -> None:
    # The public path: a single file (our save path) + a diffusers tokenizer/ folder beside it.
    from sgm.io.checkpoints import load_checkpoint
    from tests.sgm.model_factories import write_tiny_checkpoint

    te1 = make_text_model(8, act="quick_gelu", layers=2)
    te2 = make_text_model(9, act="gelu", projection=64, layers=2) if family == "sdxl" else None
    text_sd = text_diffusers_to_original(family, te1.state_dict(), None if te2 is None else te2.state_dict())
    path = write_tiny_checkpoint(tmp_path / f"{family}.safetensors", family, text_state_dict=text_sd)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.json").write_text(json.dumps(tokenizer.vocab), encoding="utf-8")
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.__getitem__)
    (tmp_path / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    checkpoint = load_checkpoint(path, device="cpu", dtype=torch.float32)
    assert checkpoint.family == family and len(checkpoint.text_encoders) == (2 if te2 is not None else 1)
    context, pooled = checkpoint.encode_text(PROMPTS)
    out1 = te1(reference_ids(tokenizer, PROMPTS, tokenizer.eos_id), output_hidden_states=True)
    if te2 is None:
        assert pooled is None and relative_error(context, out1.last_hidden_state) < 1e-4
    else:
        out2 = te2(reference_ids(tokenizer, PROMPTS, 0), output_hidden_states=True)
        assert relative_error(context, torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], -1)) < 1e-4
        assert pooled is not None and relative_error(pooled, out2.text_embeds) < 1e-4


@pytest.fixture(scope="module")
def hf_tokenizer_folder(tokenizer: ClipTokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf_tokenizer")
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocab), encoding="utf-8")
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.__getitem__)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    return folder


@torch.no_grad()
@pytest.mark.parametrize("family", ["sd1", "sd2-v"])
def test_matches_diffusers_stable_diffusion_pipeline(
    family: str, tokenizer: ClipTokenizer, hf_tokenizer_folder: Path
) -> None:
    diffusers = pytest.importorskip("diffusers")
    sd2 = family.startswith("sd2")
    te = make_text_model(13, act="gelu" if sd2 else "quick_gelu")
    pad = {"pad_token": "!"} if sd2 else {}  # SD 2.x folders pad with "!" = id 0, as OpenCLIP does
    tok = transformers.CLIPTokenizer.from_pretrained(str(hf_tokenizer_folder), model_max_length=77, **pad)
    pipe = diffusers.StableDiffusionPipeline(
        vae=None, text_encoder=te, tokenizer=tok, unet=None, scheduler=None, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    # A known diffusers quirk: with pad_token "!" a literal "!" in a prompt becomes the pad id 0
    # instead of BPE "!</w>" (256) as in OpenCLIP, which SD 2.x was trained with. We follow
    # OpenCLIP, so the SD 2.x prompts here avoid "!".
    prompts = [p.replace("!", "?") for p in PROMPTS] if sd2 else PROMPTS
    embeds, negative_embeds = pipe.encode_prompt(
        prompts, torch.device("cpu"), 1, True, negative_prompt=["", "ugly, blurry"]
    )
    cond = build_conditioner(text_diffusers_to_original(family, te.state_dict(), None), family, {},
                             model_path=None, device="cpu", dtype=torch.float32, tokenizer=tokenizer)
    context, _ = cond.encode_text(prompts)
    negative, _ = cond.encode_text(["", "ugly, blurry"])
    assert relative_error(context, embeds) < 1e-4 and relative_error(negative, negative_embeds) < 1e-4
    # (diffusers' SD clip_skip path reads CLIPTextModel.text_model, which transformers 5 removed;
    # test_sd1_clip_l_matches_transformers checks clip_skip against the hidden states instead.)


@torch.no_grad()
def test_sdxl_embedding_gives_each_tower_its_own_vectors(tokenizer: ClipTokenizer, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    te1 = make_text_model(14, act="quick_gelu", layers=2)
    te2 = make_text_model(15, act="gelu", projection=64, layers=2)
    sd = text_diffusers_to_original("sdxl", te1.state_dict(), te2.state_dict())
    cond = build_conditioner(sd, "sdxl", {}, model_path=None, device="cpu", dtype=torch.float32, tokenizer=tokenizer)
    ids = torch.tensor([tokenizer.encode("red car")])
    # Both towers are 128 wide here, so only the clip_l / clip_g keys can tell them apart.
    vectors = {"clip_l": cond.modules[0].embed_tokens(ids)[0], "clip_g": cond.modules[1].embed_tokens(ids)[0]}
    save_file({k: v.contiguous() for k, v in vectors.items()}, str(tmp_path / "rc.safetensors"))
    context, pooled = cond.encode_text(["a (embedding:rc:1.2), fast"], embeddings_dir=tmp_path)
    reference, reference_pooled = cond.encode_text(["a (red car:1.2), fast"])
    assert torch.allclose(context, reference, atol=1e-5) and torch.allclose(pooled, reference_pooled, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_converted_folder_loads_in_transformers_with_our_config(
    family: str, tokenizer: ClipTokenizer, tmp_path: Path
) -> None:
    # single file -> diffusers text_encoder(_2)/ (weights + config.json) -> transformers
    # from_pretrained: the conditioning must be what our loader computes from the file.
    from safetensors.torch import save_file

    from sgm.io.convert_text import diffusers_text_config

    te1 = make_text_model(16, act="gelu" if family == "sd2" else "quick_gelu", layers=2)
    te2 = make_text_model(17, act="gelu", projection=64, layers=2) if family == "sdxl" else None
    original = text_diffusers_to_original(family, te1.state_dict(), None if te2 is None else te2.state_dict())
    cond = build_conditioner(original, family, {}, model_path=None, device="cpu", dtype=torch.float32, tokenizer=tokenizer)
    context, pooled = cond.encode_text(PROMPTS)
    loaded = []
    for index, part in enumerate(text_original_to_diffusers(family, original)):
        if part is None:
            continue
        folder = tmp_path / f"text_encoder_{index}"
        folder.mkdir()
        save_file(part, str(folder / "model.safetensors"))
        config = diffusers_text_config(family, part, second=index == 1)
        (folder / "config.json").write_text(json.dumps(config))
        cls = getattr(transformers, config["architectures"][0])
        loaded.append(cls.from_pretrained(str(folder)).eval())
    if family == "sdxl":
        out1 = loaded[0](reference_ids(tokenizer, PROMPTS, tokenizer.eos_id), output_hidden_states=True)
        out2 = loaded[1](reference_ids(tokenizer, PROMPTS, 0), output_hidden_states=True)
        reference = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        assert relative_error(pooled, out2.text_embeds) < 1e-4
    else:  # SD 1.x / 2.x diffusers folders condition on the last (normed) output
        pad = tokenizer.eos_id if family == "sd1" else 0
        reference = loaded[0](reference_ids(tokenizer, PROMPTS, pad)).last_hidden_state
    assert relative_error(context, reference) < 1e-4


def test_diffusers_text_config_of_a_narrow_tower_has_at_least_one_head() -> None:
    from sgm.io.convert_text import diffusers_text_config

    def tower(width: int) -> dict[str, torch.Tensor]:
        return {"text_model.embeddings.token_embedding.weight": torch.zeros(10, width),
                "text_model.embeddings.position_embedding.weight": torch.zeros(77, width),
                "text_model.encoder.layers.0.mlp.fc1.weight": torch.zeros(4 * width, width)}

    assert diffusers_text_config("sd1", tower(32), second=False)["num_attention_heads"] == 1
    assert diffusers_text_config("sd1", tower(768), second=False)["num_attention_heads"] == 12
