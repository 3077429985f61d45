"""ComfyUI's node interface on the fixture models: each adapter gives what our own node gives,
and ComfyUI's classic SD1.5 default graph runs as an API prompt on the embedded model,
writing ComfyUI's PNG text chunks."""

from __future__ import annotations

import json
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
from engine.validation import validate_document
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from tests.workflows.model_files import CHECKPOINTS, LORAS

SD1, SDXL, EMBEDDED = CHECKPOINTS["sd1"], CHECKPOINTS["sdxl"], CHECKPOINTS["tiny-shapes"]


@pytest.fixture(scope="module")
def runtime(installation: Path) -> Runtime:
    from engine.settings import Settings

    return Runtime(Settings.for_root(installation, extra={"dtype": "fp32"}), device="cpu")


@pytest.fixture(scope="module")
def nodes(runtime: Runtime) -> dict[str, Any]:
    return {spec.id: spec.function for spec in build_nodes(runtime)}


def context() -> NodeContext:
    return NodeContext("test", threading.Event(), lambda node_id, progress: None)


def test_checkpoint_loader_simple_is_load_checkpoint(nodes: dict[str, Any]) -> None:
    model, clip, vae = nodes["CheckpointLoaderSimple"](ckpt_name=SD1)
    ours = nodes["LoadCheckpoint"](ckpt_name=SD1)
    assert model.unet is ours[0].unet and clip.conditioner is ours[1].conditioner and vae.vae is ours[2].vae


def test_checkpoint_loader_takes_prediction_and_clip_layer_from_the_config(nodes: dict[str, Any]) -> None:
    model, clip, _ = nodes["CheckpointLoader"](config_name="v2-inference-v.yaml", ckpt_name=SD1)
    assert model.model_sampling.prediction == "v" and clip.clip_skip is None
    model, clip, _ = nodes["CheckpointLoader"](config_name="v1-inference_clip_skip_2.yaml", ckpt_name=SD1)
    assert model.model_sampling.prediction == "eps" and clip.clip_skip == 2


def test_vae_encode_and_decode_are_ours(nodes: dict[str, Any]) -> None:
    _, _, vae = nodes["CheckpointLoaderSimple"](ckpt_name=SD1)
    image, _ = nodes["LoadImage"](image="example.png")
    latent = nodes["VAEEncode"](pixels=image, vae=vae)
    ours = nodes["EncodeLatent"](vae=vae, image=image)
    assert torch.equal(latent.samples, ours.samples) and latent.samples.shape == (1, 4, 8, 8)
    decoded = nodes["VAEDecode"](samples=latent, vae=vae)
    assert torch.equal(decoded, nodes["Decode"](vae=vae, latent=latent)) and decoded.shape == (1, 64, 64, 3)
    # One tile covering the image is the untiled result; the video-only inputs change nothing.
    tiled = nodes["VAEDecodeTiled"](samples=latent, vae=vae, tile_size=512, overlap=64, temporal_size=64,
                                    temporal_overlap=8)
    assert torch.allclose(tiled, decoded, atol=1e-5)
    encoded = nodes["VAEEncodeTiled"](pixels=image, vae=vae, tile_size=512, overlap=64, temporal_size=64,
                                      temporal_overlap=8)
    assert torch.allclose(encoded.samples, latent.samples, atol=1e-5)


def test_ksampler_is_sample_latent_with_the_same_seed(nodes: dict[str, Any]) -> None:
    model, clip, _ = nodes["CheckpointLoaderSimple"](ckpt_name=EMBEDDED)
    positive = nodes["CLIPTextEncode"](text="a red circle", clip=clip)
    assert torch.equal(positive[0].context, nodes["TextEncode"](clip=clip, text="a red circle")[0].context)
    negative = nodes["CLIPTextEncode"](text="", clip=clip)
    latent = nodes["EmptyLatentImage"](width=64, height=64, batch_size=1)
    settings = dict(seed=3, steps=2, cfg=4.0, sampler_name="euler", scheduler="sgm_uniform", denoise=1.0)
    out = nodes["KSampler"](model=model, positive=positive, negative=negative, latent_image=latent,
                            ctx=context(), **settings)
    ours = nodes["SampleLatent"](model=model, positive=positive, negative=negative, latent=latent,
                                 ctx=context(), **settings)
    assert torch.equal(out.samples, ours.samples) and out.samples.abs().sum() > 0
    other = nodes["KSampler"](model=model, positive=positive, negative=negative, latent_image=latent,
                              ctx=context(), **{**settings, "seed": 4})
    assert not torch.equal(other.samples, out.samples)


