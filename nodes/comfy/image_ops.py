"""ComfyUI's image processing nodes (outpaint padding, scale to a pixel count, invert, blur,
sharpen, Canny), over ``sgm.data.image_ops`` and our ScaleImage."""

from __future__ import annotations

import math
from typing import Mapping

from engine.api import Choice, Float, Int, NodeSpec, Out, node
from nodes.comfy import COMPAT, call
from nodes.comfy.image import SCALE_METHODS
from nodes.runtime import Runtime

PAD = dict(default=0, min=0, max=16384, step=8)
RADIUS = dict(default=1, min=1, max=31, step=1)
THRESHOLD = dict(min=0.01, max=0.99, step=0.01)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    @node("ImagePadForOutpaint", display_name="Pad Image for Outpainting", category="image", compat=COMPAT)
    def image_pad_for_outpaint(
        image: "IMAGE", left: Int(**PAD), top: Int(**PAD), right: Int(**PAD), bottom: Int(**PAD),
        feathering: Int(default=40, min=0, max=16384, step=1),
    ) -> Out(IMAGE="IMAGE", MASK="MASK"):
        """Pad the images with grey and give the mask to repaint: the padding, plus a soft ramp of
        feathering pixels into the image along the padded sides."""
        from sgm.data.image_ops import pad_for_outpaint

        return pad_for_outpaint(image, left, top, right, bottom, feathering)

    @node("ImageScaleToTotalPixels", display_name="ImageScaleToTotalPixels", category="image/upscaling",
          compat=COMPAT)
    def image_scale_to_total_pixels(
        image: "IMAGE",
        upscale_method: Choice(choices=SCALE_METHODS),
        megapixels: Float(default=1.0, min=0.01, max=16.0, step=0.01),
    ) -> Out(IMAGE="IMAGE"):
        """Resize to about megapixels x 2^20 pixels, keeping the aspect ratio (latentflow's ScaleImage)."""
        height, width = image.shape[1:3]
        scale = math.sqrt(int(megapixels * 1024 * 1024) / (width * height))
        return call(ours, "ScaleImage", image=image, width=max(1, round(width * scale)),
                    height=max(1, round(height * scale)), method=upscale_method, crop="disabled")

    @node("ImageInvert", display_name="Invert Image", category="image", compat=COMPAT)
    def image_invert(image: "IMAGE") -> Out(IMAGE="IMAGE"):
        """1 - image."""
        return 1.0 - image

    @node("ImageBlur", display_name="ImageBlur", category="image/postprocessing", compat=COMPAT)
    def image_blur(image: "IMAGE", blur_radius: Int(**RADIUS),
                   sigma: Float(default=1.0, min=0.1, max=10.0, step=0.1)) -> Out(IMAGE="IMAGE"):
        """Gaussian blur over (2 blur_radius + 1)^2 pixels; sigma is relative to the radius."""
        from sgm.data.image_ops import blur

        return blur(image, blur_radius, sigma)

    @node("ImageSharpen", display_name="ImageSharpen", category="image/postprocessing", compat=COMPAT)
    def image_sharpen(image: "IMAGE", sharpen_radius: Int(**RADIUS),
                      sigma: Float(default=1.0, min=0.1, max=10.0, step=0.01),
                      alpha: Float(default=1.0, min=0.0, max=5.0, step=0.01)) -> Out(IMAGE="IMAGE"):
        """Unsharp masking: add alpha x 10 times the detail a Gaussian blur removes."""
        from sgm.data.image_ops import sharpen

        return sharpen(image, sharpen_radius, sigma, alpha)

    @node("Canny", display_name="Canny", category="image/preprocessors", compat=COMPAT)
    def canny(image: "IMAGE", low_threshold: Float(default=0.4, **THRESHOLD),
              high_threshold: Float(default=0.8, **THRESHOLD)) -> Out(IMAGE="IMAGE"):
        """Canny edge map (white edges on black) of the images, e.g. for a ControlNet; the thresholds apply to the
        gradient magnitude of the blurred luma (Sobel / 8)."""
        from sgm.data.image_ops import canny as edges

        if low_threshold > high_threshold:
            raise ValueError(f"Canny: low_threshold {low_threshold} is above high_threshold {high_threshold}; "
                             "make low <= high")
        return edges(image, low_threshold, high_threshold)[..., None].expand(-1, -1, -1, 3).clone()

    return [image_pad_for_outpaint, image_scale_to_total_pixels, image_invert, image_blur, image_sharpen, canny]
