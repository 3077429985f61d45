"""ComfyUI's model-merging, saving, hypernetwork and InstructPix2Pix nodes (nodes.comfy.model_merge):
their interfaces are ComfyUI 0.3.64's, and ComfyUI prompts that merge two tiny checkpoints, sample
with the merge and save it as a checkpoint run through the engine; the saved file loads back to the
merged weights and samples the same picture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from tests.nodes.test_comfy_interface import check_interface
from tests.reference import comfyui_object_info

NAMES = ("ModelMergeSimple", "ModelMergeBlocks", "ModelMergeSubtract", "ModelMergeAdd", "CLIPMergeSimple",
         "CLIPMergeSubtract", "CLIPMergeAdd", "ModelMergeSD1", "ModelMergeSDXL", "CheckpointSave", "CLIPSave",
         "ModelSave", "VAESave", "HypernetworkLoader", "InstructPixToPixConditioning")
REFERENCE = comfyui_object_info()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.workflows.model_files import write_byte_tokenizer, write_family_checkpoint

    root = tmp_path_factory.mktemp("merge-root")
    checkpoints = root / "models" / "checkpoints"
    write_byte_tokenizer(checkpoints / "tokenizer")
    write_family_checkpoint(checkpoints / "a.safetensors", "sd1", seed=0)
    write_family_checkpoint(checkpoints / "b.safetensors", "sd1", seed=7)
    write_family_checkpoint(checkpoints / "xl-a.safetensors", "sdxl", seed=1)
    write_family_checkpoint(checkpoints / "xl-b.safetensors", "sdxl", seed=2)
    return root


def context() -> Any:
    import threading

    from engine.api import NodeContext

    return NodeContext("test", threading.Event(), lambda node_id, progress: None)


def make_runtime(root: Path, output: Path) -> Runtime:
    return Runtime(Settings.for_root(root, output_dir=output, extra={"dtype": "fp32"}), device="cpu")


@pytest.mark.skipif(REFERENCE is None, reason="the ComfyUI interface spec is not available")
@pytest.mark.parametrize("name", NAMES)
def test_interface_matches_comfyui(tmp_path: Path, name: str) -> None:
    from engine.registry import NodeRegistry

    registry = NodeRegistry()
    registry.register_pack(build_nodes(make_runtime(tmp_path, tmp_path / "out")), "nodes.builtin")
    check_interface(name, REFERENCE[name], registry.object_info()[name])


def merge_prompt(model: list, clip: list, vae: list, save_checkpoint: bool) -> dict[str, Any]:
    prompt: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "3": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.4}},
        "4": {"class_type": "CLIPMergeSimple", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "ratio": 0.4}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": clip}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": model, "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["7", 0]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": vae}},
        "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "merge", "images": ["9", 0]}},
    }
    if save_checkpoint:
        prompt["11"] = {"class_type": "CheckpointSave", "inputs": {
            "model": ["3", 0], "clip": ["4", 0], "vae": ["1", 2], "filename_prefix": "checkpoints/merged"}}
    return prompt


def run(runtime: Runtime, prompt: dict[str, Any], services: dict[str, Any]) -> Any:
    from engine.cache import ResultCache
    from engine.registry import NodeRegistry
    from engine.scheduler import Executor
    from engine.validation import validate_document
    from nodes.memory import result_size

    registry = NodeRegistry()
    registry.register_pack(build_nodes(runtime), "nodes.builtin")
    executor = Executor(registry, ResultCache(64, 1 << 30, size_of=result_size),
                        services={"settings": runtime.settings, "output_dir": runtime.settings.output_dir})
    report = validate_document(prompt, registry)
    assert report.ok, report.format()
    result = executor.run(report.workflow, services={"prompt": prompt, **services})
    assert result.status == "success", result.failure and result.failure.message
    return result


def test_merge_sample_and_save_a_checkpoint_that_loads_back(root: Path, tmp_path: Path) -> None:
    from sgm.io.checkpoints import load_checkpoint

    output = tmp_path / "output"
    runtime = make_runtime(root, output)
    a = load_checkpoint(root / "models" / "checkpoints" / "a.safetensors")
    b = load_checkpoint(root / "models" / "checkpoints" / "b.safetensors")
    prompt = merge_prompt(["3", 0], ["4", 0], ["1", 2], save_checkpoint=True)
    result = run(runtime, prompt, {"extra_pnginfo": {"workflow": {"nodes": [], "links": []}}})
    (saved,) = result.outputs["11"]["checkpoints"]
    assert (saved["filename"], saved["subfolder"]) == ("merged_00001_.safetensors", "checkpoints")
    path = output / "checkpoints" / "merged_00001_.safetensors"
    merged = load_checkpoint(path)
    assert json.loads(merged.metadata["prompt"]) == prompt
    assert json.loads(merged.metadata["workflow"]) == {"nodes": [], "links": []}
    for key, value in merged.unet.state_dict().items():
        assert torch.allclose(value, 0.4 * a.unet.state_dict()[key] + 0.6 * b.unet.state_dict()[key], atol=1e-7), key
    for key, value in merged.text_encoders[0].state_dict().items():
        if value.is_floating_point():
            expected = 0.4 * a.text_encoders[0].state_dict()[key] + 0.6 * b.text_encoders[0].state_dict()[key]
            assert torch.allclose(value, expected, atol=1e-7), key
    # The saved checkpoint, loaded as a plain checkpoint, samples the same picture.
    shutil.copy(path, root / "models" / "checkpoints" / "merged.safetensors")
    again = run(make_runtime(root, tmp_path / "again"), {
        **merge_prompt(["1", 0], ["1", 1], ["1", 2], save_checkpoint=False),
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "merged.safetensors"}}}, {})
    first = np.asarray(Image.open(output / result.outputs["10"]["images"][0]["filename"]), dtype=np.int16)
    second = np.asarray(Image.open(tmp_path / "again" / again.outputs["10"]["images"][0]["filename"]), dtype=np.int16)
    assert first.std() > 3 and np.abs(first - second).max() <= 1
    # and the unmerged model makes another one
    plain = run(make_runtime(root, tmp_path / "plain"), merge_prompt(["1", 0], ["1", 1], ["1", 2], False), {})
    third = np.asarray(Image.open(tmp_path / "plain" / plain.outputs["10"]["images"][0]["filename"]), dtype=np.int16)
    assert np.abs(first - third).max() > 5


def test_merged_model_shares_weights_and_base_is_restored_after_sampling(root: Path, tmp_path: Path) -> None:
    runtime = make_runtime(root, tmp_path)
    nodes = {spec.id: spec.function for spec in build_nodes(runtime)}
    model_a, clip_a, _ = nodes["CheckpointLoaderSimple"](ckpt_name="a.safetensors")
    model_b, _, _ = nodes["CheckpointLoaderSimple"](ckpt_name="b.safetensors")
    before = {k: (v.data_ptr(), v.detach().clone()) for k, v in model_a.unet.named_parameters()}
    merged = nodes["ModelMergeSimple"](model1=model_a, model2=model_b, ratio=0.5)
    assert merged.unet is model_a.unet and model_a.loras == () and len(merged.loras) == 1
    blocks = nodes["ModelMergeSD1"](model1=model_a, model2=model_b, **{name: 1.0 for name in
                                                                    ("time_embed.", "label_emb.", "out.")},
                                    **{f"input_blocks.{i}.": 0.0 for i in range(12)},
                                    **{f"middle_block.{i}.": 1.0 for i in range(3)},
                                    **{f"output_blocks.{i}.": 1.0 for i in range(12)})
    assert {t.key.split(".")[0] for t in blocks.loras[-1].targets} == {"input_blocks"}
    positive = nodes["CLIPTextEncode"](text="a red circle", clip=clip_a)
    latent = nodes["EmptyLatentImage"](width=64, height=64, batch_size=1)
    settings = dict(seed=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal", denoise=1.0,
                    positive=positive, negative=positive, latent_image=latent, ctx=context())
    out_merged = nodes["KSampler"](model=merged, **settings).samples
    out_plain = nodes["KSampler"](model=model_a, **settings).samples
    assert not torch.allclose(out_merged, out_plain, atol=1e-4)
    after = {k: (v.data_ptr(), v) for k, v in model_a.unet.named_parameters()}
    assert all(after[k][0] == before[k][0] and torch.equal(after[k][1], before[k][1]) for k in before)
    with pytest.raises(ValueError, match="CLIPMergeSimple: clip2 has no text encoder"):
        nodes["CLIPMergeSimple"](clip1=clip_a, clip2=None, ratio=0.5)


def test_hypernetwork_loader_and_pix2pix_conditioning(root: Path, tmp_path: Path) -> None:
    from sgm.io.hypernetwork import HypernetworkPatch
    from sgm.sampling.pix2pix import CONCAT_KEY, pix2pix_concat
    from tests.sgm.test_hypernetwork import mlp_tensors
    from tests.workflows.model_files import TEXT_WIDTH

    folder = root / "models" / "hypernetworks"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({TEXT_WIDTH: [mlp_tensors(TEXT_WIDTH, 1), mlp_tensors(TEXT_WIDTH, 2)], "activation_func": "relu",
                "is_layer_norm": True}, folder / "tiny.pt")
    runtime = make_runtime(root, tmp_path)
    nodes = {spec.id: spec.function for spec in build_nodes(runtime)}
    model, clip, vae = nodes["CheckpointLoaderSimple"](ckpt_name="a.safetensors")
    hyper = nodes["HypernetworkLoader"](model=model, hypernetwork_name="tiny.pt", strength=0.8)
    (patch,) = hyper.loras
    assert patch.strength == 0.8 and isinstance(patch.targets[0], HypernetworkPatch) and hyper.unet is model.unet
    positive = nodes["CLIPTextEncode"](text="a red circle", clip=clip)
    latent = nodes["EmptyLatentImage"](width=64, height=64, batch_size=1)
    settings = dict(seed=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal", denoise=1.0,
                    positive=positive, negative=positive, latent_image=latent, ctx=context())
    assert not torch.allclose(nodes["KSampler"](model=hyper, **settings).samples,
                              nodes["KSampler"](model=model, **settings).samples, atol=1e-4)
    assert all(not m._forward_pre_hooks for m in model.unet.modules())
    # InstructPixToPixConditioning: both conditionings carry the unscaled image latent, the latent is empty
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    pos, neg, out = nodes["InstructPixToPixConditioning"](positive=positive, negative=positive, vae=vae,
                                                          pixels=image)
    encoded = nodes["VAEEncode"](pixels=image, vae=vae).samples / vae.scale_factor
    assert torch.allclose(pos[0].extra[CONCAT_KEY], encoded, atol=1e-6) and neg[0].extra[CONCAT_KEY] is \
        pos[0].extra[CONCAT_KEY]
    assert out.samples.shape == encoded.shape and not out.samples.any() and CONCAT_KEY not in positive[0].extra
    concat = pix2pix_concat(pos[0].extra[CONCAT_KEY], torch.zeros(2, 4, 8, 8))
    assert concat.shape == (2, 4, 8, 8) and torch.equal(concat[1], encoded[0])
    assert torch.equal(pix2pix_concat(None, torch.ones(1, 4, 8, 8)), torch.zeros(1, 4, 8, 8))


def test_model_save_and_vae_save_write_files_our_loaders_read(root: Path, tmp_path: Path) -> None:
    from sgm.io.checkpoints import load_unet, load_vae

    runtime = make_runtime(root, tmp_path)
    nodes = {spec.id: spec.function for spec in build_nodes(runtime)}
    model_a, _, vae = nodes["CheckpointLoaderSimple"](ckpt_name="a.safetensors")
    model_b, _, _ = nodes["CheckpointLoaderSimple"](ckpt_name="b.safetensors")
    difference = nodes["ModelMergeSubtract"](model1=model_a, model2=model_b, multiplier=1.0)
    ctx = context()
    saved = nodes["ModelSave"](model=difference, filename_prefix="diffusion_models/diff", ctx=ctx)
    assert saved.ui["checkpoints"][0]["filename"] == "diff_00001_.safetensors"
    unet = load_unet(tmp_path / "diffusion_models" / "diff_00001_.safetensors")
    for key, value in unet.state_dict().items():
        assert torch.allclose(value, model_a.unet.state_dict()[key] - model_b.unet.state_dict()[key], atol=1e-7)
    nodes["VAESave"](vae=vae, filename_prefix="vae/v", ctx=ctx)
    again = nodes["VAESave"](vae=vae, filename_prefix="vae/v", ctx=ctx)  # never overwrites: the next number
    assert again.ui["checkpoints"][0]["filename"] == "v_00002_.safetensors"
    loaded = load_vae(tmp_path / "vae" / "v_00001_.safetensors")
    assert all(torch.equal(v, vae.vae.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(ValueError, match="CheckpointSave: filename_prefix '../x' must name a file inside"):
        nodes["CheckpointSave"](model=model_a, clip=None, vae=vae, filename_prefix="../x", ctx=ctx)


@pytest.mark.parametrize("pair, files", [(("a", "b"), ("clip_l",)), (("xl-a", "xl-b"), ("clip_l", "clip_g"))])
def test_clip_save_writes_text_encoder_files_the_clip_loaders_read(root: Path, tmp_path: Path, pair: tuple,
                                                                   files: tuple) -> None:
    runtime = make_runtime(root, tmp_path)
    nodes = {spec.id: spec.function for spec in build_nodes(runtime)}
    _, clip1, _ = nodes["CheckpointLoaderSimple"](ckpt_name=f"{pair[0]}.safetensors")
    _, clip2, _ = nodes["CheckpointLoaderSimple"](ckpt_name=f"{pair[1]}.safetensors")
    merged = nodes["CLIPMergeSimple"](clip1=clip1, clip2=clip2, ratio=0.3)
    saved = nodes["CLIPSave"](clip=merged, filename_prefix=f"clip/{pair[0]}", ctx=context())
    names = [entry["filename"] for entry in saved.ui["checkpoints"]]
    assert names == [f"{pair[0]}_{name}_00001_.safetensors" for name in files]
    from tests.workflows.model_files import write_byte_tokenizer

    encoders = root / "models" / "text_encoders"
    write_byte_tokenizer(encoders / "tokenizer")
    for name in names:
        shutil.copy(tmp_path / "clip" / name, encoders / name)
    if len(names) == 1:
        loaded = nodes["CLIPLoader"](clip_name=names[0], type="stable_diffusion")
    else:
        loaded = nodes["DualCLIPLoader"](clip_name1=names[1], clip_name2=names[0], type="sdxl")
    text = "a red circle"
    ours, theirs = nodes["CLIPTextEncode"](text=text, clip=merged), nodes["CLIPTextEncode"](text=text, clip=loaded)
    plain = nodes["CLIPTextEncode"](text=text, clip=clip1)
    assert torch.allclose(ours[0].context, theirs[0].context, atol=1e-5)
    assert not torch.allclose(ours[0].context, plain[0].context, atol=1e-3)
    if len(names) == 2:
        assert torch.allclose(ours[0].pooled, theirs[0].pooled, atol=1e-5)