def test_lora_loader_strengths(nodes: dict[str, Any]) -> None:
    model, clip, _ = nodes["CheckpointLoaderSimple"](ckpt_name=SD1)
    new_model, new_clip = nodes["LoraLoader"](model=model, clip=clip, lora_name=LORAS["sd1"],
                                              strength_model=0.5, strength_clip=-2.0)
    ours_model, ours_clip = nodes["LoadLoRA"](model=model, clip=clip, lora_name=LORAS["sd1"],
                                              strength_model=0.5, strength_clip=-2.0)
    assert [p.strength for p in new_model.loras] == [0.5] and [p.strength for p in new_clip.loras] == [-2.0]
    assert [len(p.targets) for p in new_model.loras] == [len(p.targets) for p in ours_model.loras]
    assert [len(p.targets) for p in new_clip.loras] == [len(p.targets) for p in ours_clip.loras]
    assert model.loras == () and clip.loras == ()  # inputs untouched
    assert nodes["LoraLoader"](model=model, clip=clip, lora_name="not-read.safetensors",
                               strength_model=0.0, strength_clip=0.0) == (model, clip)
    (only,) = [nodes["LoraLoaderModelOnly"](model=model, lora_name=LORAS["sd1"], strength_model=1.5)]
    assert [p.strength for p in only.loras] == [1.5] and only.unet is model.unet


def test_clip_set_last_layer_is_clip_skip(nodes: dict[str, Any]) -> None:
    _, clip, _ = nodes["CheckpointLoaderSimple"](ckpt_name=SD1)
    (skipped,) = [nodes["CLIPSetLastLayer"](clip=clip, stop_at_clip_layer=-2)]
    assert skipped.clip_skip == 2 and clip.clip_skip is None


def test_clip_text_encode_sdxl_prompts_per_tower(nodes: dict[str, Any]) -> None:
    from sgm.text.sdxl_conditioning import sdxl_vector

    _, clip, _ = nodes["CheckpointLoaderSimple"](ckpt_name=SDXL)
    sizes = dict(width=1024, height=768, crop_w=8, crop_h=16, target_width=512, target_height=512)
    (same,) = nodes["CLIPTextEncodeSDXL"](clip=clip, text_g="a cat", text_l="a cat", **sizes)
    (ours,) = nodes["TextEncodeSDXL"](clip=clip, text="a cat", **sizes)
    assert torch.equal(same.context, ours.context) and torch.equal(same.y, ours.y)
    (split,) = nodes["CLIPTextEncodeSDXL"](clip=clip, text_g="a cat", text_l="a dog", **sizes)
    (dog,) = nodes["TextEncode"](clip=clip, text="a dog")
    width_l = clip.towers()[0].config.width
    assert torch.equal(split.context[..., :width_l], dog.context[..., :width_l])  # CLIP-L reads text_l
    assert torch.equal(split.context[..., width_l:], ours.context[..., width_l:])  # bigG reads text_g
    assert torch.equal(split.pooled, ours.pooled)
    expected = sdxl_vector(ours.pooled, original_size=(768, 1024), crop_top_left=(16, 8), target_size=(512, 512))
    assert torch.equal(split.y, expected)
    long_l = " ".join(["dog"] * 30)  # several 77-token windows against one: text_g's is padded
    (padded,) = nodes["CLIPTextEncodeSDXL"](clip=clip, text_g="a cat", text_l=long_l, **sizes)
    (long,) = nodes["TextEncode"](clip=clip, text=long_l)
    (empty,) = nodes["TextEncode"](clip=clip, text="")
    windows = long.context.shape[1] // 77
    assert windows > 1 and padded.context.shape[1] == long.context.shape[1]
    assert torch.equal(padded.context[..., :width_l], long.context[..., :width_l])
    assert torch.equal(padded.context[:, 77:, width_l:], empty.context[..., width_l:].repeat(1, windows - 1, 1))
    with pytest.raises(ValueError, match="CLIPTextEncodeSDXLRefiner: the CLIP input is a sdxl text encoder"):
        nodes["CLIPTextEncodeSDXLRefiner"](ascore=6.0, width=1024, height=1024, text="x", clip=clip)


