"""ComfyUI's everyday image nodes: batching, cropping, flipping, blending, stitching, padding,
noise, colour quantization and morphology, on IMAGE tensors (B, H, W, C) in [0, 1] (C = 3,
or 4 with alpha)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from engine.api import Bool, Choice, Float, Int, NodeSpec, Out, node
from nodes.comfy import COMPAT, call
from nodes.comfy.latent_ops import composite, fit_spatial
from nodes.runtime import Runtime
from nodes.sampling import SEED_MAX

SIZE = dict(default=512, min=1, max=16384, step=1)
POSITION = dict(default=0, min=0, max=16384, step=1)
FLIP_METHODS = ("x-axis: vertically", "y-axis: horizontally")
ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")
BLEND_MODES = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")
MAX_DIMENSION_METHODS = ("area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic")  # sic: ComfyUI's list
PAD_METHODS = ("area", "bicubic", "nearest-exact", "bilinear", "lanczos")
STITCH_DIRECTIONS = ("right", "down", "left", "up")
STITCH_COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "red": (1.0, 0.0, 0.0),
                 "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
DITHERS = ("none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16")
MORPHOLOGY = ("erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat")


@dataclass(frozen=True)
class ColorInt(Int):
    """An INT the editor shows as a colour picker (0xRRGGBB)."""

    def spec_options(self) -> dict[str, Any]:
        return {**super().spec_options(), "display": "color"}


def color_int() -> ColorInt:
    return ColorInt(default=0, min=0, max=16777215, step=1)


def match_alpha(first: Any, second: Any) -> tuple[Any, Any]:
    """Give an RGB image an opaque alpha channel where the other one has alpha."""
    import torch.nn.functional as F

    if first.shape[-1] < second.shape[-1]:
        first = F.pad(first, (0, second.shape[-1] - first.shape[-1]), value=1.0)
    elif second.shape[-1] < first.shape[-1]:
        second = F.pad(second, (0, first.shape[-1] - second.shape[-1]), value=1.0)
    return first, second


def fit_image(image: Any, height: int, width: int, mode: str) -> Any:
    """(B, H, W, C) -> (B, height, width, C), centre-cropped to the aspect ratio and resized."""
    return fit_spatial(image.movedim(-1, 1), height, width, mode).movedim(1, -1)


def blend(image1: Any, image2: Any, mode: str) -> Any:
    """The blend-mode result of laying image2 over image1 (both in [0, 1])."""
    import torch

    if mode == "normal":
        return image2
    if mode == "multiply":
        return image1 * image2
    if mode == "screen":
        return 1 - (1 - image1) * (1 - image2)
    if mode == "overlay":
        return torch.where(image1 <= 0.5, 2 * image1 * image2, 1 - 2 * (1 - image1) * (1 - image2))
    if mode == "soft_light":  # the W3C compositing spec's soft-light, with its D(x) for the dark branch
        d = torch.where(image1 <= 0.25, ((16 * image1 - 12) * image1 + 4) * image1, torch.sqrt(image1))
        return torch.where(image2 <= 0.5, image1 - (1 - 2 * image2) * image1 * (1 - image1),
                           image1 + (2 * image2 - 1) * (d - image1))
    if mode == "difference":
        return image1 - image2
    raise ValueError(f"ImageBlend: blend_mode {mode!r} is not one of {', '.join(BLEND_MODES)}")


def _extreme_filter(x: Any, size: int, largest: bool) -> Any:
    """Max (or min) over a size x size window of (B, C, H, W), ignoring pixels outside the image; the
    window's origin is at (size // 2, size // 2) of it (so even sizes reach one further up-left)."""
    import torch.nn.functional as F

    before, after = size // 2, size - size // 2 - 1
    sign = 1.0 if largest else -1.0
    padded = F.pad(sign * x, (before, after, before, after), value=float("-inf"))
    return sign * F.max_pool2d(padded, size, stride=1)


