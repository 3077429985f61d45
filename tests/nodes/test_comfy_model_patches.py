"""ComfyUI's model-patch nodes (nodes.comfy.model_patches) on a tiny random-weight SD1-shaped model.

Their interfaces are checked field by field with every other adapter (test_comfy_interface.py). Here:
each node records its patch on a new MODEL / CLIP value and sampling with that value changes the result,
while the value it came from (as a cache keeps it) samples exactly as before, the shared UNet's
weights and hooks are back to the loaded ones after every run, patches stack (two FreeU, FreeU with an
attention multiplier, PAG with RescaleCFG), and neutral settings leave the sampled latent unchanged.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from engine.api import NodeContext
from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from nodes.sampling import GuiderValue, SamplerValue, _make_denoiser, run_sampler
from nodes.values import ClipValue, LatentValue, ModelValue
from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.schedules import compute_sigmas
from sgm.text.conditioning import Condition
from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet

SD = DiscreteModelSampling()
STEPS = 3


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    return Runtime(Settings.for_root(tmp_path_factory.mktemp("root"), extra={"dtype": "fp32"}), device="cpu")


@pytest.fixture(scope="module")
def fns(runtime: Runtime) -> dict[str, Any]:
    return {spec.id: spec.function for spec in build_nodes(runtime)}


@pytest.fixture()
def model() -> ModelValue:
    # three levels, so the decoder has FreeU's 4x- and 2x-width backbones (SD: 1280 and 640 channels)
    unet = tiny_unet("sd1", channel_mult=[1, 2, 4], attention_resolutions=[1, 2])
    return ModelValue(unet=unet, model_sampling=SD, family="sd1", name="tiny")


def condition(seed: int) -> Condition:
    return Condition(context=torch.randn(1, 5, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(seed)))


def sample(runtime: Runtime, model: ModelValue, cfg: float = 5.0, latent: LatentValue | None = None) -> torch.Tensor:
    latent = latent or LatentValue(torch.zeros(1, 4, 16, 16))
    ctx = NodeContext("test", threading.Event(), lambda node_id, progress: None)
    guider = GuiderValue(model, (condition(1),), (condition(2),), cfg)
    sigmas = compute_sigmas("normal", SD, STEPS, 1.0)
    return run_sampler(runtime, guider, SamplerValue("euler"), sigmas, latent, 7, True, ctx, "test").samples


def weights(model: ModelValue) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.unet.state_dict().items()}


def assert_pristine(model: ModelValue, before: dict[str, torch.Tensor]) -> None:
    after = model.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.unet.block_hooks == ()
    assert all(getattr(m, "attention_override", None) is None for m in model.unet.modules())


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() > 1e-4)


@pytest.mark.parametrize("name", ["FreeU", "FreeU_V2"])
def test_freeu_changes_sampling_and_leaves_the_unpatched_model_alone(runtime: Runtime, fns: dict[str, Any],
                                                                     model: ModelValue, name: str) -> None:
    before = weights(model)
    plain = sample(runtime, model)
    patched = fns[name](model=model, b1=1.3, b2=1.4, s1=0.9, s2=0.2)
    assert model.block_patches == () and patched.unet is model.unet and len(patched.block_patches) == 1
    with_freeu = sample(runtime, patched)
    assert differs(with_freeu, plain)
    assert torch.equal(sample(runtime, model), plain)  # the cached, unpatched MODEL samples as before
    assert_pristine(model, before)
    neutral = fns[name](model=model, b1=1.0, b2=1.0, s1=1.0, s2=1.0)
    assert torch.equal(sample(runtime, neutral), plain)


def test_patches_stack(runtime: Runtime, fns: dict[str, Any], model: ModelValue) -> None:
    before = weights(model)
    once = fns["FreeU"](model=model, b1=1.2, b2=1.0, s1=1.0, s2=1.0)
    twice = fns["FreeU"](model=once, b1=1.2, b2=1.0, s1=1.0, s2=1.0)
    squared = fns["FreeU"](model=model, b1=1.44, b2=1.0, s1=1.0, s2=1.0)
    assert len(twice.block_patches) == 2
    # two backbone scalings by 1.2 are one by 1.44
    torch.testing.assert_close(sample(runtime, twice), sample(runtime, squared), atol=1e-3, rtol=1e-3)
    assert (sample(runtime, twice) - sample(runtime, once)).abs().max() > 1e-2
    attention = fns["UNetSelfAttentionMultiply"](model=model, q=1.0, k=1.0, v=1.5, out=1.0)
    both = fns["UNetSelfAttentionMultiply"](model=once, q=1.0, k=1.0, v=1.5, out=1.0)
    assert len(both.loras) == 1 and len(both.block_patches) == 1
    results = [sample(runtime, m) for m in (model, once, attention, both)]
    assert all(differs(results[i], results[j]) for i in range(4) for j in range(i + 1, 4))
    assert_pristine(model, before)


def test_attention_multipliers(runtime: Runtime, fns: dict[str, Any], model: ModelValue) -> None:
    before = weights(model)
    plain = sample(runtime, model)
    assert fns["UNetSelfAttentionMultiply"](model=model, q=1.0, k=1.0, v=1.0, out=1.0) is model
    for name in ("UNetSelfAttentionMultiply", "UNetCrossAttentionMultiply"):
        scaled = fns[name](model=model, q=1.0, k=2.0, v=1.0, out=0.5)
        assert differs(sample(runtime, scaled), plain), name
    assert_pristine(model, before)


def test_clip_attention_multiply_scales_both_text_layouts(fns: dict[str, Any]) -> None:
    from sgm.io.lora import patched
    from tests.workflows.model_files import _tower

    clip_l, open_clip = _tower("clip", 0), _tower("open_clip", 1)
    clip = ClipValue(conditioner=SimpleNamespace(modules=[clip_l, open_clip]), family="sdxl", name="tiny")
    assert fns["CLIPAttentionMultiply"](clip=clip, q=1.0, k=1.0, v=1.0, out=1.0) is clip
    scaled = fns["CLIPAttentionMultiply"](clip=clip, q=3.0, k=1.0, v=1.0, out=1.0)
    (patch,) = scaled.loras
    l_params, oc_params = dict(clip_l.named_parameters()), dict(open_clip.named_parameters())
    q_l = next(k for k in l_params if k.endswith("layers.0.self_attn.q_proj.weight"))
    k_l = q_l.replace("q_proj", "k_proj")
    fused = next(k for k in oc_params if k.endswith("resblocks.0.attn.in_proj_weight"))
    width = oc_params[fused].shape[0] // 3
    saved = {k: v.detach().clone() for k, v in [*l_params.items(), *oc_params.items()]}
    with patched({"te0": clip_l, "te1": open_clip}, [(patch.targets, patch.strength)]):
        torch.testing.assert_close(l_params[q_l], saved[q_l] * 3)
        torch.testing.assert_close(l_params[q_l.replace("weight", "bias")], saved[q_l.replace("weight", "bias")] * 3)
        assert torch.equal(l_params[k_l], saved[k_l])
        torch.testing.assert_close(oc_params[fused][:width], saved[fused][:width] * 3)
        assert torch.equal(oc_params[fused][width:], saved[fused][width:])
    assert all(torch.equal(v, saved[k]) for k, v in [*l_params.items(), *oc_params.items()])


def test_pag_stacks_with_rescale_cfg(runtime: Runtime, fns: dict[str, Any], model: ModelValue) -> None:
    from sgm.sampling.guidance_patches import PerturbedAttentionDenoiser
    from sgm.sampling.guiders import GuidedDenoiser

    before = weights(model)
    rescaled = fns["RescaleCFG"](model=model, multiplier=0.7)
    pag = fns["PerturbedAttentionGuidance"](model=rescaled, scale=3.0)
    assert rescaled.guidance_patches == () and pag.cfg_rescale == 0.7
    denoiser = _make_denoiser(GuiderValue(pag, (condition(1),), (condition(2),), 5.0), [condition(1)],
                              [condition(2)], None, None)
    assert isinstance(denoiser, PerturbedAttentionDenoiser) and isinstance(denoiser.inner, GuidedDenoiser)
    assert denoiser.inner.cfg_rescale == 0.7
    plain = sample(runtime, rescaled)
    assert differs(sample(runtime, pag), plain)
    off = fns["PerturbedAttentionGuidance"](model=rescaled, scale=0.0)
    assert torch.equal(sample(runtime, off), plain)
    assert torch.equal(sample(runtime, rescaled), plain)
    assert_pristine(model, before)


def test_deep_shrink_node(runtime: Runtime, fns: dict[str, Any], model: ModelValue) -> None:
    before = weights(model)
    plain = sample(runtime, model)
    args = dict(block_number=1, downscale_factor=2.0, start_percent=0.0, end_percent=0.35, downscale_after_skip=True,
                downscale_method="bicubic", upscale_method="bicubic")
    shrunk = fns["PatchModelAddDownscale"](model=model, **args)
    assert differs(sample(runtime, shrunk), plain)
    never = fns["PatchModelAddDownscale"](model=model, **{**args, "end_percent": 0.0})  # an empty window
    assert torch.equal(sample(runtime, never), plain)
    with pytest.raises(ValueError, match="PatchModelAddDownscale: block_number 9 does not exist"):
        fns["PatchModelAddDownscale"](model=model, **{**args, "block_number": 9})
    with pytest.raises(ValueError, match="PatchModelAddDownscale: .*bislerp"):
        fns["PatchModelAddDownscale"](model=model, **{**args, "upscale_method": "bislerp"})
    assert_pristine(model, before)


def test_epsilon_scaling_node(runtime: Runtime, fns: dict[str, Any], model: ModelValue) -> None:
    plain = sample(runtime, model)
    assert differs(sample(runtime, fns["Epsilon Scaling"](model=model, scaling_factor=1.05)), plain)
    assert torch.equal(sample(runtime, fns["Epsilon Scaling"](model=model, scaling_factor=1.0)), plain)


def test_differential_mask_thresholds_by_timestep() -> None:
    from sgm.sampling.differential_diffusion import differential_mask

    sigmas = compute_sigmas("normal", SD, 4, 1.0)  # ends in 0: the end is sigma_min
    mask = torch.tensor([0.0, 0.3, 0.7, 1.0])
    t = lambda s: float(SD.timestep(torch.tensor([float(s)]))[0])  # noqa: E731
    t0, t_end = t(sigmas[0]), t(SD.sigma_min)
    assert differential_mask(mask, float(sigmas[0]), sigmas, SD).tolist() == [0.0, 0.0, 0.0, 1.0]
    for sigma in sigmas[1:-1]:
        threshold = (t(sigma) - t_end) / (t0 - t_end)
        expected = [float(m >= threshold) for m in mask.tolist()]
        assert differential_mask(mask, float(sigma), sigmas, SD).tolist() == expected
    half = differential_mask(mask, float(sigmas[0]), sigmas, SD, strength=0.5)
    torch.testing.assert_close(half, torch.tensor([0.0, 0.15, 0.35, 1.0]))


def test_differential_diffusion_node(runtime: Runtime, fns: dict[str, Any], model: ModelValue) -> None:
    source = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(9))
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 4:] = torch.linspace(0.1, 1.0, 12)  # soft: columns 0-3 keep the input
    inpaint = LatentValue(source, noise_mask=mask)
    dd = fns["DifferentialDiffusion"](model=model, strength=1.0)
    assert dd.differential_diffusion == 1.0 and model.differential_diffusion is None
    plain, differential = sample(runtime, model, latent=inpaint), sample(runtime, dd, latent=inpaint)
    assert differs(differential, plain)
    assert torch.equal(differential[..., :4], source[..., :4])
    # without a noise mask there is nothing to threshold: the same picture as without the patch
    assert torch.equal(sample(runtime, dd), sample(runtime, model))


@pytest.mark.parametrize("backend, mode", [("inductor", "default"), ("cudagraphs", "reduce-overhead")])
def test_torch_compile_model_is_our_compile_model(fns: dict[str, Any], model: ModelValue, backend: str,
                                                   mode: str) -> None:
    from sgm.nets.compile import compiled_forward

    compiled = fns["TorchCompileModel"](model=model, backend=backend)
    forward = compiled_forward(compiled.unet)
    assert forward is not None and forward.module is model.unet and forward.options.mode.value == mode
    assert compiled_forward(model.unet) is None


def test_self_attention_guidance_node(runtime: Runtime, fns: dict[str, Any], model: ModelValue) -> None:
    before = weights(model)
    plain = sample(runtime, model)
    sag = fns["SelfAttentionGuidance"](model=model, scale=0.5, blur_sigma=2.0)
    assert differs(sample(runtime, sag), plain)
    assert torch.equal(sample(runtime, fns["SelfAttentionGuidance"](model=model, scale=0.0, blur_sigma=2.0)), plain)
    with pytest.raises(ValueError, match="SelfAttentionGuidance: .*blur_sigma must be > 0"):
        fns["SelfAttentionGuidance"](model=model, scale=0.5, blur_sigma=0.0)
    both = fns["PerturbedAttentionGuidance"](model=sag, scale=2.0)
    assert len(both.guidance_patches) == 2 and differs(sample(runtime, both), sample(runtime, sag))
    assert torch.equal(sample(runtime, model), plain)
    assert_pristine(model, before)


def test_hypertile_node(runtime: Runtime, fns: dict[str, Any], model: ModelValue) -> None:
    before = weights(model)
    plain = sample(runtime, model)
    tiled = fns["HyperTile"](model=model, tile_size=64, swap_size=2, max_depth=1, scale_depth=False)
    assert differs(sample(runtime, tiled), plain)
    assert torch.equal(sample(runtime, tiled), sample(runtime, tiled))  # the tile choices are seeded per sampling
    whole = fns["HyperTile"](model=model, tile_size=2048, swap_size=2, max_depth=1, scale_depth=False)
    torch.testing.assert_close(sample(runtime, whole), plain, atol=1e-5, rtol=1e-5)  # one tile: plain attention
    assert_pristine(model, before)


def test_tome_node_and_attention_patches_stack(runtime: Runtime, fns: dict[str, Any], model: ModelValue) -> None:
    before = weights(model)
    plain = sample(runtime, model)
    tome = fns["TomePatchModel"](model=model, ratio=0.5)
    assert differs(sample(runtime, tome), plain)
    assert torch.equal(sample(runtime, fns["TomePatchModel"](model=model, ratio=0.0)), plain)
    tiled = fns["HyperTile"](model=model, tile_size=64, swap_size=1, max_depth=0, scale_depth=False)
    # Chained, the first node sees the attention's tokens first (as ComfyUI chains attn1 patches): ToMe
    # finds HyperTile's tiles, or HyperTile ToMe's merged queries, not the full grid it acts on, and passes.
    tiles_first = fns["TomePatchModel"](model=tiled, ratio=0.5)
    tome_first = fns["HyperTile"](model=tome, tile_size=64, swap_size=1, max_depth=0, scale_depth=False)
    assert differs(sample(runtime, tiled), plain)
    torch.testing.assert_close(sample(runtime, tiles_first), sample(runtime, tiled), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sample(runtime, tome_first), sample(runtime, tome), atol=1e-5, rtol=1e-5)
    assert_pristine(model, before)


def test_model_compute_dtype(runtime: Runtime, fns: dict[str, Any], model: ModelValue) -> None:
    before = weights(model)
    plain = sample(runtime, model)
    assert fns["ModelComputeDtype"](model=model, dtype="default").compute_dtype is None
    assert torch.equal(sample(runtime, fns["ModelComputeDtype"](model=model, dtype="fp32")), plain)
    bf16 = fns["ModelComputeDtype"](model=model, dtype="bf16")
    seen: list[torch.dtype] = []
    handle = model.unet.input_blocks[0][0].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        low = sample(runtime, bf16)
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the convolutions ran in bf16
    assert low.dtype == torch.float32 and differs(low, plain)
    assert (low - plain).abs().max() < 0.1 * plain.abs().max()  # a precision change, not another picture
    assert_pristine(model, before)  # the weights stay float32
    half = ModelValue(unet=tiny_unet("sd1").half(), model_sampling=SD, family="sd1", name="half")
    with pytest.raises(ValueError, match="ModelComputeDtype: model 'half': .*load it in fp32"):
        fns["ModelComputeDtype"](model=half, dtype="fp32")


def test_a_comfyui_prompt_with_patched_and_unpatched_branches(tmp_path: Path) -> None:
    """One prompt samples the same checkpoint with FreeU_V2 + PAG and without: the unpatched branch's picture is
    the one a prompt without the patched branch makes, before and after (the shared, loaded UNet is never
    changed), and the patched branch's picture differs."""
    import numpy as np
    from PIL import Image

    from engine.cache import ResultCache
    from engine.registry import NodeRegistry
    from engine.scheduler import Executor
    from engine.validation import validate_document
    from nodes.memory import result_size
    from tests.workflows.model_files import write_byte_tokenizer, write_family_checkpoint

    checkpoints = tmp_path / "models" / "checkpoints"
    write_byte_tokenizer(checkpoints / "tokenizer")
    write_family_checkpoint(checkpoints / "a.safetensors", "sd1", seed=0)
    output = tmp_path / "out"
    runtime = Runtime(Settings.for_root(tmp_path, output_dir=output, extra={"dtype": "fp32"}), device="cpu")
    registry = NodeRegistry()
    registry.register_pack(build_nodes(runtime), "nodes.builtin")

    def branch(model: list, first: int, prefix: str) -> dict[str, Any]:
        return {
            str(first): {"class_type": "KSampler", "inputs": {
                "seed": 3, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                "model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}},
            str(first + 1): {"class_type": "VAEDecode", "inputs": {"samples": [str(first), 0], "vae": ["1", 2]}},
            str(first + 2): {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix,
                                                                   "images": [str(first + 1), 0]}},
        }

    base = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    both = {**base, **branch(["1", 0], 5, "plain"),
            "8": {"class_type": "FreeU_V2", "inputs": {"model": ["1", 0], "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}},
            "9": {"class_type": "PerturbedAttentionGuidance", "inputs": {"model": ["8", 0], "scale": 3.0}},
            **branch(["9", 0], 10, "patched")}

    def run(prompt: dict[str, Any]) -> dict[str, np.ndarray]:
        executor = Executor(registry, ResultCache(64, 1 << 30, size_of=result_size),  # a fresh cache each run
                            services={"settings": runtime.settings, "output_dir": runtime.settings.output_dir})
        report = validate_document(prompt, registry)
        assert report.ok, report.format()
        result = executor.run(report.workflow, services={"prompt": prompt})
        assert result.status == "success", result.failure and result.failure.message
        images = {}
        for node_id, ui in result.outputs.items():
            (saved,) = ui["images"]
            images[node_id] = np.asarray(Image.open(output / saved["subfolder"] / saved["filename"]), dtype=np.int16)
        return images

    alone_before = run({**base, **branch(["1", 0], 5, "alone")})["7"]
    together = run(both)
    alone_after = run({**base, **branch(["1", 0], 5, "alone")})["7"]
    assert np.array_equal(together["7"], alone_before) and np.array_equal(alone_after, alone_before)
    assert np.abs(together["12"] - together["7"]).max() > 0