def test_unet_loader_keeps_fp8_weights_in_one_byte(nodes: dict[str, Any], runtime: Runtime) -> None:
    import torch
    from safetensors.torch import save_file

    from sgm.io.checkpoints import UNET_PREFIX, read_state_dict, strip_prefix
    from sgm.nets.quant import is_quantized

    folder = Path(runtime.settings.models_dir) / "diffusion_models"
    folder.mkdir(exist_ok=True)
    tensors, _ = read_state_dict(Path(runtime.settings.models_dir) / "checkpoints" / SD1)
    save_file({k: v.contiguous() for k, v in strip_prefix(tensors, UNET_PREFIX).items()}, str(folder / "unet.safetensors"))
    plain = nodes["UNETLoader"](unet_name="unet.safetensors", weight_dtype="default")
    fast = nodes["UNETLoader"](unet_name="unet.safetensors", weight_dtype="fp8_e4m3fn_fast")
    assert not any(is_quantized(m) for m in plain.unet.modules())
    stored = [m for m in fast.unet.modules() if is_quantized(m)]
    assert stored, "fp8_e4m3fn_fast is ComfyUI's name for fp8 weights with fast matmuls: stored as fp8 here"
    assert {m.weight.dtype for m in stored} == {torch.float8_e4m3fn}


def test_clip_loaders_read_the_family_from_the_file(nodes: dict[str, Any], runtime: Runtime) -> None:
    from safetensors.torch import save_file

    from sgm.io.checkpoints import read_state_dict
    from sgm.io.convert_text import text_original_to_diffusers
    from tests.workflows.model_files import write_byte_tokenizer

    folder = Path(runtime.settings.models_dir) / "text_encoders"
    tensors, _ = read_state_dict(Path(runtime.settings.models_dir) / "checkpoints" / SDXL)
    towers = text_original_to_diffusers("sdxl", tensors)  # transformers layout, as ComfyUI's clip_l / clip_g
    for tower, name in zip(towers, ("comfy-clip-l.safetensors", "comfy-clip-g.safetensors")):
        save_file({k: v.contiguous() for k, v in tower.items()}, str(folder / name))
    write_byte_tokenizer(folder / "tokenizer")
    (single,) = [nodes["CLIPLoader"](clip_name="comfy-clip-l.safetensors", type="stable_diffusion")]
    assert single.family == "sd1"
    (dual,) = [nodes["DualCLIPLoader"](clip_name1="comfy-clip-g.safetensors", clip_name2="comfy-clip-l.safetensors",
                                       type="sdxl", device="default")]
    assert dual.family == "sdxl"  # given bigG first: told apart by layout, not order
    _, clip, _ = nodes["CheckpointLoaderSimple"](ckpt_name=SDXL)
    text = "a red circle"
    assert torch.equal(nodes["CLIPTextEncode"](text=text, clip=dual)[0].context,
                       nodes["CLIPTextEncode"](text=text, clip=clip)[0].context)


# --------------------------------------------------------------------------- the default graph


