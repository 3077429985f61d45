"""ComfyUI's model-patch nodes (FreeU, FreeU_V2, PerturbedAttentionGuidance, SelfAttentionGuidance,
PatchModelAddDownscale, HyperTile, TomePatchModel, Epsilon Scaling, the attention multipliers,
DifferentialDiffusion, ModelComputeDtype, TorchCompileModel), over the library's patches.

Each returns a new MODEL / CLIP value with the patch *recorded* (``ModelValue.block_patches``,
``guidance_patches``, ``differential_diffusion``, ``compute_dtype``, or a weight patch in ``loras``);
the shared UNet is changed only while a sampler runs with that value (``nodes.sampling``) and is the
loaded one again afterwards, so a workflow branch without the patch, or a cached MODEL, is untouched.
Patches stack in the order the nodes are chained.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from engine.api import Bool, Choice, Float, Int, NodeSpec, Out, node
from nodes.comfy import COMPAT, call
from nodes.runtime import Runtime
from nodes.values import LoraPatch, ModelValue

FREEU_FACTOR = dict(min=0.0, max=10.0, step=0.01)
MULTIPLIER = dict(default=1.0, min=0.0, max=10.0, step=0.01)
RESIZE_METHODS = ("bicubic", "nearest-exact", "bilinear", "area", "bislerp")
# TorchCompileModel's backends -> our CompileModel modes: inductor kernels, or inductor with CUDA graphs.
COMPILE_BACKEND_MODES = {"inductor": "default", "cudagraphs": "reduce-overhead"}


@dataclass(frozen=True)
class NumberFloat(Float):
    """A FLOAT widget ComfyUI shows as a number box (``display: "number"``) rather than a slider."""

    def spec_options(self) -> dict[str, Any]:
        return {**super().spec_options(), "display": "number"}


def _block_patch(model: ModelValue, patch: Any) -> ModelValue:
    return replace(model, block_patches=model.block_patches + (patch,))


def _guidance_patch(model: ModelValue, patch: Any) -> ModelValue:
    return replace(model, guidance_patches=model.guidance_patches + (patch,))


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    def freeu(model: ModelValue, b1: float, b2: float, s1: float, s2: float, version: int) -> ModelValue:
        from sgm.nets.unet_patches import FreeU

        if not hasattr(model.unet, "model_channels"):
            raise ValueError(f"FreeU{'_V2' if version == 2 else ''}: model {model.name!r} ({model.family}) is not "
                             "a UNet with output blocks; FreeU applies to SD 1.x / 2.x / SDXL models")
        return _block_patch(model, FreeU(float(b1), float(b2), float(s1), float(s2), version))  # type: ignore[arg-type]

    @node("FreeU", display_name="FreeU", category="model_patches/unet", compat=COMPAT)
    def freeu_v1(
        model: "MODEL",
        b1: Float(default=1.1, **FREEU_FACTOR),
        b2: Float(default=1.2, **FREEU_FACTOR),
        s1: Float(default=0.9, **FREEU_FACTOR),
        s2: Float(default=0.2, **FREEU_FACTOR),
    ) -> Out(MODEL="MODEL"):
        """FreeU (Si et al. 2024): the decoder's backbone features amplified by b1 / b2 and the skip
        connections' low frequencies damped by s1 / s2, at the two deepest decoder widths."""
        return freeu(model, b1, b2, s1, s2, 1)

    @node("FreeU_V2", display_name="FreeU_V2", category="model_patches/unet", compat=COMPAT)
    def freeu_v2(
        model: "MODEL",
        b1: Float(default=1.3, **FREEU_FACTOR),
        b2: Float(default=1.4, **FREEU_FACTOR),
        s1: Float(default=0.9, **FREEU_FACTOR),
        s2: Float(default=0.2, **FREEU_FACTOR),
    ) -> Out(MODEL="MODEL"):
        """FreeU v2: as FreeU, with the backbone amplified where its features are strong (scaled by
        1 + (b - 1) * the normalised channel mean) instead of uniformly."""
        return freeu(model, b1, b2, s1, s2, 2)

    @node("PerturbedAttentionGuidance", display_name="PerturbedAttentionGuidance", category="model_patches/unet",
          compat=COMPAT)
    def perturbed_attention_guidance(
        model: "MODEL",
        scale: Float(default=3.0, min=0.0, max=100.0, step=0.01, round=0.01),
    ) -> Out(MODEL="MODEL"):
        """Perturbed-Attention Guidance (Ahn et al. 2024): each step also runs the positive prompt with the
        middle block's self-attention made the identity and steers away from that result by ``scale``
        (one more UNet pass per step; two when cfg is not 1)."""
        from sgm.sampling.guidance_patches import PerturbedAttention, middle_self_attentions

        try:
            middle_self_attentions(model.unet)
        except ValueError as error:
            raise ValueError(f"PerturbedAttentionGuidance: model {model.name!r}: {error}") from error
        return _guidance_patch(model, PerturbedAttention(float(scale)))

    @node("SelfAttentionGuidance", display_name="Self-Attention Guidance", category="_for_testing", compat=COMPAT)
    def self_attention_guidance(
        model: "MODEL",
        scale: Float(default=0.5, min=-2.0, max=5.0, step=0.01),
        blur_sigma: Float(default=2.0, min=0.0, max=10.0, step=0.1),
    ) -> Out(MODEL="MODEL"):
        """Self-Attention Guidance (Hong et al. 2023): each step blurs the negative prompt's estimate where
        the middle block's self-attention concentrates, denoises that again and steers away from it by
        ``scale`` (two more UNet passes per step)."""
        from sgm.sampling.guidance_patches import middle_self_attentions
        from sgm.sampling.self_attention_guidance import SelfAttentionGuidance

        try:
            middle_self_attentions(model.unet)
            patch = SelfAttentionGuidance(float(scale), float(blur_sigma))
        except ValueError as error:
            raise ValueError(f"SelfAttentionGuidance: model {model.name!r}: {error}") from error
        return _guidance_patch(model, patch)

    @node("PatchModelAddDownscale", display_name="PatchModelAddDownscale (Kohya Deep Shrink)",
          category="model_patches/unet", compat=COMPAT)
    def patch_model_add_downscale(
        model: "MODEL",
        block_number: Int(default=3, min=1, max=32, step=1),
        downscale_factor: Float(default=2.0, min=0.1, max=9.0, step=0.001),
        start_percent: Float(default=0.0, min=0.0, max=1.0, step=0.001),
        end_percent: Float(default=0.35, min=0.0, max=1.0, step=0.001),
        downscale_after_skip: Bool(default=True),
        downscale_method: Choice(choices=RESIZE_METHODS),
        upscale_method: Choice(choices=RESIZE_METHODS),
    ) -> Out(MODEL="MODEL"):
        """Kohya's Deep Shrink: over the early part of sampling (start..end) the features after input block
        ``block_number`` are downscaled by ``downscale_factor`` and scaled back where the decoder meets their
        skip, so a model sees its training resolution's layout at larger sizes."""
        from sgm.nets.unet_patches import DeepShrink

        blocks = len(getattr(model.unet, "input_blocks", ()))
        if block_number >= blocks:
            raise ValueError(f"PatchModelAddDownscale: block_number {block_number} does not exist; model "
                             f"{model.name!r} has input blocks 0..{blocks - 1}")
        try:
            patch = DeepShrink(int(block_number), float(downscale_factor), float(start_percent), float(end_percent),
                               bool(downscale_after_skip), downscale_method, upscale_method)
        except ValueError as error:
            raise ValueError(f"PatchModelAddDownscale: {error}") from error
        return _block_patch(model, patch)

    @node("HyperTile", display_name="HyperTile", category="model_patches/unet", compat=COMPAT)
    def hyper_tile(
        model: "MODEL",
        tile_size: Int(default=256, min=1, max=2048),
        swap_size: Int(default=2, min=1, max=128),
        max_depth: Int(default=0, min=0, max=10),
        scale_depth: Bool(default=False),
    ) -> Out(MODEL="MODEL"):
        """HyperTile: self-attention at the full latent resolution (and ``max_depth`` levels below) runs
        within tiles of about ``tile_size`` pixels, their count per side picked among ``swap_size`` choices
        at each call: much faster at large sizes, with a small change in detail."""
        from sgm.nets.attention_patches import HyperTile

        return _block_patch(model, HyperTile(int(tile_size), int(swap_size), int(max_depth), bool(scale_depth)))

    @node("TomePatchModel", display_name="TomePatchModel", category="model_patches/unet", compat=COMPAT)
    def tome_patch_model(
        model: "MODEL",
        ratio: Float(default=0.3, min=0.0, max=1.0, step=0.01),
    ) -> Out(MODEL="MODEL"):
        """Token Merging (ToMe for SD): in the full-resolution self-attention, ``ratio`` of the query tokens
        are merged into similar ones, so attention runs over fewer of them (faster at large sizes; 0 = off)."""
        from sgm.nets.attention_patches import TokenMerging

        return _block_patch(model, TokenMerging(float(ratio)))

    @node("Epsilon Scaling", display_name="Epsilon Scaling", category="model_patches/unet", compat=COMPAT)
    def epsilon_scaling(
        model: "MODEL",
        scaling_factor: NumberFloat(default=1.005, min=0.5, max=1.5, step=0.001),
    ) -> Out(MODEL="MODEL"):
        """Epsilon scaling (Ning et al. 2024): the noise predicted at each step is divided by
        ``scaling_factor``, which counters the exposure bias of sampling (1 = off)."""
        from sgm.sampling.guidance_patches import EpsilonScaling

        return _guidance_patch(model, EpsilonScaling(float(scaling_factor)))

    def unet_attention(model: ModelValue, layer: str, q: float, k: float, v: float, out: float,
                       node_id: str) -> ModelValue:
        from sgm.io.attention_multiply import attention_scale_targets

        targets = attention_scale_targets(model.unet, layer, q, k, v, out)  # type: ignore[arg-type]
        if not targets:
            return model
        return replace(model, loras=model.loras + (LoraPatch(node_id, targets, 1.0),))

    @node("UNetSelfAttentionMultiply", display_name="UNetSelfAttentionMultiply",
          category="_for_testing/attention_experiments", compat=COMPAT)
    def unet_self_attention_multiply(
        model: "MODEL",
        q: Float(**MULTIPLIER),
        k: Float(**MULTIPLIER),
        v: Float(**MULTIPLIER),
        out: Float(**MULTIPLIER),
    ) -> Out(MODEL="MODEL"):
        """The UNet's self-attention query / key / value / output projections multiplied by q / k / v / out
        while sampling (k > 1 sharpens the attention, v and out scale what it adds)."""
        return unet_attention(model, "attn1", q, k, v, out, "UNetSelfAttentionMultiply")

    @node("UNetCrossAttentionMultiply", display_name="UNetCrossAttentionMultiply",
          category="_for_testing/attention_experiments", compat=COMPAT)
    def unet_cross_attention_multiply(
        model: "MODEL",
        q: Float(**MULTIPLIER),
        k: Float(**MULTIPLIER),
        v: Float(**MULTIPLIER),
        out: Float(**MULTIPLIER),
    ) -> Out(MODEL="MODEL"):
        """The UNet's cross-attention (onto the prompt) projections multiplied by q / k / v / out while
        sampling."""
        return unet_attention(model, "attn2", q, k, v, out, "UNetCrossAttentionMultiply")

    @node("CLIPAttentionMultiply", display_name="CLIPAttentionMultiply",
          category="_for_testing/attention_experiments", compat=COMPAT)
    def clip_attention_multiply(
        clip: "CLIP",
        q: Float(**MULTIPLIER),
        k: Float(**MULTIPLIER),
        v: Float(**MULTIPLIER),
        out: Float(**MULTIPLIER),
    ) -> Out(CLIP="CLIP"):
        """The text encoders' self-attention projections multiplied by q / k / v / out while prompts are
        encoded."""
        from sgm.io.attention_multiply import text_attention_scale_targets

        targets = text_attention_scale_targets(clip.towers(), q, k, v, out)
        if not targets:
            return clip
        return replace(clip, loras=clip.loras + (LoraPatch("CLIPAttentionMultiply", targets, 1.0),))

    @node("DifferentialDiffusion", display_name="Differential Diffusion", category="_for_testing", compat=COMPAT)
    def differential_diffusion(
        model: "MODEL",
        strength: Float(default=1.0, min=0.0, max=1.0, step=0.01, optional=True) = 1.0,
    ) -> Out(MODEL="MODEL"):
        """Differential Diffusion (Levin & Fried 2023): a soft inpainting mask becomes each pixel's amount of
        change, the pixel being regenerated only over the last ``mask`` fraction of the steps; ``strength``
        < 1 mixes that with the plain soft blend."""
        return replace(model, differential_diffusion=float(1.0 if strength is None else strength))

    @node("ModelComputeDtype", display_name="ModelComputeDtype", category="advanced/debug/model", compat=COMPAT)
    def model_compute_dtype(
        model: "MODEL",
        dtype: Choice(choices=("default", "fp32", "fp16", "bf16")),
    ) -> Out(MODEL="MODEL"):
        """The model computing in another precision while it samples (fp16 / bf16: per-operation casts by
        autocast, the stored weights unchanged); default = the precision of its weights."""
        from sgm.nets.unet_patches import compute_dtype_applied

        try:
            compute_dtype_applied(dtype, "cpu", model.unet)  # checks the choice against the weights now
        except ValueError as error:
            raise ValueError(f"ModelComputeDtype: model {model.name!r}: {error}") from error
        return replace(model, compute_dtype=None if dtype == "default" else dtype)

    @node("TorchCompileModel", display_name="TorchCompileModel", category="_for_testing", compat=COMPAT)
    def torch_compile_model(
        model: "MODEL",
        backend: Choice(choices=tuple(COMPILE_BACKEND_MODES)),
    ) -> Out(MODEL="MODEL"):
        """The model run through torch.compile (our CompileModel): inductor, or inductor with CUDA graphs
        (``cudagraphs``, mode reduce-overhead) for sizes seen before."""
        return call(ours, "CompileModel", model=model, mode=COMPILE_BACKEND_MODES[backend])

    return [freeu_v1, freeu_v2, perturbed_attention_guidance, self_attention_guidance, patch_model_add_downscale,
            hyper_tile, tome_patch_model, epsilon_scaling, unet_self_attention_multiply, unet_cross_attention_multiply,
            clip_attention_multiply, differential_diffusion, model_compute_dtype, torch_compile_model]