def morphology(image: Any, operation: str, size: int) -> Any:
    """Grey-level morphology with a flat size x size square (image (B, H, W, C))."""
    x = image.movedim(-1, 1)

    def dilate(t: Any) -> Any:
        return _extreme_filter(t, size, largest=True)

    def erode(t: Any) -> Any:
        return _extreme_filter(t, size, largest=False)

    if operation == "erode":
        out = erode(x)
    elif operation == "dilate":
        out = dilate(x)
    elif operation == "open":
        out = dilate(erode(x))
    elif operation == "close":
        out = erode(dilate(x))
    elif operation == "gradient":
        out = dilate(x) - erode(x)
    elif operation == "top_hat":
        out = x - dilate(erode(x))
    elif operation == "bottom_hat":
        out = erode(dilate(x)) - x
    else:
        raise ValueError(f"Morphology: operation {operation!r} is not one of {', '.join(MORPHOLOGY)}")
    return out.movedim(1, -1)


def bayer_matrix(order: int) -> Any:
    """The (order x order) ordered-dither threshold offsets in [-0.5, 0.5) (order a power of 2)."""
    import torch

    matrix = torch.zeros(1, 1)
    n = 1
    while matrix.shape[0] < order:
        q = 4 ** n
        m = q * matrix
        matrix = torch.cat([torch.cat([m - 1.5, m + 0.5], 1), torch.cat([m + 1.5, m - 0.5], 1)], 0) / q
        n += 1
    return matrix


