"""ComfyUI's mask nodes, over ``sgm.data.image_ops`` (a MASK is (B, H, W) in [0, 1])."""

from __future__ import annotations

from typing import Mapping

from engine.api import Bool, Choice, Float, Int, NodeSpec, Out, node
from nodes.comfy import COMPAT
from nodes.runtime import Runtime

SIZE = dict(min=1, max=16384, step=1)
OFFSET = dict(default=0, min=0, max=16384, step=1)
CHANNELS = ("red", "green", "blue", "alpha")
OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    @node("InvertMask", display_name="InvertMask", category="mask", compat=COMPAT)
    def invert_mask(mask: "MASK") -> Out(MASK="MASK"):
        """1 - mask."""
        return 1.0 - mask

    @node("GrowMask", display_name="GrowMask", category="mask", compat=COMPAT)
    def grow_mask(mask: "MASK", expand: Int(default=0, min=-16384, max=16384, step=1),
                  tapered_corners: Bool(default=True)) -> Out(MASK="MASK"):
        """Grow the mask by expand pixels (shrink where negative); tapered corners grow diagonally slower."""
        from sgm.data.image_ops import grow_mask as grow

        return grow(mask, expand, tapered_corners)

    @node("SolidMask", display_name="SolidMask", category="mask", compat=COMPAT)
    def solid_mask(value: Float(default=1.0, min=0.0, max=1.0, step=0.01), width: Int(default=512, **SIZE),
                   height: Int(default=512, **SIZE)) -> Out(MASK="MASK"):
        """A (1, height, width) mask filled with value."""
        import torch

        return torch.full((1, height, width), float(value))

    @node("MaskComposite", display_name="MaskComposite", category="mask", compat=COMPAT)
    def mask_composite(destination: "MASK", source: "MASK", x: Int(**OFFSET), y: Int(**OFFSET),
                       operation: Choice(choices=OPERATIONS)) -> Out(MASK="MASK"):
        """Combine source into destination at (x, y); the result is clamped to 0..1."""
        from sgm.data.image_ops import mask_composite as composite

        return composite(destination, source, x, y, operation)

    @node("FeatherMask", display_name="FeatherMask", category="mask", compat=COMPAT)
    def feather_mask(mask: "MASK", left: Int(**OFFSET), top: Int(**OFFSET), right: Int(**OFFSET),
                     bottom: Int(**OFFSET)) -> Out(MASK="MASK"):
        """Fade the mask linearly towards each edge over that many pixels."""
        from sgm.data.image_ops import feather_mask as feather

        return feather(mask, left, top, right, bottom)

    @node("CropMask", display_name="CropMask", category="mask", compat=COMPAT)
    def crop_mask(mask: "MASK", x: Int(**OFFSET), y: Int(**OFFSET), width: Int(default=512, **SIZE),
                  height: Int(default=512, **SIZE)) -> Out(MASK="MASK"):
        """The rectangle at (x, y) of size width x height (clipped to the mask)."""
        from sgm.data.image_ops import as_mask_batch

        return as_mask_batch(mask)[:, y:y + height, x:x + width].clone()

    @node("ImageToMask", display_name="Convert Image to Mask", category="mask", compat=COMPAT)
    def image_to_mask(image: "IMAGE", channel: Choice(choices=CHANNELS)) -> Out(MASK="MASK"):
        """One channel of the images as a mask (alpha as it is stored: 1 = opaque)."""
        index = CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"ImageToMask: channel {channel!r} needs {index + 1} channels, the image has "
                             f"{image.shape[-1]}; choose one of {', '.join(CHANNELS[:image.shape[-1]])}")
        return image[..., index].clone()

    @node("MaskToImage", display_name="Convert Mask to Image", category="mask", compat=COMPAT)
    def mask_to_image(mask: "MASK") -> Out(IMAGE="IMAGE"):
        """The mask as grey images (B, H, W, 3)."""
        from sgm.data.image_ops import as_mask_batch

        return as_mask_batch(mask)[..., None].expand(-1, -1, -1, 3).clone()

    @node("ThresholdMask", display_name="ThresholdMask", category="mask", compat=COMPAT)
    def threshold_mask(mask: "MASK", value: Float(default=0.5, min=0.0, max=1.0, step=0.01)) -> Out(MASK="MASK"):
        """1 where the mask is above value, else 0."""
        return (mask > value).float()

    return [invert_mask, grow_mask, solid_mask, mask_composite, feather_mask, crop_mask, image_to_mask,
            mask_to_image, threshold_mask]
