"""ComfyUI's latent arithmetic, batching, transform, compositing and file nodes, plus
InpaintModelConditioning (the masked-image latent an inpainting model's extra channels read).

A LATENT is our :class:`LatentValue`: its samples are scaled for diffusion (ComfyUI's are the raw VAE
output); the math here is linear, so only SaveLatent / LoadLatent care (see there). Where a node
changes the latent's layout (crop, flip, rotate, batch) its noise mask and masked-image latent follow.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from engine.api import Bool, Choice, Context, Float, Int, NodeSpec, Out, Result, Text, node
from nodes.comfy import COMPAT
from nodes.latents import center_crop, check_vae, encode_images
from nodes.runtime import Runtime, confined, file_fingerprint, list_files
from nodes.values import LatentValue

POSITION = dict(default=0, min=0, max=16384, step=8)
FLIP_METHODS = ("x-axis: vertically", "y-axis: horizontally")
ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")
CONCAT_DIMS = ("x", "-x", "y", "-y", "t", "-t")
CUT_DIMS = ("x", "y", "t")
OPERATIONS = "latent/advanced/operations"
SEED_BEHAVIORS = ("random", "fixed")
LATENT_SUFFIX = ".latent"
LATENT_FACTOR = 8  # image pixels per latent pixel, as ComfyUI's latent nodes assume
# ComfyUI's .latent files hold the raw VAE latent (ours are scaled for diffusion); a LATENT does not
# know its VAE, so files are written and read with the SD 1.x/2.x factor (see SaveLatent).
SD_SCALE = 0.18215


# --------------------------------------------------------------------------- tensor helpers


def repeat_to_batch(tensor: Any, batch: int) -> Any:
    """(N, ...) -> (batch, ...): the first ``batch`` items, the whole batch repeated as needed
    (ComfyUI's rule for a second input with another batch size)."""
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] > batch:
        return tensor[:batch]
    times = -(-batch // tensor.shape[0])
    return tensor.repeat(times, *([1] * (tensor.ndim - 1)))[:batch]


def fit_spatial(tensor: Any, height: int, width: int, mode: str = "bilinear") -> Any:
    """(B, C, h, w) -> (B, C, height, width): centre-cropped to the target's aspect ratio, then
    resized (plain ``interpolate``, no antialiasing, as ComfyUI's ``common_upscale``)."""
    import torch.nn.functional as F

    if tuple(tensor.shape[-2:]) == (height, width):
        return tensor
    return F.interpolate(center_crop(tensor, width, height), size=(height, width), mode=mode)


def composite(destination: Any, source: Any, x: int, y: int, mask: Any, multiplier: int,
              resize_source: bool) -> Any:
    """Paste ``source`` (B', C, h, w) into a copy of ``destination`` (B, C, H, W) with its top-left
    at (x, y) // multiplier, weighted by ``mask`` (any (..., h', w'), resized bilinearly to the
    source; None = 1). Source and mask batches are fitted to the destination's by repeating; the
    part of the source past the destination's right or bottom edge is dropped; source wins where
    the mask is 1."""
    import torch
    import torch.nn.functional as F

    out = destination.clone()
    if resize_source:
        source = F.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = repeat_to_batch(source.to(destination), destination.shape[0])
    height, width = source.shape[-2:]
    left = min(max(0, x) // multiplier, destination.shape[-1])
    top = min(max(0, y) // multiplier, destination.shape[-2])
    if mask is None:
        weight = torch.ones_like(source)
    else:
        weight = mask.reshape(-1, 1, *mask.shape[-2:]).to(destination)
        weight = repeat_to_batch(F.interpolate(weight, size=(height, width), mode="bilinear"), source.shape[0])
    visible_h = min(height, destination.shape[-2] - top)
    visible_w = min(width, destination.shape[-1] - left)
    if visible_h <= 0 or visible_w <= 0:
        return out
    weight, source = weight[..., :visible_h, :visible_w], source[..., :visible_h, :visible_w]
    region = out[..., top:top + visible_h, left:left + visible_w]
    out[..., top:top + visible_h, left:left + visible_w] = weight * source + (1 - weight) * region
    return out


def _item_masks(latent: LatentValue, height: int, width: int) -> Any:
    """The latent's noise mask as (B, height, width) (ones where it has none)."""
    import torch
    import torch.nn.functional as F

    if latent.noise_mask is None:
        return torch.ones(latent.batch, height, width)
    mask = latent.noise_mask.float().reshape(-1, 1, *latent.noise_mask.shape[-2:])
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="bilinear")
    return repeat_to_batch(mask[:, 0], latent.batch)


def _joined(latents: Sequence[LatentValue], samples: Any) -> dict[str, Any]:
    """noise_mask and masked_latent for ``samples``, the concatenation of ``latents``: None when no
    part has one; else each part's (ones / zeros where a part has none), at the first mask's size."""
    import torch

    fields: dict[str, Any] = {"noise_mask": None, "masked_latent": None}
    masks = [lat.noise_mask for lat in latents if lat.noise_mask is not None]
    if masks:
        height, width = masks[0].shape[-2:]
        fields["noise_mask"] = torch.cat([_item_masks(lat, height, width) for lat in latents])
    if any(lat.masked_latent is not None for lat in latents):
        parts, start = [], 0
        for lat in latents:
            part = samples[start:start + lat.batch]
            start += lat.batch
            parts.append(torch.zeros_like(part) if lat.masked_latent is None else
                         repeat_to_batch(fit_spatial(lat.masked_latent, *part.shape[-2:]), lat.batch))
        fields["masked_latent"] = torch.cat(parts)
    return fields


def _spatial(latent: LatentValue, transform: Any) -> dict[str, Any]:
    """The latent's noise mask and masked-image latent passed through ``transform`` (on the last two
    dimensions), so they stay aligned with transformed samples."""
    return {name: None if getattr(latent, name) is None else transform(getattr(latent, name))
            for name in ("noise_mask", "masked_latent")}


def _pixels_per_latent(latent: LatentValue) -> int:
    width = latent.samples.shape[-1]
    return max(1, round(latent.width / width)) if latent.width else LATENT_FACTOR


# --------------------------------------------------------------------------- files


def save_latent_file(samples: Any, folder: Path, prefix: str, metadata: Mapping[str, str], node_id: str) -> Path:
    """Write ``samples`` as ``<prefix>_<NNNNN>_.latent`` (ComfyUI's safetensors layout: ``latent_tensor``
    and an empty ``latent_format_version_0``) under ``folder``: the next free number, through a
    temporary file linked into place, never overwriting a file."""
    import torch
    from safetensors.torch import save_file

    from nodes.comfy.save_extra import output_target

    target, _ = output_target(folder, prefix, node_id)  # inside folder, its subfolders made
    stem = target.name
    temporary = target.parent / f".{stem}.{secrets.token_hex(8)}.tmp"
    tensors = {"latent_tensor": samples.contiguous(), "latent_format_version_0": torch.tensor([])}
    try:
        save_file(tensors, str(temporary), metadata=dict(metadata))
        number = 1 + max((int(p.name[len(stem) + 1:-len("_" + LATENT_SUFFIX)])
                          for p in target.parent.glob(f"{stem}_*_{LATENT_SUFFIX}")
                          if p.name[len(stem) + 1:-len("_" + LATENT_SUFFIX)].isdigit()), default=0)
        while True:
            final = target.parent / f"{stem}_{number:05d}_{LATENT_SUFFIX}"
            try:
                os.link(temporary, final)  # atomic, and fails rather than overwrite
                return final
            except FileExistsError:
                number += 1
    except OSError as error:
        raise OSError(f"{node_id}: could not write {target}_*{LATENT_SUFFIX}: {error.strerror or error}; check "
                      "that the output folder is writable and has free space") from error
    finally:
        temporary.unlink(missing_ok=True)


def load_latent_file(path: Path) -> Any:
    """A .latent file's samples as ours (diffusion-scaled, float32). ``latent_format_version_0`` files
    (ComfyUI's and SaveLatent's) hold the raw VAE latent: it is scaled by the SD 1.x/2.x factor;
    older files without that key hold SD-scaled latents already and load as they are."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        keys = set(handle.keys())
        if "latent_tensor" not in keys:
            raise ValueError(f"LoadLatent: {path.name} has no 'latent_tensor'; it is not a .latent file "
                             "(SaveLatent writes them)")
        samples = handle.get_tensor("latent_tensor").float()
    return samples * SD_SCALE if "latent_format_version_0" in keys else samples


# --------------------------------------------------------------------------- nodes


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    def input_dir() -> Path:
        return Path(runtime.settings.input_dir)

    def latent_files() -> list[str]:
        return [name for name in list_files(input_dir(), (LATENT_SUFFIX,)) if "/" not in name]

    @node("InpaintModelConditioning", display_name="InpaintModelConditioning", category="conditioning/inpaint",
          compat=COMPAT)
    def inpaint_model_conditioning(
        positive: "CONDITIONING", negative: "CONDITIONING", vae: "VAE", pixels: "IMAGE", mask: "MASK",
        noise_mask: Bool(default=True, tooltip="also sample only inside the mask (off: the model repaints "
                                               "everywhere, guided by the masked image)"),
    ) -> Out(positive="CONDITIONING", negative="CONDITIONING", latent="LATENT"):
        """For inpainting models: the latent of the image, and (for the model's extra input channels) the
        mask and the latent of the image with the masked region (1 = repaint, rounded) set to grey. The
        image is centre-cropped to whole latent pixels; the mask is resized to it bilinearly."""
        import torch.nn.functional as F

        from sgm.data.image_ops import as_mask_batch
        from sgm.sampling.pix2pix import CONCAT_KEY

        vae = check_vae(vae, "InpaintModelConditioning")
        f = vae.downscale
        full_h, full_w = pixels.shape[1:3]
        height, width = full_h // f * f, full_w // f * f
        if height == 0 or width == 0:
            raise ValueError(f"InpaintModelConditioning: the image ({full_w}x{full_h}) is smaller than one latent "
                             f"pixel ({f}x{f})")
        mask = F.interpolate(as_mask_batch(mask).float()[:, None], size=(full_h, full_w), mode="bilinear")[:, 0]
        top, left = (full_h - height) // 2, (full_w - width) // 2
        pixels = pixels[:, top:top + height, left:left + width, :3]
        mask = mask[:, top:top + height, left:left + width]  # (B or 1, H, W)
        keep = (1.0 - mask.round())[..., None]
        blanked = (pixels - 0.5) * keep + 0.5  # the repaint region grey, as the model was trained
        node_id = "InpaintModelConditioning"
        masked_latent = encode_images(runtime, vae, blanked.permute(0, 3, 1, 2) * 2.0 - 1.0, False, node_id)
        samples = encode_images(runtime, vae, pixels.permute(0, 3, 1, 2) * 2.0 - 1.0, False, node_id)
        # ComfyUI's names; the raw (unscaled) latent, as InstructPixToPixConditioning stores it.
        extra = {CONCAT_KEY: masked_latent / vae.scale_factor, "concat_mask": mask}

        def with_concat(conditioning: Any) -> list[Any]:
            return [c.with_(extra={**c.extra, **extra}) for c in conditioning]

        latent = LatentValue(samples, noise_mask=mask if noise_mask else None, masked_latent=masked_latent,
                             width=width, height=height)
        return with_concat(positive), with_concat(negative), latent

    @node("LatentCompositeMasked", display_name="LatentCompositeMasked", category="latent", compat=COMPAT)
    def latent_composite_masked(
        destination: "LATENT", source: "LATENT", x: Int(**POSITION), y: Int(**POSITION),
        resize_source: Bool(default=False), mask: "MASK" = None,
    ) -> Out(LATENT="LATENT"):
        """Paste source into destination at (x, y) image pixels (multiples of 8), through the mask (resized
        to the source; 1 = source); resize_source first scales the source to the destination's size."""
        out = composite(destination.samples, source.samples, x, y, mask, LATENT_FACTOR, resize_source)
        return replace(destination, samples=out, empty=False)

    def pair(samples1: LatentValue, samples2: LatentValue) -> tuple[Any, Any]:
        """samples1's tensor and samples2's fitted to its size and batch."""
        first = samples1.samples
        return first, repeat_to_batch(fit_spatial(samples2.samples.to(first), *first.shape[-2:]), first.shape[0])

    @node("LatentAdd", display_name="LatentAdd", category="latent/advanced", compat=COMPAT)
    def latent_add(samples1: "LATENT", samples2: "LATENT") -> Out(LATENT="LATENT"):
        """samples1 + samples2 (samples2 resized and repeated to samples1's size and batch)."""
        first, second = pair(samples1, samples2)
        return replace(samples1, samples=first + second, empty=False)

    @node("LatentSubtract", display_name="LatentSubtract", category="latent/advanced", compat=COMPAT)
    def latent_subtract(samples1: "LATENT", samples2: "LATENT") -> Out(LATENT="LATENT"):
        """samples1 - samples2 (samples2 resized and repeated to samples1's size and batch)."""
        first, second = pair(samples1, samples2)
        return replace(samples1, samples=first - second, empty=False)

    @node("LatentMultiply", display_name="LatentMultiply", category="latent/advanced", compat=COMPAT)
    def latent_multiply(samples: "LATENT", multiplier: Float(default=1.0, min=-10.0, max=10.0, step=0.01)
                        ) -> Out(LATENT="LATENT"):
        """samples x multiplier."""
        return replace(samples, samples=samples.samples * multiplier, empty=False)

    @node("LatentInterpolate", display_name="LatentInterpolate", category="latent/advanced", compat=COMPAT)
    def latent_interpolate(samples1: "LATENT", samples2: "LATENT",
                           ratio: Float(default=1.0, min=0.0, max=1.0, step=0.01)) -> Out(LATENT="LATENT"):
        """Per latent pixel: the directions (channel vectors over their length) mixed ratio : 1 - ratio,
        renormalised, times the lengths mixed the same way (ratio 1 = samples1). Where a length is 0 its
        direction counts as 0."""
        import torch

        first, second = pair(samples1, samples2)
        norm1 = torch.linalg.vector_norm(first, dim=1, keepdim=True)  # (B, 1, h, w)
        norm2 = torch.linalg.vector_norm(second, dim=1, keepdim=True)
        mixed = torch.nan_to_num(first / norm1) * ratio + torch.nan_to_num(second / norm2) * (1.0 - ratio)
        direction = torch.nan_to_num(mixed / torch.linalg.vector_norm(mixed, dim=1, keepdim=True))
        return replace(samples1, samples=direction * (norm1 * ratio + norm2 * (1.0 - ratio)), empty=False)

    @node("LatentBatch", display_name="LatentBatch", category="latent/batch", compat=COMPAT)
    def latent_batch(samples1: "LATENT", samples2: "LATENT") -> Out(LATENT="LATENT"):
        """samples1's items then samples2's (resized to samples1's size); each item keeps its seed offset,
        so samples2's items get the seeds samples1's got (as in ComfyUI)."""
        import torch

        first = samples1.samples
        second = fit_spatial(samples2.samples.to(first), *first.shape[-2:])
        samples = torch.cat([first, second])
        index = (samples1.batch_index or tuple(range(samples1.batch))) + \
            (samples2.batch_index or tuple(range(samples2.batch)))
        return replace(samples1, samples=samples, empty=False, batch_index=index,
                       **_joined([samples1, replace(samples2, samples=second)], samples))

    @node("LatentFlip", display_name="Flip Latent", category="latent/transform", compat=COMPAT)
    def latent_flip(samples: "LATENT", flip_method: Choice(choices=FLIP_METHODS)) -> Out(LATENT="LATENT"):
        """Mirror the latent: x-axis flips top and bottom, y-axis left and right."""
        import torch

        dim = -2 if flip_method.startswith("x") else -1
        return replace(samples, samples=torch.flip(samples.samples, dims=[dim]),
                       **_spatial(samples, lambda t: torch.flip(t, dims=[dim])))

    @node("LatentRotate", display_name="Rotate Latent", category="latent/transform", compat=COMPAT)
    def latent_rotate(samples: "LATENT", rotation: Choice(choices=ROTATIONS)) -> Out(LATENT="LATENT"):
        """Rotate the latent clockwise by 90, 180 or 270 degrees."""
        import torch

        turns = ROTATIONS.index(rotation)
        if turns == 0:
            return samples

        def rotate(t: Any) -> Any:
            return torch.rot90(t, k=turns, dims=[-1, -2])  # from the width axis to the height axis: clockwise

        swap = turns % 2 == 1
        return replace(samples, samples=rotate(samples.samples), **_spatial(samples, rotate),
                       width=samples.height if swap else samples.width,
                       height=samples.width if swap else samples.height)

    @node("LatentCrop", display_name="Crop Latent", category="latent/transform", compat=COMPAT)
    def latent_crop(
        samples: "LATENT",
        width: Int(default=512, min=64, max=16384, step=8),
        height: Int(default=512, min=64, max=16384, step=8),
        x: Int(**POSITION), y: Int(**POSITION),
    ) -> Out(LATENT="LATENT"):
        """The width x height pixel rectangle at (x, y) (all in multiples of 8); the corner moves in so at
        least 8 latent pixels (64 image pixels) stay, and the rectangle is clipped to the latent."""
        h, w = samples.samples.shape[-2:]
        left = max(0, min(x // LATENT_FACTOR, w - 8))
        top = max(0, min(y // LATENT_FACTOR, h - 8))
        right, bottom = min(w, left + width // LATENT_FACTOR), min(h, top + height // LATENT_FACTOR)

        def crop(t: Any) -> Any:
            fy, fx = t.shape[-2] / h, t.shape[-1] / w  # a noise mask may be at image resolution
            return t[..., round(top * fy):round(bottom * fy), round(left * fx):round(right * fx)].clone()

        f = _pixels_per_latent(samples)
        return replace(samples, samples=crop(samples.samples), **_spatial(samples, crop), empty=False,
                       width=(right - left) * f, height=(bottom - top) * f)

    @node("RebatchLatents", display_name="Rebatch Latents", category="latent/batch", compat=COMPAT,
          input_is_list=True, output_is_list=(True,))
    def rebatch_latents(latents: "LATENT", batch_size: Int(default=1, min=1, max=4096)) -> Out(LATENT="LATENT"):
        """Regroup a list of latent batches into batches of batch_size items, in order; a change of latent
        size starts a new batch. Items keep their seed offsets (ones without continue the count)."""
        import torch

        size = batch_size[0] if isinstance(batch_size, list) else batch_size
        groups: list[list[LatentValue]] = []  # runs of same-size latents, each with its seed offsets
        seen = 0
        for latent in latents:
            offsets = latent.batch_index or tuple(range(seen, seen + latent.batch))
            seen += latent.batch
            if not groups or groups[-1][0].samples.shape[-2:] != latent.samples.shape[-2:]:
                groups.append([])
            groups[-1].append(replace(latent, batch_index=tuple(offsets)))
        out = []
        for parts in groups:
            samples = torch.cat([p.samples for p in parts])
            joined = _joined(parts, samples)
            index = sum((p.batch_index for p in parts), ())
            for start in range(0, samples.shape[0], size):
                stop = start + size
                pick = {k: None if v is None else v[start:stop] for k, v in joined.items()}
                if pick["noise_mask"] is not None and bool((pick["noise_mask"] == 1).all()):
                    pick["noise_mask"] = None  # nothing is kept: no mask, as ComfyUI drops it
                out.append(replace(parts[0], samples=samples[start:stop], batch_index=index[start:stop],
                                   empty=all(p.empty for p in parts), **pick))
        return out

    @node("LatentBatchSeedBehavior", display_name="LatentBatchSeedBehavior", category="latent/advanced",
          compat=COMPAT)
    def latent_batch_seed_behavior(samples: "LATENT", seed_behavior: Choice(choices=SEED_BEHAVIORS, default="fixed")
                                   ) -> Out(LATENT="LATENT"):
        """fixed: every item gets the first item's seed offset (the same noise); random: the offsets are
        forgotten, so items get seed, seed + 1, ..."""
        if seed_behavior == "random":
            return replace(samples, batch_index=None)
        first = samples.batch_index[0] if samples.batch_index else 0
        return replace(samples, batch_index=(first,) * samples.batch)

    @node("SaveLatent", display_name="SaveLatent", category="_for_testing", compat=COMPAT, output=True,
          hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"})
    def save_latent(samples: "LATENT", filename_prefix: Text(default="latents/ComfyUI"),
                    ctx: Context = None) -> None:
        """Save the latent in output/ as <prefix>_00001_.latent (ComfyUI's safetensors layout, with the
        prompt as metadata). The file holds the raw VAE latent as ComfyUI's do, unscaled by the SD 1.x/2.x
        factor: exact for those models in ComfyUI too; an SDXL latent reads back exactly here, while
        ComfyUI would see it off by the ratio of the two factors."""
        services = ctx.services if ctx is not None else {}
        settings = services.get("settings", runtime.settings)
        folder = Path(services.get("output_dir") or settings.output_dir)
        metadata: dict[str, str] = {}
        if services.get("prompt") is not None:
            metadata["prompt"] = json.dumps(services["prompt"])
        for key, value in (services.get("extra_pnginfo") or {}).items():
            metadata[str(key)] = json.dumps(value)
        path = save_latent_file(samples.samples / SD_SCALE, folder, filename_prefix, metadata, "SaveLatent")
        subfolder = path.parent.resolve().relative_to(folder.resolve()).as_posix()
        entry = {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                 "type": "output"}
        return Result(values=(), ui={"latents": [entry]})

    def load_fingerprint(**literals: Any) -> Any:
        return file_fingerprint(confined(input_dir(), str(literals.get("latent"))))

    @node("LoadLatent", display_name="LoadLatent", category="_for_testing", compat=COMPAT,
          fingerprint=load_fingerprint)
    def load_latent(latent: Choice(choices=latent_files)) -> Out(LATENT="LATENT"):
        """Load a .latent file from input/ (SaveLatent's, or ComfyUI's)."""
        path = confined(input_dir(), latent)
        if path is None or not path.is_file():
            raise FileNotFoundError(f"LoadLatent: latent {latent!r} is not in {input_dir()}; put the .latent file "
                                    "there (SaveLatent writes them to output/latents) and pick it again")
        return LatentValue(load_latent_file(path))

    return [inpaint_model_conditioning, latent_composite_masked, *layout_nodes(), *operation_nodes(), latent_add, latent_subtract, latent_multiply,
            latent_interpolate, latent_batch, latent_flip, latent_rotate, latent_crop, rebatch_latents,
            latent_batch_seed_behavior, save_latent, load_latent]


# --------------------------------------------------------------------------- concat, cut, operations


def layout_nodes() -> list[NodeSpec]:
    @node("LatentConcat", display_name="LatentConcat", category="latent/advanced", compat=COMPAT)
    def latent_concat(samples1: "LATENT", samples2: "LATENT", dim: Choice(choices=CONCAT_DIMS)
                      ) -> Out(LATENT="LATENT"):
        """samples2 beside samples1: x = to its right, y = below it, -x / -y = before it (samples2's batch is
        repeated or cut to samples1's). Noise masks follow (ones where a part has none)."""
        import torch

        from sgm.sampling.latent_operations import concat_latents

        samples = concat_latents(samples1.samples, samples2.samples, dim)
        axis = -1 if "x" in dim else -2
        second = replace(samples2, samples=repeat_to_batch(samples2.samples, samples1.batch),
                         noise_mask=None if samples2.noise_mask is None else
                         repeat_to_batch(samples2.noise_mask, samples1.batch))
        parts = (second, samples1) if dim.startswith("-") else (samples1, second)
        fields: dict[str, Any] = {"noise_mask": None, "masked_latent": None}
        if any(p.noise_mask is not None for p in parts):
            fields["noise_mask"] = torch.cat([_item_masks(p, *p.samples.shape[-2:]) for p in parts], dim=axis)
        if any(p.masked_latent is not None for p in parts):
            fields["masked_latent"] = torch.cat(
                [torch.zeros_like(p.samples) if p.masked_latent is None else
                 repeat_to_batch(p.masked_latent, p.samples.shape[0]) for p in parts], dim=axis)
        f = _pixels_per_latent(samples1)
        return replace(samples1, samples=samples, empty=False, width=samples.shape[-1] * f,
                       height=samples.shape[-2] * f, **fields)

    @node("LatentCut", display_name="LatentCut", category="latent/advanced", compat=COMPAT)
    def latent_cut(samples: "LATENT", dim: Choice(choices=CUT_DIMS),
                   index: Int(default=0, min=-16384, max=16384, step=1),
                   amount: Int(default=1, min=1, max=16384, step=1)) -> Out(LATENT="LATENT"):
        """``amount`` latent columns (x) or rows (y) from ``index`` (negative: counted from the end), clamped
        to the latent. The noise mask is cut alike."""
        from sgm.sampling.latent_operations import cut_latent, cut_range

        out = cut_latent(samples.samples, dim, index, amount)
        axis = -1 if dim == "x" else -2
        size = samples.samples.shape[axis]
        start, length = cut_range(size, index, amount)

        def cut(t: Any) -> Any:
            factor = t.shape[axis] / size  # a noise mask may be at image resolution
            return t.narrow(axis, round(start * factor), round(length * factor)).clone()

        f = _pixels_per_latent(samples)
        return replace(samples, samples=out, **_spatial(samples, cut), empty=False,
                       width=out.shape[-1] * f, height=out.shape[-2] * f)

    return [latent_concat, latent_cut]


def operation_nodes() -> list[NodeSpec]:
    @node("LatentOperationTonemapReinhard", display_name="LatentOperationTonemapReinhard", category=OPERATIONS,
          compat=COMPAT)
    def latent_operation_tonemap_reinhard(multiplier: Float(default=1.0, min=0.0, max=100.0, step=0.01)
                                          ) -> Out(LATENT_OPERATION="LATENT_OPERATION"):
        """Reinhard tonemapping of each latent pixel's channel length: compresses outlying magnitudes
        (``sgm.sampling.latent_operations.TonemapReinhard``)."""
        from sgm.sampling.latent_operations import TonemapReinhard

        return TonemapReinhard(float(multiplier))

    @node("LatentOperationSharpen", display_name="LatentOperationSharpen", category=OPERATIONS, compat=COMPAT)
    def latent_operation_sharpen(
        sharpen_radius: Int(default=9, min=1, max=31, step=1),
        sigma: Float(default=1.0, min=0.1, max=10.0, step=0.1),
        alpha: Float(default=0.1, min=0.0, max=5.0, step=0.01),
    ) -> Out(LATENT_OPERATION="LATENT_OPERATION"):
        """Unsharp masking of the latent's per-pixel directions (``sgm.sampling.latent_operations.Sharpen``)."""
        from sgm.sampling.latent_operations import Sharpen

        return Sharpen(int(sharpen_radius), float(sigma), float(alpha))

    @node("LatentApplyOperation", display_name="LatentApplyOperation", category=OPERATIONS, compat=COMPAT)
    def latent_apply_operation(samples: "LATENT", operation: "LATENT_OPERATION") -> Out(LATENT="LATENT"):
        """The latent operation applied to the samples."""
        try:
            out = operation(samples.samples)
        except ValueError as error:
            raise ValueError(f"LatentApplyOperation: {error}") from error
        return replace(samples, samples=out, empty=False)

    @node("LatentApplyOperationCFG", display_name="LatentApplyOperationCFG", category=OPERATIONS, compat=COMPAT)
    def latent_apply_operation_cfg(model: "MODEL", operation: "LATENT_OPERATION") -> Out(MODEL="MODEL"):
        """The model with the operation applied to the guidance (cond - uncond) of every step before CFG
        (``sgm.sampling.guiders_extra.LatentOperationCFG``)."""
        from sgm.sampling.guiders_extra import LatentOperationCFG

        return replace(model, guidance_patches=model.guidance_patches + (LatentOperationCFG(operation),))

    return [latent_operation_tonemap_reinhard, latent_operation_sharpen, latent_apply_operation,
            latent_apply_operation_cfg]
