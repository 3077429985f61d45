"""ComfyUI's latent and sampling nodes, over ours (``nodes.latents``, ``nodes.sampling``,
``nodes.images``' decoder)."""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from engine.api import Choice, Context, Float, Int, NodeSpec, Out, node
from nodes.comfy import COMPAT, call
from nodes.images import decode_latent
from nodes.latents import CROP_MODES, check_vae, encode_images, image_to_vae_input, repeat_latent
from nodes.runtime import Runtime
from nodes.sampling import SEED_MAX, sampler_names, scheduler_names
from nodes.values import LatentValue

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
SUPPORTED_UPSCALE = ("nearest-exact", "bilinear", "area", "bicubic")
TILE_SIZE = dict(default=512, min=64, max=4096)
OVERLAP = dict(default=64, min=0, max=4096, step=32)
TEMPORAL_SIZE = dict(default=64, min=8, max=4096, step=4)
TEMPORAL_OVERLAP = dict(default=8, min=4, max=4096, step=4)


def check_method(method: str, node_id: str) -> None:
    if method not in SUPPORTED_UPSCALE:
        raise ValueError(f"{node_id}: upscale_method {method!r} is not supported here; use one of "
                         f"{', '.join(SUPPORTED_UPSCALE)}")


def tile_overlap(tile_size: int, overlap: int) -> tuple[int, int]:
    """ComfyUI's rule: the overlap is at most a quarter of the tile."""
    return tile_size, min(overlap, tile_size // 4)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    @node("EmptyLatentImage", display_name="Empty Latent Image", category="latent", compat=COMPAT)
    def empty_latent_image(
        width: Int(default=512, min=16, max=16384, step=8),
        height: Int(default=512, min=16, max=16384, step=8),
        batch_size: Int(default=1, min=1, max=4096),
    ) -> Out(LATENT="LATENT"):
        """A blank latent batch to generate into; sizes are rounded down to multiples of 8 (latentflow's
        EmptyLatent)."""
        return call(ours, "EmptyLatent", width=width // 8 * 8, height=height // 8 * 8, batch_size=batch_size)

    @node("KSampler", display_name="KSampler", category="sampling", compat=COMPAT)
    def ksampler(
        model: "MODEL",
        seed: Int(default=0, min=0, max=SEED_MAX, control_after_generate=True),
        steps: Int(default=20, min=1, max=10000),
        cfg: Float(default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        sampler_name: Choice(choices=sampler_names),
        scheduler: Choice(choices=scheduler_names),
        positive: "CONDITIONING",
        negative: "CONDITIONING",
        latent_image: "LATENT",
        denoise: Float(default=1.0, min=0.0, max=1.0, step=0.01),
        ctx: Context = None,
    ) -> Out(LATENT="LATENT"):
        """Denoise a latent with a model, prompts, sampler and schedule; batch item i uses seed + i (latentflow's
        SampleLatent)."""
        return call(ours, "SampleLatent", model=model, positive=positive, negative=negative, latent=latent_image,
                    seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                    denoise=denoise, ctx=ctx)

    @node("VAEDecode", display_name="VAE Decode", category="latent", compat=COMPAT)
    def vae_decode(samples: "LATENT", vae: "VAE") -> Out(IMAGE="IMAGE"):
        """Turn a latent into images with the VAE (latentflow's Decode)."""
        return call(ours, "Decode", vae=vae, latent=samples)

    @node("VAEEncode", display_name="VAE Encode", category="latent", compat=COMPAT)
    def vae_encode(pixels: "IMAGE", vae: "VAE") -> Out(LATENT="LATENT"):
        """Encode images into the latent space, centre-cropped to a multiple of 8 (latentflow's EncodeLatent)."""
        return call(ours, "EncodeLatent", vae=vae, image=pixels)

    @node("VAEDecodeTiled", display_name="VAE Decode (Tiled)", category="_for_testing", compat=COMPAT)
    def vae_decode_tiled(
        samples: "LATENT",
        vae: "VAE",
        tile_size: Int(step=32, **TILE_SIZE),
        overlap: Int(**OVERLAP),
        temporal_size: Int(tooltip="video VAEs only; unused by image VAEs", **TEMPORAL_SIZE),
        temporal_overlap: Int(tooltip="video VAEs only; unused by image VAEs", **TEMPORAL_OVERLAP),
    ) -> Out(IMAGE="IMAGE"):
        """Decode in tiles of tile_size image pixels overlapping by overlap (at most
        a quarter of a tile). The temporal inputs only concern video VAEs."""
        vae = check_vae(vae, "VAEDecodeTiled")
        tile, shared = tile_overlap(tile_size, overlap)
        f = vae.downscale
        return decode_latent(runtime, vae, samples, True, "VAEDecodeTiled", tiles=(tile // f, shared // f))

    @node("VAEEncodeTiled", display_name="VAE Encode (Tiled)", category="_for_testing", compat=COMPAT)
    def vae_encode_tiled(
        pixels: "IMAGE",
        vae: "VAE",
        tile_size: Int(step=64, **TILE_SIZE),
        overlap: Int(**OVERLAP),
        temporal_size: Int(tooltip="video VAEs only; unused by image VAEs", **TEMPORAL_SIZE),
        temporal_overlap: Int(tooltip="video VAEs only; unused by image VAEs", **TEMPORAL_OVERLAP),
    ) -> Out(LATENT="LATENT"):
        """Encode in tiles of tile_size image pixels overlapping by overlap (at most a quarter of a tile)."""
        vae = check_vae(vae, "VAEEncodeTiled")
        f = vae.downscale
        tile, shared = tile_overlap(tile_size, overlap)
        tile, shared = tile // f * f, shared // f * f  # the encoder needs multiples of its factor
        x = image_to_vae_input(pixels, f)
        samples = encode_images(runtime, vae, x, True, "VAEEncodeTiled", tiles=(tile, shared))
        return LatentValue(samples, width=x.shape[-1], height=x.shape[-2])

    @node("LatentUpscale", display_name="Upscale Latent", category="latent", compat=COMPAT)
    def latent_upscale(
        samples: "LATENT",
        upscale_method: Choice(choices=UPSCALE_METHODS),
        width: Int(default=512, min=0, max=16384, step=8),
        height: Int(default=512, min=0, max=16384, step=8),
        crop: Choice(choices=CROP_MODES),
    ) -> Out(LATENT="LATENT"):
        """Resize a latent to width x height pixels (latentflow's ScaleLatent); 0 for one of them keeps the aspect
        ratio, 0 for both keeps the latent; sizes under 64 become 64 (as in ComfyUI)."""
        check_method(upscale_method, "LatentUpscale")
        if width == 0 and height == 0:
            return samples
        h, w = samples.samples.shape[-2:]
        if width == 0:
            height = max(64, height)
            width = max(64, round(w * height / h))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(h * width / w))
        else:
            width, height = max(64, width), max(64, height)
        return call(ours, "ScaleLatent", latent=samples, width=width, height=height, method=upscale_method, crop=crop)

    @node("LatentUpscaleBy", display_name="Upscale Latent By", category="latent", compat=COMPAT)
    def latent_upscale_by(
        samples: "LATENT",
        upscale_method: Choice(choices=UPSCALE_METHODS),
        scale_by: Float(default=1.5, min=0.01, max=8.0, step=0.01),
    ) -> Out(LATENT="LATENT"):
        """Resize a latent by a factor (latentflow's ScaleLatent)."""
        check_method(upscale_method, "LatentUpscaleBy")
        h, w = samples.samples.shape[-2:]
        f = max(1, round(samples.width / w)) if samples.width else 8  # image pixels per latent pixel
        return call(ours, "ScaleLatent", latent=samples, width=round(w * scale_by) * f,
                    height=round(h * scale_by) * f, method=upscale_method)

    @node("LatentFromBatch", display_name="Latent From Batch", category="latent/batch", compat=COMPAT)
    def latent_from_batch(
        samples: "LATENT",
        batch_index: Int(default=0, min=0, max=63),
        length: Int(default=1, min=1, max=64),
    ) -> Out(LATENT="LATENT"):
        """Pick items of a latent batch; an index past the batch picks its last item (latentflow's
        SliceLatentBatch)."""
        batch_index = min(samples.batch - 1, batch_index)
        return call(ours, "SliceLatentBatch", latent=samples, batch_index=batch_index,
                    length=min(samples.batch - batch_index, length))

    @node("RepeatLatentBatch", display_name="Repeat Latent Batch", category="latent/batch", compat=COMPAT)
    def repeat_latent_batch(samples: "LATENT", amount: Int(default=1, min=1, max=64)) -> Out(LATENT="LATENT"):
        """The batch repeated amount times (with its masks and seed offsets)."""
        return repeat_latent(samples, amount)

    @node("SetLatentNoiseMask", display_name="Set Latent Noise Mask", category="latent/inpaint", compat=COMPAT)
    def set_latent_noise_mask(samples: "LATENT", mask: "MASK") -> Out(LATENT="LATENT"):
        """Sample only where the mask is 1 (latentflow's SetLatentMask)."""
        return call(ours, "SetLatentMask", latent=samples, mask=mask.reshape(-1, *mask.shape[-2:]))

    @node("VAEEncodeForInpaint", display_name="VAE Encode (for Inpainting)", category="latent/inpaint",
          compat=COMPAT)
    def vae_encode_for_inpaint(
        pixels: "IMAGE",
        vae: "VAE",
        mask: "MASK",
        grow_mask_by: Int(default=6, min=0, max=64, step=1),
    ) -> Out(LATENT="LATENT"):
        """Encode the images with the masked region (1 = repaint) set to grey; the latent's noise mask is the
        mask grown by grow_mask_by pixels, so the repaint blends in (best with an inpainting model)."""
        import torch.nn.functional as F

        from sgm.data.image_ops import as_mask_batch, inpaint_pixels_and_mask

        vae = check_vae(vae, "VAEEncodeForInpaint")
        f = vae.downscale
        height, width = pixels.shape[1] // f * f, pixels.shape[2] // f * f
        if height == 0 or width == 0:
            raise ValueError(f"VAEEncodeForInpaint: the image ({pixels.shape[2]}x{pixels.shape[1]}) is smaller "
                             f"than one latent pixel ({f}x{f})")
        mask = as_mask_batch(mask).float()
        if tuple(mask.shape[-2:]) != tuple(pixels.shape[1:3]):
            mask = F.interpolate(mask[:, None], size=pixels.shape[1:3], mode="bilinear")[:, 0]
        top, left = (pixels.shape[1] - height) // 2, (pixels.shape[2] - width) // 2
        pixels = pixels[:, top:top + height, left:left + width, :3]
        mask = mask[:, top:top + height, left:left + width]
        blanked, noise_mask = inpaint_pixels_and_mask(pixels, mask, grow_mask_by)
        samples = encode_images(runtime, vae, blanked.permute(0, 3, 1, 2) * 2.0 - 1.0, False, "VAEEncodeForInpaint")
        return LatentValue(samples, noise_mask=noise_mask, masked_latent=samples, width=width, height=height)

    @node("LatentComposite", display_name="Latent Composite", category="latent", compat=COMPAT)
    def latent_composite(
        samples_to: "LATENT",
        samples_from: "LATENT",
        x: Int(default=0, min=0, max=16384, step=8),
        y: Int(default=0, min=0, max=16384, step=8),
        feather: Int(default=0, min=0, max=16384, step=8),
    ) -> Out(LATENT="LATENT"):
        """Paste samples_from into samples_to at (x, y) image pixels (multiples of 8), fading in over feather
        pixels on the sides inside samples_to."""
        from sgm.data.image_ops import latent_composite as composite

        out = composite(samples_to.samples, samples_from.samples, x // 8, y // 8, feather // 8)
        return replace(samples_to, samples=out, empty=False)

    @node("LatentBlend", display_name="Latent Blend", category="_for_testing", compat=COMPAT)
    def latent_blend(samples1: "LATENT", samples2: "LATENT",
                     blend_factor: Float(default=0.5, min=0, max=1, step=0.01)) -> Out(LATENT="LATENT"):
        """blend_factor x samples1 + (1 - blend_factor) x samples2 (samples2 resized to samples1 where they
        differ)."""
        import torch.nn.functional as F

        first, second = samples1.samples, samples2.samples
        if second.shape != first.shape:
            second = F.interpolate(second, size=first.shape[-2:], mode="bicubic", align_corners=False)
        return replace(samples1, samples=first * blend_factor + second * (1 - blend_factor), empty=False)

    return [empty_latent_image, ksampler, vae_decode, vae_encode, vae_decode_tiled, vae_encode_tiled,
            latent_upscale, latent_upscale_by, latent_from_batch, repeat_latent_batch, set_latent_noise_mask,
            vae_encode_for_inpaint, latent_composite, latent_blend]
