"""Latent nodes: empty latents, VAE encoding, masks, upscaling and batch picking."""

import functools
from dataclasses import replace
from typing import Any

from engine.api import Bool, Choice, Int, NodeSpec, Out, node
from nodes.runtime import Runtime
from nodes.values import LatentValue, VaeValue

UPSCALE_METHODS = ("nearest-exact", "bilinear", "bicubic", "area")
CROP_MODES = ("disabled", "center")
# Image tile sizes a plain encode falls back to, in order, when it runs out of memory.
TILED_FALLBACK_PIXELS = (512, 256, 128)


def center_crop(tensor: Any, width: int, height: int) -> Any:
    """(..., H, W) -> the centred crop with the aspect ratio width:height (no resize)."""
    h, w = tensor.shape[-2:]
    old, new = w / h, width / height
    if old > new:  # too wide: trim left and right
        x = round((w - w * new / old) / 2)
        return tensor[..., :, x:w - x]
    if old < new:  # too tall: trim top and bottom
        y = round((h - h * old / new) / 2)
        return tensor[..., y:h - y, :]
    return tensor


def image_to_vae_input(image: Any, downscale: int) -> Any:
    """IMAGE (B, H, W, 3) in [0, 1] -> (B, 3, H', W') in [-1, 1], H' and W' cropped to
    multiples of ``downscale`` (centred)."""
    height, width = image.shape[1] // downscale * downscale, image.shape[2] // downscale * downscale
    if height == 0 or width == 0:
        raise ValueError(f"image of {image.shape[2]}x{image.shape[1]} is smaller than one latent pixel "
                         f"({downscale}x{downscale})")
    top, left = (image.shape[1] - height) // 2, (image.shape[2] - width) // 2
    image = image[:, top:top + height, left:left + width, :3]
    return image.permute(0, 3, 1, 2) * 2.0 - 1.0


