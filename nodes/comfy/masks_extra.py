"""ComfyUI's colour-to-mask, alpha and Porter-Duff compositing nodes and the mask preview.

ComfyUI's masks are inverted alpha (1 = transparent = repaint): JoinImageWithAlpha takes a mask and
stores 1 - mask as alpha, SplitImageWithAlpha gives 1 - alpha, and PorterDuffImageComposite reads
its *_alpha masks and writes its mask output the same way.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from engine.api import Choice, Context, NodeSpec, Out, node
from nodes.comfy import COMPAT
from nodes.comfy.image_extra import color_int
from nodes.runtime import Runtime

EPSILON = 1e-5  # below this output alpha a pixel is transparent black


class PorterDuff(Enum):
    """Porter & Duff (1984), "Compositing Digital Images", table 1, plus the separable blend modes
    darken, lighten, multiply, overlay and screen on premultiplied colour."""

    ADD = "ADD"
    CLEAR = "CLEAR"
    DARKEN = "DARKEN"
    DST = "DST"
    DST_ATOP = "DST_ATOP"
    DST_IN = "DST_IN"
    DST_OUT = "DST_OUT"
    DST_OVER = "DST_OVER"
    LIGHTEN = "LIGHTEN"
    MULTIPLY = "MULTIPLY"
    OVERLAY = "OVERLAY"
    SCREEN = "SCREEN"
    SRC = "SRC"
    SRC_ATOP = "SRC_ATOP"
    SRC_IN = "SRC_IN"
    SRC_OUT = "SRC_OUT"
    SRC_OVER = "SRC_OVER"
    XOR = "XOR"


def porter_duff(src: Any, src_a: Any, dst: Any, dst_a: Any, mode: PorterDuff) -> tuple[Any, Any]:
    """Composite straight-alpha colours ``src``/``dst`` (..., C) with alphas ``src_a``/``dst_a``
    (..., 1), all in [0, 1]; returns (straight colour clamped to 0..1, alpha). Inside, colours are
    premultiplied: Cs = src * As, Cd = dst * Ad."""
    import torch

    a_s, a_d = src_a, dst_a
    c_s, c_d = src * a_s, dst * a_d
    union = a_s + a_d - a_s * a_d
    rules: dict[PorterDuff, Any] = {
        PorterDuff.ADD: lambda: ((c_s + c_d).clamp(0, 1), (a_s + a_d).clamp(0, 1)),
        PorterDuff.CLEAR: lambda: (torch.zeros_like(c_d), torch.zeros_like(a_d)),
        PorterDuff.DARKEN: lambda: ((1 - a_d) * c_s + (1 - a_s) * c_d + torch.minimum(c_s, c_d), union),
        PorterDuff.DST: lambda: (c_d, a_d),
        PorterDuff.DST_ATOP: lambda: (a_s * c_d + (1 - a_d) * c_s, a_s),
        PorterDuff.DST_IN: lambda: (c_d * a_s, a_s * a_d),
        PorterDuff.DST_OUT: lambda: ((1 - a_s) * c_d, (1 - a_s) * a_d),
        PorterDuff.DST_OVER: lambda: (c_d + (1 - a_d) * c_s, a_d + (1 - a_d) * a_s),
        PorterDuff.LIGHTEN: lambda: ((1 - a_d) * c_s + (1 - a_s) * c_d + torch.maximum(c_s, c_d), union),
        PorterDuff.MULTIPLY: lambda: (c_s * c_d, a_s * a_d),
        PorterDuff.OVERLAY: lambda: (torch.where(2 * c_d < a_d, 2 * c_s * c_d,
                                                 a_s * a_d - 2 * (a_d - c_s) * (a_s - c_d)), union),
        PorterDuff.SCREEN: lambda: (c_s + c_d - c_s * c_d, union),
        PorterDuff.SRC: lambda: (c_s, a_s),
        PorterDuff.SRC_ATOP: lambda: (a_d * c_s + (1 - a_s) * c_d, a_d),
        PorterDuff.SRC_IN: lambda: (c_s * a_d, a_s * a_d),
        PorterDuff.SRC_OUT: lambda: ((1 - a_d) * c_s, (1 - a_d) * a_s),
        PorterDuff.SRC_OVER: lambda: (c_s + (1 - a_s) * c_d, a_s + (1 - a_s) * a_d),
        PorterDuff.XOR: lambda: ((1 - a_d) * c_s + (1 - a_s) * c_d, (1 - a_d) * a_s + (1 - a_s) * a_d),
    }
    colour, alpha = rules[mode]()
    straight = torch.where(alpha > EPSILON, colour / alpha.clamp_min(EPSILON), torch.zeros_like(colour))
    return straight.clamp(0, 1), alpha


def _resize(x: Any, height: int, width: int) -> Any:
    """(H, W, C) -> (height, width, C), centre-cropped to the aspect ratio, bicubic."""
    from nodes.comfy.latent_ops import fit_spatial

    return fit_spatial(x.movedim(-1, 0)[None], height, width, "bicubic")[0].movedim(0, -1)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    @node("ImageColorToMask", display_name="ImageColorToMask", category="mask", compat=COMPAT)
    def image_color_to_mask(image: "IMAGE", color: color_int()) -> Out(MASK="MASK"):
        """1 where the pixel's 8-bit colour (rounded) is exactly color (0xRRGGBB), else 0."""
        import torch

        rgb = (image[..., :3].clamp(0, 1) * 255.0).round().to(torch.int64)
        packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
        return (packed == color).float()

    @node("JoinImageWithAlpha", display_name="Join Image with Alpha", category="mask/compositing", compat=COMPAT)
    def join_image_with_alpha(image: "IMAGE", alpha: "MASK") -> Out(IMAGE="IMAGE"):
        """RGBA images: the image's colours with alpha = 1 - mask (the mask resized bilinearly to the image;
        the shorter batch repeats)."""
        import torch
        import torch.nn.functional as F

        from nodes.comfy.latent_ops import repeat_to_batch

        mask = alpha.reshape(-1, 1, *alpha.shape[-2:]).to(image)
        batch = max(image.shape[0], mask.shape[0])
        image, mask = repeat_to_batch(image, batch), repeat_to_batch(mask, batch)
        mask = F.interpolate(mask, size=image.shape[1:3], mode="bilinear")[:, 0]
        return torch.cat([image[..., :3], (1.0 - mask)[..., None]], dim=-1)

    @node("SplitImageWithAlpha", display_name="Split Image with Alpha", category="mask/compositing",
          compat=COMPAT)
    def split_image_with_alpha(image: "IMAGE") -> Out(IMAGE="IMAGE", MASK="MASK"):
        """The colours and, as a mask, 1 - alpha (all 0 for an image without alpha)."""
        import torch

        alpha = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])
        return image[..., :3].clone(), 1.0 - alpha

    @node("PorterDuffImageComposite", display_name="Porter-Duff Image Composite", category="mask/compositing",
          compat=COMPAT)
    def porter_duff_image_composite(
        source: "IMAGE", source_alpha: "MASK", destination: "IMAGE", destination_alpha: "MASK",
        mode: Choice(choices=tuple(m.value for m in PorterDuff), default="DST"),
    ) -> Out(IMAGE="IMAGE", MASK="MASK"):
        """Composite source over destination with a Porter-Duff operator; the alphas are given as masks
        (alpha = 1 - mask) and so is the output's. The source and the alphas are scaled (bicubic,
        centre-cropped) to the destination's size; the result has the smallest of the four batches."""
        import torch

        if source.shape[-1] != destination.shape[-1]:
            raise ValueError(f"PorterDuffImageComposite: source has {source.shape[-1]} channels, destination "
                             f"{destination.shape[-1]}; give both RGB (or both RGBA) images")
        batch = min(len(source), len(source_alpha), len(destination), len(destination_alpha))
        images, masks = [], []
        for i in range(batch):
            dst = destination[i]
            height, width = dst.shape[:2]
            dst_a = destination_alpha[i][..., None].to(dst)
            if dst_a.shape[:2] != dst.shape[:2]:
                dst_a = _resize(dst_a, height, width)
            src = source[i].to(dst)
            if src.shape != dst.shape:
                src = _resize(src, height, width)
            src_a = source_alpha[i][..., None].to(dst)
            if src_a.shape != dst_a.shape:
                src_a = _resize(src_a, height, width)
            image, alpha = porter_duff(src, 1 - src_a, dst, 1 - dst_a, PorterDuff(mode))
            images.append(image)
            masks.append(1 - alpha[..., 0])
        return torch.stack(images), torch.stack(masks)

    @node("MaskPreview", display_name="MaskPreview", category="mask", compat=COMPAT, output=True,
          hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"})
    def mask_preview(mask: "MASK", ctx: Context = None) -> None:
        """Show the mask in the editor as a grey image (written to temp/, not kept)."""
        from nodes.images import save_images

        settings = ctx.services.get("settings", runtime.settings) if ctx is not None else runtime.settings
        grey = mask.reshape(-1, 1, *mask.shape[-2:]).movedim(1, -1).expand(-1, -1, -1, 3)
        return save_images(grey, Path(settings.root) / "temp", "preview", "temp", ctx, "MaskPreview")

    return [image_color_to_mask, join_image_with_alpha, split_image_with_alpha, porter_duff_image_composite,
            mask_preview]
