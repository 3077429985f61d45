"""ComfyUI's model-merging, model-saving, hypernetwork and InstructPix2Pix nodes.

Merges are recorded, not computed (``sgm.io.merge``): the merged MODEL / CLIP shares the first
model's weights and carries one more patch in ``loras``; the merged weights exist only while a
node samples or encodes, and CheckpointSave writes them one tensor at a time
(``sgm.io.save_checkpoint``). ComfyUI's factors: ModelMergeSimple / CLIPMergeSimple keep
``ratio`` of model 1 (1 = model 1, 0 = model 2), ModelMergeBlocks / ModelMergeSD1 / ModelMergeSDXL
pick the ratio by the longest matching UNet key prefix (keys no prefix matches follow the first
ratio), ModelMergeAdd adds model 2, ModelMergeSubtract gives ``multiplier * (model1 - model2)``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from engine.api import Context, Float, NodeSpec, Out, Result, Text, node
from engine.model_paths import model_choice
from nodes.comfy import COMPAT
from nodes.images import COMFYUI_HIDDEN, png_text
from nodes.latents import check_vae, encode_images, image_to_vae_input
from nodes.runtime import Runtime, confined, file_fingerprint
from nodes.values import ClipValue, LatentValue, LoraPatch, ModelValue

logger = logging.getLogger(__name__)

CATEGORY = "advanced/model_merging"
RATIO = dict(default=1.0, min=0.0, max=1.0, step=0.01)
MULTIPLIER = dict(default=1.0, min=-10.0, max=10.0, step=0.01)
HYPERNETWORKS = ("hypernetworks",)
# ComfyUI's per-block inputs (their names are UNet key prefixes; SD 1.x names end with a dot).
SD1_BLOCKS = ("time_embed.", "label_emb.", *(f"input_blocks.{i}." for i in range(12)),
              *(f"middle_block.{i}." for i in range(3)), *(f"output_blocks.{i}." for i in range(12)), "out.")
SDXL_BLOCKS = ("time_embed.", "label_emb.", *(f"input_blocks.{i}" for i in range(9)),
               *(f"middle_block.{i}" for i in range(3)), *(f"output_blocks.{i}" for i in range(9)), "out.")


def merge_models(model1: ModelValue, model2: ModelValue, weights: Any, node_id: str) -> ModelValue:
    """``model1`` with the merge of ``model2`` recorded as one more patch (nothing copied)."""
    from sgm.io.merge import merge_targets

    match = merge_targets(model1.unet, model2.unet, weights, module="unet",
                          other_patches=[(p.targets, p.strength) for p in model2.loras])
    _check_overlap(match, sum(1 for _ in model1.unet.parameters()), node_id, "model1", "model2",
                   model1.family, model2.family)
    patch = LoraPatch(f"{node_id}:{model2.name}", match.targets, 1.0)
    return replace(model1, loras=model1.loras + (patch,))


def merge_clips(clip1: ClipValue, clip2: ClipValue, weights: Any, node_id: str) -> ClipValue:
    """``clip1`` with the merge of ``clip2``'s text towers (paired in order) recorded."""
    from sgm.io.merge import CLIP_IGNORED_SUFFIXES, merge_parts

    for name, clip in (("clip1", clip1), ("clip2", clip2)):
        if clip is None or not clip.towers():
            raise ValueError(f"{node_id}: {name} has no text encoder; link a CLIP output (a checkpoint loader's)")
    towers1 = {f"te{i}": t for i, t in enumerate(clip1.towers())}
    towers2 = {f"te{i}": t for i, t in enumerate(clip2.towers())}
    match = merge_parts(towers1, towers2, weights, other_patches=[(p.targets, p.strength) for p in clip2.loras],
                        ignore_suffixes=CLIP_IGNORED_SUFFIXES)
    total = sum(1 for t in towers1.values() for _ in t.parameters())
    _check_overlap(match, total, node_id, "clip1", "clip2", clip1.family, clip2.family)
    patch = LoraPatch(f"{node_id}:{clip2.name}", match.targets, 1.0)
    return replace(clip1, loras=clip1.loras + (patch,))


def _check_overlap(match: Any, total: int, node_id: str, first: str, second: str, family1: str, family2: str) -> None:
    if total and len(match.missing) + len(match.mismatched) >= total:
        raise ValueError(
            f"{node_id}: no weight of {second} ({family2}) fits {first} ({family1}): {len(match.missing)} missing, "
            f"{len(match.mismatched)} of another shape (e.g. {(match.mismatched or match.missing)[:2]}); "
            "merge models of the same family and architecture")


def _lib() -> Any:
    """``sgm.io.merge``, imported when a node runs (building and listing nodes never imports torch)."""
    from sgm.io import merge

    return merge