def quantize(image: Any, colors: int, dither: str) -> Any:
    """Each image reduced to a palette of at most ``colors`` colours chosen by Pillow's median cut,
    mapped with no dithering, Floyd-Steinberg, or an ordered Bayer dither of the given size."""
    import numpy as np
    import torch
    from PIL import Image

    out = torch.zeros_like(image[..., :3])
    for b in range(image.shape[0]):
        pixels = (image[b, ..., :3].clamp(0, 1) * 255).to(torch.uint8).numpy()
        picture = Image.fromarray(pixels, mode="RGB")
        palette = picture.quantize(colors=colors)
        if dither.startswith("bayer"):
            order = int(dither.split("-")[1])
            spread = 2 * 256 / (len(palette.getpalette()) // 3)
            offsets = spread * bayer_matrix(order) + 0.5
            h, w = pixels.shape[:2]
            tiled = offsets.repeat(-(-h // order), -(-w // order))[:h, :w, None]
            shifted = (torch.from_numpy(pixels).float() + tiled).clamp(0, 255).to(torch.uint8).numpy()
            result = Image.fromarray(shifted, mode="RGB").quantize(palette=palette, dither=Image.Dither.NONE)
        else:
            mode = Image.Dither.FLOYDSTEINBERG if dither == "floyd-steinberg" else Image.Dither.NONE
            result = picture.quantize(palette=palette, dither=mode)
        out[b] = torch.from_numpy(np.array(result.convert("RGB"))).float() / 255
    return out


def stitch(image1: Any, image2: Any, direction: str, match_size: bool, spacing: int, color: str,
           scale: Any) -> Any:
    """image2 beside image1 (right / left) or above / below it (down / up). The shorter batch repeats
    its last image; match_size scales image2 (``scale(image, width, height)``) to image1's height
    (beside) or width (below), else the smaller side is padded, centred, with ``color`` where it is
    white or black and with black otherwise; a strip of ``spacing`` pixels (rounded up to even) of
    ``color`` goes between."""
    import torch
    import torch.nn.functional as F

    batch = max(image1.shape[0], image2.shape[0])

    def extend(image: Any) -> Any:
        extra = batch - image.shape[0]
        return image if extra == 0 else torch.cat([image, image[-1:].repeat(extra, 1, 1, 1)])

    image1, image2 = extend(image1), extend(image2)
    beside = direction in ("left", "right")
    if match_size:
        h1, w1 = image1.shape[1:3]
        h2, w2 = image2.shape[1:3]
        if beside:
            image2 = scale(image2, max(1, int(h1 * w2 / h2)), h1)
        else:
            image2 = scale(image2, w1, max(1, int(w1 / (w2 / h2))))
    else:
        axis = 1 if beside else 2  # the side that must agree
        fill = STITCH_COLORS[color][0] if color in ("white", "black") else 0.0
        target = max(image1.shape[axis], image2.shape[axis])

        def pad(image: Any) -> Any:
            missing = target - image.shape[axis]
            if missing == 0:
                return image
            low, high = missing // 2, missing - missing // 2
            widths = (0, 0, 0, 0, low, high) if beside else (0, 0, low, high)
            return F.pad(image, widths, value=fill)

        image1, image2 = pad(image1), pad(image2)
    image1, image2 = match_alpha(image1, image2)
    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    if spacing > 0:
        spacing += spacing % 2
        channels = image1.shape[-1]
        shape = (batch, image1.shape[1], spacing) if beside else (batch, spacing, image1.shape[2])
        strip = torch.ones(*shape, channels) * torch.tensor((*STITCH_COLORS[color], 1.0)[:channels])
        parts.insert(1, strip.to(image1))
    return torch.cat(parts, dim=2 if beside else 1)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    def scale(image: Any, width: int, height: int, method: str) -> Any:
        return call(ours, "ScaleImage", image=image, width=width, height=height, method=method, crop="disabled")

    @node("ImageCompositeMasked", display_name="ImageCompositeMasked", category="image", compat=COMPAT)
    def image_composite_masked(
        destination: "IMAGE", source: "IMAGE", x: Int(**POSITION), y: Int(**POSITION),
        resize_source: Bool(default=False), mask: "MASK" = None,
    ) -> Out(IMAGE="IMAGE"):
        """Paste source into destination with its top-left at (x, y), through the mask (resized to the
        source; 1 = source); resize_source first scales the source to the destination's size. Source and
        mask batches repeat to the destination's."""
        destination, source = match_alpha(destination, source)
        out = composite(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return out.movedim(1, -1)

    @node("ImageBatch", display_name="Batch Images", category="image", compat=COMPAT)
    def image_batch(image1: "IMAGE", image2: "IMAGE") -> Out(IMAGE="IMAGE"):
        """image1's images then image2's (scaled bilinearly to image1's size, centre-cropped to its aspect)."""
        import torch

        image1, image2 = match_alpha(image1, image2)
        return torch.cat([image1, fit_image(image2.to(image1), *image1.shape[1:3], "bilinear")])

    @node("EmptyImage", display_name="EmptyImage", category="image", compat=COMPAT)
    def empty_image(width: Int(**SIZE), height: Int(**SIZE), batch_size: Int(default=1, min=1, max=4096),
                    color: color_int()) -> Out(IMAGE="IMAGE"):
        """A batch of images filled with color (0xRRGGBB)."""
        import torch

        rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF]) / 255.0
        return rgb.expand(batch_size, height, width, 3).clone()

    @node("ImageCrop", display_name="Image Crop", category="image/transform", compat=COMPAT)
    def image_crop(image: "IMAGE", width: Int(**SIZE), height: Int(**SIZE), x: Int(**POSITION),
                   y: Int(**POSITION)) -> Out(IMAGE="IMAGE"):
        """The width x height rectangle at (x, y), clipped to the image; a corner past the image moves to its
        last row / column."""
        x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
        return image[:, y:y + height, x:x + width].clone()

    @node("ImageFlip", display_name="ImageFlip", category="image/transform", compat=COMPAT)
    def image_flip(image: "IMAGE", flip_method: Choice(choices=FLIP_METHODS)) -> Out(IMAGE="IMAGE"):
        """Mirror the images: x-axis flips top and bottom, y-axis left and right."""
        import torch

        return torch.flip(image, dims=[1 if flip_method.startswith("x") else 2])

    @node("ImageRotate", display_name="ImageRotate", category="image/transform", compat=COMPAT)
    def image_rotate(image: "IMAGE", rotation: Choice(choices=ROTATIONS)) -> Out(IMAGE="IMAGE"):
        """Rotate the images clockwise by 90, 180 or 270 degrees."""
        import torch

        return torch.rot90(image, k=ROTATIONS.index(rotation), dims=[2, 1])

    @node("ImageBlend", display_name="ImageBlend", category="image/postprocessing", compat=COMPAT)
    def image_blend(image1: "IMAGE", image2: "IMAGE", blend_factor: Float(default=0.5, min=0.0, max=1.0, step=0.01),
                    blend_mode: Choice(choices=BLEND_MODES)) -> Out(IMAGE="IMAGE"):
        """image1 mixed with the blend-mode result of image2 over it by blend_factor, clamped to 0..1;
        image2 is scaled (bicubic, centre-cropped) to image1's size when they differ."""
        image1, image2 = match_alpha(image1, image2.to(image1))
        if image2.shape != image1.shape:
            image2 = fit_image(image2, *image1.shape[1:3], "bicubic")
        return (image1 * (1 - blend_factor) + blend(image1, image2, blend_mode) * blend_factor).clamp(0, 1)

    @node("RepeatImageBatch", display_name="RepeatImageBatch", category="image/batch", compat=COMPAT)
    def repeat_image_batch(image: "IMAGE", amount: Int(default=1, min=1, max=4096)) -> Out(IMAGE="IMAGE"):
        """The batch repeated amount times."""
        return image.repeat(amount, 1, 1, 1)

    @node("ImageFromBatch", display_name="ImageFromBatch", category="image/batch", compat=COMPAT)
    def image_from_batch(image: "IMAGE", batch_index: Int(default=0, min=0, max=4095),
                         length: Int(default=1, min=1, max=4096)) -> Out(IMAGE="IMAGE"):
        """length images from batch_index; an index past the batch picks its last image."""
        start = min(image.shape[0] - 1, batch_index)
        return image[start:start + min(image.shape[0] - start, length)].clone()

    @node("RebatchImages", display_name="Rebatch Images", category="image/batch", compat=COMPAT,
          input_is_list=True, output_is_list=(True,))
    def rebatch_images(images: "IMAGE", batch_size: Int(default=1, min=1, max=4096)) -> Out(IMAGE="IMAGE"):
        """Regroup a list of image batches into batches of batch_size images, in order (the images of one
        batch must have one size)."""
        import torch

        size = batch_size[0] if isinstance(batch_size, list) else batch_size
        items = [image[i:i + 1] for image in images for i in range(image.shape[0])]
        out = []
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            shapes = sorted({tuple(item.shape[1:]) for item in chunk})
            if len(shapes) > 1:
                raise ValueError(f"RebatchImages: images {start}..{start + len(chunk) - 1} would share a batch but "
                                 f"differ in size ({', '.join(map(str, shapes))}); scale them to one size first "
                                 "(ImageScale) or use batch_size 1")
            out.append(torch.cat(chunk))
        return out

    @node("GetImageSize", display_name="Get Image Size", category="image", compat=COMPAT,
          hidden={"unique_id": "UNIQUE_ID"})
    def get_image_size(image: "IMAGE") -> Out(width="INT", height="INT", batch_size="INT"):
        """The images' width, height and count."""
        return int(image.shape[2]), int(image.shape[1]), int(image.shape[0])

    @node("ImageScaleToMaxDimension", display_name="ImageScaleToMaxDimension", category="image/upscaling",
          compat=COMPAT)
    def image_scale_to_max_dimension(image: "IMAGE", upscale_method: Choice(choices=MAX_DIMENSION_METHODS),
                                     largest_size: Int(default=512, min=0, max=16384, step=1)) -> Out(IMAGE="IMAGE"):
        """Scale so the longer side is largest_size pixels, keeping the aspect ratio."""
        if largest_size == 0:
            raise ValueError("ImageScaleToMaxDimension: largest_size is 0; give the size of the longer side")
        height, width = image.shape[1:3]
        if height > width:
            width, height = max(1, round(width / height * largest_size)), largest_size
        elif width > height:
            width, height = largest_size, max(1, round(height / width * largest_size))
        else:
            width = height = largest_size
        return scale(image, width, height, upscale_method)

    @node("ResizeAndPadImage", display_name="ResizeAndPadImage", category="image/transform", compat=COMPAT)
    def resize_and_pad_image(
        image: "IMAGE", target_width: Int(**SIZE), target_height: Int(**SIZE),
        padding_color: Choice(choices=("white", "black")), interpolation: Choice(choices=PAD_METHODS),
    ) -> Out(IMAGE="IMAGE"):
        """Scale the images to fit target_width x target_height keeping the aspect ratio, centred on white
        or black padding."""
        import torch

        batch, height, width, channels = image.shape
        factor = min(target_width / width, target_height / height)
        new_w, new_h = max(1, int(width * factor)), max(1, int(height * factor))
        resized = scale(image, new_w, new_h, interpolation)
        out = torch.full((batch, target_height, target_width, channels), 0.0 if padding_color == "black" else 1.0)
        top, left = (target_height - new_h) // 2, (target_width - new_w) // 2
        out[:, top:top + new_h, left:left + new_w] = resized
        return out

    @node("ImageStitch", display_name="Image Stitch", category="image/transform", compat=COMPAT)
    def image_stitch(
        image1: "IMAGE",
        direction: Choice(choices=STITCH_DIRECTIONS, default="right"),
        match_image_size: Bool(default=True),
        spacing_width: Int(default=0, min=0, max=1024, step=2),
        spacing_color: Choice(choices=tuple(STITCH_COLORS), default="white"),
        image2: "IMAGE" = None,
    ) -> Out(IMAGE="IMAGE"):
        """Put image2 on the given side of image1; match_image_size scales it (lanczos) to image1's height
        (right / left) or width (down / up), else the smaller is padded (white or black as spacing_color,
        else black); spacing_width pixels of spacing_color go between. Without image2, image1 as it is."""
        if image2 is None:
            return image1
        return stitch(image1, image2.to(image1), direction, match_image_size, spacing_width, spacing_color,
                      lambda image, width, height: scale(image, width, height, "lanczos"))

    @node("ImageAddNoise", display_name="ImageAddNoise", category="image", compat=COMPAT)
    def image_add_noise(image: "IMAGE", seed: Int(default=0, min=0, max=SEED_MAX, control_after_generate=True),
                        strength: Float(default=0.5, min=0.0, max=1.0, step=0.01)) -> Out(IMAGE="IMAGE"):
        """image + strength x Gaussian noise (from seed, on the CPU), clamped to 0..1."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(image.shape, generator=generator).to(image)
        return (image + strength * noise).clamp(0, 1)

    @node("ImageQuantize", display_name="ImageQuantize", category="image/postprocessing", compat=COMPAT)
    def image_quantize(image: "IMAGE", colors: Int(default=256, min=1, max=256, step=1),
                       dither: Choice(choices=DITHERS)) -> Out(IMAGE="IMAGE"):
        """Reduce each image to at most colors colours (Pillow's median cut), optionally dithered."""
        return quantize(image, colors, dither)

    @node("Morphology", display_name="ImageMorphology", category="image/postprocessing", compat=COMPAT)
    def image_morphology(image: "IMAGE", operation: Choice(choices=MORPHOLOGY),
                         kernel_size: Int(default=3, min=3, max=999, step=1)) -> Out(IMAGE="IMAGE"):
        """Grey-level morphology with a kernel_size square: erode (window minimum), dilate (maximum), open,
        close, gradient (dilate - erode), top_hat (image - open), bottom_hat (close - image); pixels outside
        the image are ignored."""
        return morphology(image, operation, kernel_size)

    return [image_composite_masked, image_batch, empty_image, image_crop, image_flip, image_rotate, image_blend,
            repeat_image_batch, image_from_batch, rebatch_images, get_image_size, image_scale_to_max_dimension,
            resize_and_pad_image, image_stitch, image_add_noise, image_quantize, image_morphology]

