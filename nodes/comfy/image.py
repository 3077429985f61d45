"""ComfyUI's image loading and scaling nodes, over ours (``nodes.images``). SaveImage and
PreviewImage are ours already, with ComfyUI's interface."""

from __future__ import annotations

from typing import Mapping

from engine.api import Choice, Float, Int, NodeSpec, Out, node
from nodes.comfy import COMPAT, call
from nodes.images import CROP_MODES, MASK_CHANNELS, existing_input, read_mask
from nodes.runtime import Runtime

SCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    load_fingerprint = ours["LoadInputImage"].fingerprint

    def images() -> Choice:
        return ours["LoadInputImage"].input("image").widget  # the same files, with the upload button

    @node("LoadImage", display_name="Load Image", category="image", compat=COMPAT, fingerprint=load_fingerprint)
    def load_image(image: images()) -> Out(IMAGE="IMAGE", MASK="MASK"):
        """Load an image from input/; its alpha channel is the mask, transparent = 1 (latentflow's LoadInputImage)."""
        return call(ours, "LoadInputImage", image=image)

    @node("LoadImageMask", display_name="Load Image (as Mask)", category="mask", compat=COMPAT,
          fingerprint=load_fingerprint)
    def load_image_mask(image: images(), channel: Choice(choices=MASK_CHANNELS)) -> Out(MASK="MASK"):
        """One channel of an input image as a mask; for alpha, transparent = 1."""
        return read_mask(existing_input(runtime, image, "LoadImageMask"), channel)

    @node("ImageScale", display_name="Upscale Image", category="image/upscaling", compat=COMPAT)
    def image_scale(
        image: "IMAGE",
        upscale_method: Choice(choices=SCALE_METHODS),
        width: Int(default=512, min=0, max=16384, step=1),
        height: Int(default=512, min=0, max=16384, step=1),
        crop: Choice(choices=CROP_MODES),
    ) -> Out(IMAGE="IMAGE"):
        """Resize images; 0 for one side keeps the aspect ratio, 0 for both keeps the image (latentflow's
        ScaleImage)."""
        if width == 0 and height == 0:
            return image
        h, w = image.shape[1:3]
        if width == 0:
            width = max(1, round(w * height / h))
        elif height == 0:
            height = max(1, round(h * width / w))
        return call(ours, "ScaleImage", image=image, width=width, height=height, method=upscale_method, crop=crop)

    @node("ImageScaleBy", display_name="Upscale Image By", category="image/upscaling", compat=COMPAT)
    def image_scale_by(
        image: "IMAGE",
        upscale_method: Choice(choices=SCALE_METHODS),
        scale_by: Float(default=1.0, min=0.01, max=8.0, step=0.01),
    ) -> Out(IMAGE="IMAGE"):
        """Resize images by a factor (latentflow's ScaleImage)."""
        h, w = image.shape[1:3]
        return call(ours, "ScaleImage", image=image, width=max(1, round(w * scale_by)),
                    height=max(1, round(h * scale_by)), method=upscale_method)

    return [load_image, load_image_mask, image_scale, image_scale_by]