def _block_node(node_id: str, blocks: tuple[str, ...], category: str, doc: str) -> NodeSpec:
    """A per-block merge node whose inputs are named by UNet key prefixes (not Python names)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("model1", keyword, annotation="MODEL"),
                  inspect.Parameter("model2", keyword, annotation="MODEL")]
    parameters += [inspect.Parameter(f"block_{i}", keyword, annotation=Float(**RATIO)) for i in range(len(blocks))]

    def merge(model1: ModelValue, model2: ModelValue, **ratios: float) -> ModelValue:
        from sgm.io.merge import by_blocks

        table = {name: float(ratios[name]) for name in blocks if name in ratios}
        return merge_models(model1, model2, by_blocks(table), node_id)

    signature = inspect.Signature(parameters, return_annotation=Out(MODEL="MODEL"))
    merge.__signature__ = signature  # type: ignore[attr-defined]
    merge.__doc__ = doc
    spec = node(node_id, display_name=node_id, category=category, compat=COMPAT)(merge)
    inputs = tuple(replace(i, name=blocks[int(i.name.removeprefix("block_"))]) if i.name.startswith("block_") else i
                   for i in spec.inputs)
    return replace(spec, inputs=inputs)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    models = runtime.settings.model_paths

    @node("ModelMergeSimple", display_name="ModelMergeSimple", category=CATEGORY, compat=COMPAT)
    def model_merge_simple(model1: "MODEL", model2: "MODEL", ratio: Float(**RATIO)) -> Out(MODEL="MODEL"):
        """ratio * model1 + (1 - ratio) * model2, weight by weight (1 = model1, 0 = model2). Recorded: the
        merged weights exist only while sampling, and nothing is copied."""
        return merge_models(model1, model2, _lib().weighted(ratio), "ModelMergeSimple")

    @node("ModelMergeBlocks", display_name="ModelMergeBlocks", category=CATEGORY, compat=COMPAT)
    def model_merge_blocks(model1: "MODEL", model2: "MODEL", input: Float(**RATIO), middle: Float(**RATIO),
                           out: Float(**RATIO)) -> Out(MODEL="MODEL"):
        """A weighted merge with one ratio for the UNet's input blocks, one for the middle block and one for the
        output blocks (the time embedding follows the input ratio)."""
        return merge_models(model1, model2, _lib().by_blocks({"input": input, "middle": middle, "out": out}),
                            "ModelMergeBlocks")

    @node("ModelMergeSubtract", display_name="ModelMergeSubtract", category=CATEGORY, compat=COMPAT)
    def model_merge_subtract(model1: "MODEL", model2: "MODEL", multiplier: Float(**MULTIPLIER)) -> Out(MODEL="MODEL"):
        """multiplier * (model1 - model2): the difference a fine-tune made (add it to another model with
        ModelMergeAdd)."""
        return merge_models(model1, model2, _lib().difference(multiplier), "ModelMergeSubtract")

    @node("ModelMergeAdd", display_name="ModelMergeAdd", category=CATEGORY, compat=COMPAT)
    def model_merge_add(model1: "MODEL", model2: "MODEL") -> Out(MODEL="MODEL"):
        """model1 + model2, weight by weight (model2 is usually a ModelMergeSubtract difference)."""
        return merge_models(model1, model2, _lib().addition(), "ModelMergeAdd")

    @node("CLIPMergeSimple", display_name="CLIPMergeSimple", category=CATEGORY, compat=COMPAT)
    def clip_merge_simple(clip1: "CLIP", clip2: "CLIP", ratio: Float(**RATIO)) -> Out(CLIP="CLIP"):
        """ratio * clip1 + (1 - ratio) * clip2 for the text encoders' weights."""
        return merge_clips(clip1, clip2, _lib().weighted(ratio), "CLIPMergeSimple")

    @node("CLIPMergeSubtract", display_name="CLIPMergeSubtract", category=CATEGORY, compat=COMPAT)
    def clip_merge_subtract(clip1: "CLIP", clip2: "CLIP", multiplier: Float(**MULTIPLIER)) -> Out(CLIP="CLIP"):
        """multiplier * (clip1 - clip2) for the text encoders' weights."""
        return merge_clips(clip1, clip2, _lib().difference(multiplier), "CLIPMergeSubtract")

    @node("CLIPMergeAdd", display_name="CLIPMergeAdd", category=CATEGORY, compat=COMPAT)
    def clip_merge_add(clip1: "CLIP", clip2: "CLIP") -> Out(CLIP="CLIP"):
        """clip1 + clip2 for the text encoders' weights."""
        return merge_clips(clip1, clip2, _lib().addition(), "CLIPMergeAdd")

    specific = f"{CATEGORY}/model_specific"
    merge_sd1 = _block_node("ModelMergeSD1", SD1_BLOCKS, specific,
                            "A weighted merge of SD 1.x / 2.x models with one ratio per UNet block (1 = model1).")
    merge_sdxl = _block_node("ModelMergeSDXL", SDXL_BLOCKS, specific,
                             "A weighted merge of SDXL models with one ratio per UNet block (1 = model1).")

    def output_path(ctx: Any, prefix: str, node_id: str) -> tuple[Path, str]:
        folder = Path(ctx.services.get("output_dir") or (ctx.services.get("settings") or runtime.settings).output_dir)
        target = confined(folder, prefix)
        if target is None or not Path(prefix).name:
            raise ValueError(f"{node_id}: filename_prefix {prefix!r} must name a file inside {folder} "
                             "(no '..' or absolute paths)")
        if not target.parent.resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"{node_id}: filename_prefix {prefix!r} leads outside {folder} through a symbolic "
                             "link; save into a real subfolder")
        return target.parent, target.name

    def save(ctx: Any, prefix: str, node_id: str, parts: list[Any], metadata: dict[str, str],
             model: ModelValue | None = None) -> Result:
        from sgm.io.save_checkpoint import prediction_keys, save_numbered, save_patched_checkpoint

        folder, stem = output_path(ctx, prefix, node_id)
        metadata = {**metadata, **png_text(ctx.services if ctx is not None else {})}
        sampling = None if model is None else model.model_sampling
        extra = prediction_keys(getattr(sampling, "prediction", None),
                                bool(getattr(sampling, "zero_terminal_snr", False)))
        path = save_numbered(folder, stem, lambda p: save_patched_checkpoint(p, parts, metadata, extra=extra))
        return Result(values=(), ui={"checkpoints": [saved_entry(path, prefix, node_id)]})

    def saved_entry(path: Path, prefix: str, node_id: str) -> dict[str, str]:
        subfolder = Path(prefix).parent.as_posix()
        logger.info("%s wrote %s", node_id, path)
        return {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output",
                "path": str(path)}

    def model_metadata(model: ModelValue, clip: Any, vae: Any) -> dict[str, str]:
        from sgm.io.save_checkpoint import checkpoint_metadata

        sampling = model.model_sampling
        return checkpoint_metadata(
            unet=model.unet, family=model.family, prediction=getattr(sampling, "prediction", None),
            zero_terminal_snr=bool(getattr(sampling, "zero_terminal_snr", False)),
            scale_factor=None if vae is None else vae.scale_factor,
            conditioner=None if clip is None else clip.conditioner)

    def loras(value: Any) -> list[tuple[Any, float]]:
        return [(p.targets, p.strength) for p in value.loras]

    @node("CheckpointSave", display_name="Save Checkpoint", category=CATEGORY, compat=COMPAT, output=True,
          hidden=COMFYUI_HIDDEN)
    def checkpoint_save(model: "MODEL", clip: "CLIP", vae: "VAE",
                        filename_prefix: Text(default="checkpoints/ComfyUI"), ctx: Context = None) -> None:
        """Save the model, text encoder and VAE (merges and LoRAs applied) as one .safetensors checkpoint with the
        released key names in output/ (<prefix>_00001_.safetensors), the workflow in its metadata. Weights are
        computed and written one tensor at a time."""
        from sgm.io.save_checkpoint import text_parts, unet_part, vae_part

        vae = check_vae(vae, "CheckpointSave")
        parts: list[Any] = [(unet_part(model.unet), loras(model))]
        if clip is not None and clip.conditioner is not None:
            parts += [(part, loras(clip)) for part in text_parts(clip.conditioner)]
        parts.append((vae_part(vae.vae), ()))
        return save(ctx, filename_prefix, "CheckpointSave", parts, model_metadata(model, clip, vae), model)

    @node("ModelSave", display_name="ModelSave", category=CATEGORY, compat=COMPAT, output=True,
          hidden=COMFYUI_HIDDEN)
    def model_save(model: "MODEL", filename_prefix: Text(default="diffusion_models/ComfyUI"),
                   ctx: Context = None) -> None:
        """Save the diffusion model alone (merges and LoRAs applied) as a .safetensors file in output/."""
        from sgm.io.save_checkpoint import unet_part

        return save(ctx, filename_prefix, "ModelSave", [(unet_part(model.unet), loras(model))],
                    model_metadata(model, None, None), model)

    @node("VAESave", display_name="VAESave", category=CATEGORY, compat=COMPAT, output=True, hidden=COMFYUI_HIDDEN)
    def vae_save(vae: "VAE", filename_prefix: Text(default="vae/ComfyUI_vae"), ctx: Context = None) -> None:
        """Save the VAE as a .safetensors file (ldm key names, no prefix) in output/."""
        from sgm.io.save_checkpoint import ModelPart

        vae = check_vae(vae, "VAESave")
        return save(ctx, filename_prefix, "VAESave", [(ModelPart("", vae.vae, "vae"), ())], {})

    @node("CLIPSave", display_name="CLIPSave", category=CATEGORY, compat=COMPAT, output=True, hidden=COMFYUI_HIDDEN)
    def clip_save(clip: "CLIP", filename_prefix: Text(default="clip/ComfyUI"), ctx: Context = None) -> None:
        """Save each text encoder (merges and LoRAs applied) as its own .safetensors file in transformers' layout
        in output/ (<prefix>_clip_l_00001_.safetensors, ..._clip_g_..., as ComfyUI names them); LoadTextEncoder
        and CLIPLoader read them."""
        from sgm.io.save_checkpoint import TensorSource, save_numbered, text_encoder_files, write_safetensors

        if clip is None or clip.conditioner is None:
            raise ValueError("CLIPSave: the clip input has no text encoder; link a CLIP output")
        folder, stem = output_path(ctx, filename_prefix, "CLIPSave")
        metadata = {"format": "pt", **png_text(ctx.services if ctx is not None else {})}
        entries = []
        for name, tensors in text_encoder_files(clip.conditioner, clip.family, loras(clip)):
            sources = [TensorSource(k, tuple(v.shape), v.dtype, lambda v=v: v) for k, v in tensors.items()]
            path = save_numbered(folder, f"{stem}_{name}", lambda p: write_safetensors(p, sources, metadata))
            entries.append(saved_entry(path, filename_prefix, "CLIPSave"))
        return Result(values=(), ui={"checkpoints": entries})

    def hypernetwork_fingerprint(hypernetwork_name: Any = None, **_: Any) -> Any:
        return [file_fingerprint(models.resolve(HYPERNETWORKS, str(hypernetwork_name)))]

    @node("HypernetworkLoader", display_name="HypernetworkLoader", category="loaders", compat=COMPAT,
          fingerprint=hypernetwork_fingerprint)
    def hypernetwork_loader(
        model: "MODEL",
        hypernetwork_name: model_choice(models, *HYPERNETWORKS,
                                        tooltip="an A1111 hypernetwork in models/hypernetworks/"),
        strength: Float(**MULTIPLIER),
    ) -> Out(MODEL="MODEL"):
        """Apply an A1111-format hypernetwork: small networks added to the attention key and value inputs, scaled
        by strength, while sampling."""
        from sgm.io.hypernetwork import HypernetworkPatch, load_hypernetwork

        path = runtime.resolve_model(HYPERNETWORKS, hypernetwork_name, "HypernetworkLoader", "hypernetwork_name")
        hypernetwork = runtime.load_model(path, "hypernetwork", "HypernetworkLoader",
                                          lambda dtype: load_hypernetwork(path), prepare=False)
        patch = LoraPatch(f"hypernetwork:{hypernetwork_name}", (HypernetworkPatch(hypernetwork),), float(strength))
        return replace(model, loras=model.loras + (patch,))

    @node("InstructPixToPixConditioning", display_name="InstructPixToPixConditioning",
          category="conditioning/instructpix2pix", compat=COMPAT)
    def instruct_pix_to_pix_conditioning(positive: "CONDITIONING", negative: "CONDITIONING", vae: "VAE",
                                         pixels: "IMAGE") -> Out(positive="CONDITIONING", negative="CONDITIONING",
                                                                 latent="LATENT"):
        """Give both conditionings the latent of the image to edit (for an InstructPix2Pix model's extra input
        channels) and an empty latent of its size to sample into."""
        import torch

        from sgm.sampling.pix2pix import CONCAT_KEY

        vae = check_vae(vae, "InstructPixToPixConditioning")
        x = image_to_vae_input(pixels, vae.downscale)  # (B, 3, H, W), cropped to whole latent pixels
        raw = encode_images(runtime, vae, x, False, "InstructPixToPixConditioning") / vae.scale_factor

        def with_image(conditioning: Any) -> list[Any]:
            return [c.with_(extra={**c.extra, CONCAT_KEY: raw}) for c in conditioning]

        latent = LatentValue(torch.zeros_like(raw), width=x.shape[-1], height=x.shape[-2])
        return with_image(positive), with_image(negative), latent

    return [model_merge_simple, model_merge_blocks, model_merge_subtract, model_merge_add, clip_merge_simple,
            clip_merge_subtract, clip_merge_add, merge_sd1, merge_sdxl, checkpoint_save, clip_save, model_save, vae_save,
            hypernetwork_loader, instruct_pix_to_pix_conditioning]