def default_graph_prompt(checkpoint: str) -> dict[str, Any]:
    """ComfyUI's classic default workflow as its frontend queues it (API format), with ComfyUI's
    node ids; only the checkpoint and the size are ours (the embedded model is 64x64)."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 156680208700286, "steps": 4, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a large red circle in the center on a white "
                                                                 "background", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def test_comfyui_default_graph_runs_and_writes_comfyui_png_chunks(runtime: Runtime, settings: Any) -> None:
    from engine.cache import ResultCache
    from engine.workflow import comfyui_prompt_to_document
    from nodes.memory import result_size

    registry = NodeRegistry()
    registry.register_pack(build_nodes(runtime), "nodes.builtin")
    executor = Executor(registry, ResultCache(64, 1 << 30, size_of=result_size),
                        services={"settings": settings, "output_dir": settings.output_dir})
    prompt = default_graph_prompt(EMBEDDED)
    report = validate_document(prompt, registry)
    assert report.ok, report.format()
    ui_graph = {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": [], "version": 0.4}
    # What the queue hands a run (engine.queue): the prompt as sent and the client's extra_pnginfo.
    services = {"prompt": prompt, "extra_pnginfo": {"workflow": ui_graph},
                "workflow_document": comfyui_prompt_to_document(prompt)}
    result = executor.run(report.workflow, services=services)
    assert result.status == "success", result.failure and result.failure.message
    (saved,) = result.outputs["9"]["images"]
    assert saved["filename"] == "ComfyUI_00001_.png" and saved["subfolder"] == "" and saved["type"] == "output"
    path = Path(settings.output_dir) / saved["filename"]
    with Image.open(path) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
        chunks = dict(image.text)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))
    assert json.loads(chunks["prompt"]) == prompt  # the API prompt as sent
    assert json.loads(chunks["workflow"]) == ui_graph  # the frontend's UI graph, for dropping back on it
    ours = json.loads(chunks["latentflow"])
    assert ours["nodes"]["3"]["type"] == "KSampler" and ours["nodes"]["3"]["inputs"]["latent_image"] == ["5", 0]
    assert pixels.std() > 5  # a picture, not a flat colour
    with open(path, "rb") as handle:  # ComfyUI's frontend reads tEXt chunks
        assert b"tEXtprompt\x00" in handle.read()


def test_save_image_subfolder_prefix_and_counter(runtime: Runtime, settings: Any, tmp_path: Path) -> None:
    from engine.cache import ResultCache
    from nodes.memory import result_size

    registry = NodeRegistry()
    registry.register_pack(build_nodes(runtime), "nodes.builtin")
    executor = Executor(registry, ResultCache(64, 1 << 30, size_of=result_size),
                        services={"settings": settings, "output_dir": settings.output_dir})
    folder = Path(settings.output_dir) / "runs" / "day1"
    folder.mkdir(parents=True)
    (folder / "shot_00004_.png").write_bytes(b"an earlier image")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "runs/day1/shot"}}}
    report = validate_document(prompt, registry)
    assert report.ok, report.format()
    result = executor.run(report.workflow, services={"prompt": prompt})
    assert result.status == "success", result.failure and result.failure.message
    (saved,) = result.outputs["2"]["images"]
    assert (saved["filename"], saved["subfolder"]) == ("shot_00005_.png", "runs/day1")
    with Image.open(folder / "shot_00005_.png") as image:
        assert json.loads(image.text["prompt"]) == prompt and "workflow" not in image.text


# --------------------------------------------------------------------------- issue 15: custom sampling on a model


@pytest.fixture(scope="module")
def shapes(nodes: dict[str, Any]) -> dict[str, Any]:
    model, clip, vae = nodes["CheckpointLoaderSimple"](ckpt_name=EMBEDDED)
    return dict(model=model, clip=clip, vae=vae, positive=nodes["CLIPTextEncode"](text="a red circle", clip=clip),
                negative=nodes["CLIPTextEncode"](text="", clip=clip),
                latent=nodes["EmptyLatentImage"](width=64, height=64, batch_size=1))


def test_custom_sampling_chains_are_ksampler(nodes: dict[str, Any], shapes: dict[str, Any]) -> None:
    model, positive, negative, latent = (shapes[k] for k in ("model", "positive", "negative", "latent"))
    plain = nodes["KSampler"](model=model, seed=5, steps=3, cfg=4.0, sampler_name="euler", scheduler="karras",
                              positive=positive, negative=negative, latent_image=latent, denoise=1.0, ctx=context())
    sigmas = nodes["BasicScheduler"](model=model, scheduler="karras", steps=3, denoise=1.0)
    sampler = nodes["KSamplerSelect"](sampler_name="euler")
    custom, denoised = nodes["SamplerCustom"](model=model, add_noise=True, noise_seed=5, cfg=4.0, positive=positive,
                                              negative=negative, sampler=sampler, sigmas=sigmas, latent_image=latent,
                                              ctx=context())
    assert torch.allclose(custom.samples, plain.samples, atol=1e-5)
    assert torch.allclose(denoised.samples, custom.samples, atol=1e-4)  # the last step ends at sigma 0
    guider = nodes["CFGGuider"](model=model, positive=positive, negative=negative, cfg=4.0)
    advanced, _ = nodes["SamplerCustomAdvanced"](noise=nodes["RandomNoise"](noise_seed=5), guider=guider,
                                                 sampler=sampler, sigmas=sigmas, latent_image=latent, ctx=context())
    assert torch.allclose(advanced.samples, plain.samples, atol=1e-5)
    # DualCFG with the same prompt twice is CFG at cfg_cond2_negative, in either style
    dual = nodes["DualCFGGuider"](model=model, cond1=positive, cond2=positive, negative=negative, cfg_conds=7.0,
                                  cfg_cond2_negative=4.0, style="nested")
    dual_out, _ = nodes["SamplerCustomAdvanced"](noise=nodes["RandomNoise"](noise_seed=5), guider=dual,
                                                 sampler=sampler, sigmas=sigmas, latent_image=latent, ctx=context())
    assert torch.allclose(dual_out.samples, plain.samples, atol=1e-4)
    # one prompt over the whole range is the prompt
    ranged = nodes["ConditioningSetTimestepRange"](conditioning=positive, start=0.0, end=1.0)
    ranged_out = nodes["KSampler"](model=model, seed=5, steps=3, cfg=4.0, sampler_name="euler", scheduler="karras",
                                   positive=ranged, negative=negative, latent_image=latent, denoise=1.0, ctx=context())
    assert torch.allclose(ranged_out.samples, plain.samples, atol=1e-5)
    basic, _ = nodes["SamplerCustomAdvanced"](noise=nodes["RandomNoise"](noise_seed=5),
                                              guider=nodes["BasicGuider"](model=model, conditioning=positive),
                                              sampler=sampler, sigmas=sigmas, latent_image=latent, ctx=context())
    no_cfg = nodes["KSampler"](model=model, seed=5, steps=3, cfg=1.0, sampler_name="euler", scheduler="karras",
                               positive=positive, negative=negative, latent_image=latent, denoise=1.0, ctx=context())
    assert torch.allclose(basic.samples, no_cfg.samples, atol=1e-5)


def test_ksampler_advanced_two_halves_are_one_run(nodes: dict[str, Any], shapes: dict[str, Any]) -> None:
    model, positive, negative, latent = (shapes[k] for k in ("model", "positive", "negative", "latent"))
    common = dict(model=model, noise_seed=9, steps=4, cfg=3.0, sampler_name="euler", scheduler="normal",
                  positive=positive, negative=negative, ctx=context())
    whole = nodes["KSamplerAdvanced"](add_noise="enable", latent_image=latent, start_at_step=0, end_at_step=10000,
                                      return_with_leftover_noise="disable", **common)
    ksampler = nodes["KSampler"](model=model, seed=9, steps=4, cfg=3.0, sampler_name="euler", scheduler="normal",
                                 positive=positive, negative=negative, latent_image=latent, denoise=1.0, ctx=context())
    assert torch.allclose(whole.samples, ksampler.samples, atol=1e-5)
    first = nodes["KSamplerAdvanced"](add_noise="enable", latent_image=latent, start_at_step=0, end_at_step=2,
                                      return_with_leftover_noise="enable", **common)
    assert first.samples.std() > whole.samples.std()  # still noisy
    second = nodes["KSamplerAdvanced"](add_noise="disable", latent_image=first, start_at_step=2, end_at_step=10000,
                                       return_with_leftover_noise="disable", **common)
    assert torch.allclose(second.samples, whole.samples, atol=1e-4)
    nothing = nodes["KSamplerAdvanced"](add_noise="enable", latent_image=first, start_at_step=4, end_at_step=10000,
                                        return_with_leftover_noise="disable", **common)
    assert torch.equal(nothing.samples, first.samples)


def test_sd_turbo_scheduler_and_model_sampling_discrete(nodes: dict[str, Any], shapes: dict[str, Any]) -> None:
    model = shapes["model"]
    sigmas = nodes["SDTurboScheduler"](model=model, steps=2, denoise=1.0)
    assert sigmas[0] == pytest.approx(model.model_sampling.sigma_max, rel=1e-5) and len(sigmas) == 3
    before = model.model_sampling
    lcm = nodes["ModelSamplingDiscrete"](model=model, sampling="lcm", zsnr=False)
    assert len(lcm.model_sampling.sigmas) == 50 and lcm.unet is model.unet and model.model_sampling is before
    v = nodes["ModelSamplingDiscrete"](model=model, sampling="v_prediction", zsnr=True)
    assert v.model_sampling.prediction == "v" and v.model_sampling.zero_terminal_snr
    with pytest.raises(ValueError, match="ModelSamplingDiscrete: zsnr .* needs v_prediction"):
        nodes["ModelSamplingDiscrete"](model=model, sampling="img_to_img", zsnr=True)
    out = nodes["KSampler"](model=lcm, seed=1, steps=2, cfg=1.0, sampler_name="euler", scheduler="sgm_uniform",
                            positive=shapes["positive"], negative=shapes["negative"], latent_image=shapes["latent"],
                            denoise=1.0, ctx=context())
    assert torch.isfinite(out.samples).all() and out.samples.abs().sum() > 0


def test_vae_encode_for_inpaint_blanks_the_mask_and_grows_it(nodes: dict[str, Any], shapes: dict[str, Any]) -> None:
    vae = shapes["vae"]
    image, mask = nodes["LoadImage"](image="example.png")  # transparent centre 16..47 = the mask
    latent = nodes["VAEEncodeForInpaint"](pixels=image, vae=vae, mask=mask, grow_mask_by=6)
    # a 6 x 6 box grows the mask (16..47) by 2 pixels up-left and 3 down-right
    assert latent.noise_mask.shape == (1, 64, 64) and latent.noise_mask[0, 14, 14] == 1
    assert latent.noise_mask[0, 13, 13] == 0 and latent.noise_mask[0, 50, 50] == 1 and latent.noise_mask[0, 51, 51] == 0
    grey = image.clone()
    grey[:, 16:48, 16:48] = 0.5
    assert torch.allclose(latent.samples, nodes["VAEEncode"](pixels=grey, vae=vae).samples, atol=1e-5)
    assert latent.masked_latent is latent.samples


def test_rescale_cfg_changes_guidance_and_zero_is_plain(nodes: dict[str, Any], shapes: dict[str, Any]) -> None:
    model, positive, negative, latent = (shapes[k] for k in ("model", "positive", "negative", "latent"))
    settings = dict(seed=4, steps=3, cfg=7.0, sampler_name="euler", scheduler="normal", denoise=1.0,
                    positive=positive, negative=negative, latent_image=latent, ctx=context())
    plain = nodes["KSampler"](model=model, **settings).samples
    off = nodes["KSampler"](model=nodes["RescaleCFG"](model=model, multiplier=0.0), **settings).samples
    on = nodes["KSampler"](model=nodes["RescaleCFG"](model=model, multiplier=0.7), **settings).samples
    assert torch.equal(off, plain)
    assert (on - plain).abs().max() > 1e-3  # the formula itself: tests/sgm/test_guiders.py