def encode_images(runtime: Runtime, vae: VaeValue, pixels: Any, tiled: bool, node_id: str,
                  tiles: tuple[int, int] | None = None) -> Any:
    """(B, 3, H, W) in [-1, 1] -> scaled latent (B, C, H/f, W/f), CPU float32; ``tiles`` =
    (tile size, overlap) in image pixels when tiled (the library's defaults when None)."""
    import torch

    def work(tiled: bool = tiled, tiles: tuple[int, int] | None = tiles) -> Any:
        with runtime.models.use(vae.vae) as device, torch.no_grad():
            x = pixels.to(device)
            if tiled:
                latent = vae.vae.encode_tiled(x, *tiles) if tiles else vae.vae.encode_tiled(x)
            else:
                latent = vae.vae.encode(x)
        return latent.float().cpu() * vae.scale_factor

    # Out of memory even with the device emptied: encode in tiles, smaller each time (image pixels).
    fallbacks = [(f"tiled encode ({size}x{size} pixel tiles)", functools.partial(work, True, (size, size // 8)))
                 for size in TILED_FALLBACK_PIXELS if not tiled or (tiles or (512, 64))[0] > size]
    return runtime.models.retry_on_oom(work, f"{node_id} (VAE encode)", fallbacks)


def check_vae(vae: Any, node_id: str) -> VaeValue:
    if vae is None or getattr(vae, "vae", None) is None:
        raise ValueError(f"{node_id}: the VAE input is empty (the checkpoint has no VAE); "
                         "load one with LoadVAE and link it here")
    return vae


def nodes(runtime: Runtime) -> list[NodeSpec]:
    @node("EmptyLatent", display_name="Empty Latent Image", category="latent")
    def empty_latent(
        width: Int(min=16, max=16384, step=8) = 512,
        height: Int(min=16, max=16384, step=8) = 512,
        batch_size: Int(min=1, max=4096) = 1,
    ) -> Out(latent="LATENT"):
        """A blank latent batch to generate into (txt2img); width and height are image pixels."""
        import torch

        if width % 8 or height % 8:
            raise ValueError(f"EmptyLatent: width and height must be multiples of 8, got {width}x{height}")
        samples = torch.zeros(batch_size, 4, height // 8, width // 8)  # (B, 4, H/8, W/8)
        return LatentValue(samples, empty=True, width=width, height=height)

    @node("EncodeLatent", display_name="VAE Encode", category="latent")
    def encode_latent(
        vae: "VAE",
        image: "IMAGE",
        mask: "MASK" = None,
        tiled: Bool(tooltip="encode in overlapping tiles to bound memory on large images") = False,
    ) -> Out(latent="LATENT"):
        """Encode images into the latent space (img2img). With a mask (1 = repaint), the latent
        carries it as its noise mask, plus the masked image's latent for inpainting models."""
        import torch

        vae = check_vae(vae, "EncodeLatent")
        pixels = image_to_vae_input(image, vae.downscale)
        samples = encode_images(runtime, vae, pixels, tiled, "EncodeLatent")
        if mask is None:
            return LatentValue(samples, width=pixels.shape[-1], height=pixels.shape[-2])
        mask = _fit_mask(mask, pixels.shape[-2:])
        keep = (mask < 0.5).float()[:, None]  # (B or 1, 1, H, W)
        masked = encode_images(runtime, vae, pixels * keep, tiled, "EncodeLatent")  # repaint region -> grey (0)
        return LatentValue(samples, noise_mask=mask, masked_latent=masked,
                           width=pixels.shape[-1], height=pixels.shape[-2])

    @node("SetLatentMask", display_name="Set Latent Noise Mask", category="latent")
    def set_latent_mask(latent: "LATENT", mask: "MASK") -> Out(latent="LATENT"):
        """Only sample where the mask is 1; elsewhere the latent is kept (inpainting with any model)."""
        if mask.ndim not in (2, 3):
            raise ValueError(f"SetLatentMask: mask must be (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
        return replace(latent, noise_mask=mask if mask.ndim == 3 else mask[None])

    @node("ScaleLatent", display_name="Scale Latent", category="latent")
    def scale_latent(
        latent: "LATENT",
        width: Int(min=16, max=16384, step=8, tooltip="target image width in pixels") = 1024,
        height: Int(min=16, max=16384, step=8, tooltip="target image height in pixels") = 1024,
        method: Choice(choices=UPSCALE_METHODS) = "nearest-exact",
        crop: Choice(choices=CROP_MODES, tooltip="center: crop to the target aspect ratio first") = "disabled",
    ) -> Out(latent="LATENT"):
        """Resize a latent to a new image size (for a second, refining pass: hires fix)."""
        import torch.nn.functional as F

        f = max(1, round(latent.width / latent.samples.shape[-1])) if latent.width else 8  # image px per latent px
        size = (max(1, height // f), max(1, width // f))
        kwargs = {"align_corners": False} if method in ("bilinear", "bicubic") else {}

        def cropped(t: Any) -> Any:
            return center_crop(t, width, height) if crop == "center" else t

        samples = F.interpolate(cropped(latent.samples), size=size, mode=method, **kwargs)
        masked = latent.masked_latent
        if masked is not None:
            masked = F.interpolate(cropped(masked), size=size, mode="bilinear")
        noise_mask = latent.noise_mask
        if noise_mask is not None:
            noise_mask = F.interpolate(cropped(noise_mask)[:, None].float(), size=(height, width),
                                       mode="bilinear")[:, 0]
        return replace(latent, samples=samples, masked_latent=masked, noise_mask=noise_mask,
                       width=width, height=height, empty=latent.empty)

    @node("SliceLatentBatch", display_name="Slice Latent Batch", category="latent")
    def slice_latent_batch(
        latent: "LATENT",
        batch_index: Int(min=0, max=4095, tooltip="first item to take (0-based)") = 0,
        length: Int(min=1, max=4096, tooltip="how many items to take") = 1,
    ) -> Out(latent="LATENT"):
        """Pick items of a latent batch; they keep their seed offsets, so re-sampling one item
        reproduces it as it was in the batch."""
        if batch_index >= latent.batch:
            raise ValueError(f"SliceLatentBatch: batch_index {batch_index} is outside the batch of {latent.batch}")
        stop = min(latent.batch, batch_index + length)
        old = latent.batch_index or tuple(range(latent.batch))

        def pick(t: Any) -> Any:  # per-item tensors are sliced; batch-1 (broadcast) ones kept
            return t if t is None or t.shape[0] == 1 else t[batch_index:stop]

        return replace(latent, samples=latent.samples[batch_index:stop], noise_mask=pick(latent.noise_mask),
                       masked_latent=pick(latent.masked_latent), batch_index=old[batch_index:stop])

    return [empty_latent, encode_latent, set_latent_mask, scale_latent, slice_latent_batch]


def repeat_latent(latent: LatentValue, amount: int) -> LatentValue:
    """The batch repeated ``amount`` times: samples, per-item masks and masked latents (batch-1
    ones broadcast and stay), and the items' seed offsets (each copy continues past the last)."""
    if amount < 1:
        raise ValueError(f"amount must be at least 1, got {amount}")

    def repeat(t: Any) -> Any:
        return t if t is None or t.shape[0] == 1 else t.repeat(amount, *([1] * (t.ndim - 1)))

    batch_index = latent.batch_index
    if batch_index is not None:
        span = max(batch_index) - min(batch_index) + 1
        batch_index = tuple(i + copy * span for copy in range(amount) for i in batch_index)
    return replace(latent, samples=latent.samples.repeat(amount, *([1] * (latent.samples.ndim - 1))),
                   noise_mask=repeat(latent.noise_mask), masked_latent=repeat(latent.masked_latent),
                   batch_index=batch_index)


def _fit_mask(mask: Any, size: Any) -> Any:
    """(H, W) / (B, H, W) mask -> (B or 1, H', W') float at the encoded image's size
    (resized bilinearly when the image was scaled or cropped to a multiple of the VAE factor)."""
    import torch.nn.functional as F

    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"EncodeLatent: mask must be (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
    height, width = int(size[0]), int(size[1])
    if tuple(mask.shape[-2:]) == (height, width):
        return mask.float()
    return F.interpolate(mask[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
