"""ComfyUI's extra output nodes: images over the websocket, animated WEBP / PNG, and loading a
saved output back (``LoadImageOutput``).

- ``SaveImageWebsocket`` writes no file: each image of the batch goes, as PNG, to the client that
  queued the prompt as a progress preview, which the server sends as ComfyUI's binary frame (a
  4-byte big-endian event type 1, a 4-byte format 2 = PNG, then the PNG bytes; ``web.events``).
- ``SaveAnimatedWEBP`` / ``SaveAnimatedPNG`` write the whole batch as one animation
  (``<prefix>_<NNNNN>_.webp|.png`` in output/), with the workflow as ComfyUI stores it: EXIF
  tags for WEBP (0x0110 ``prompt:<json>``, then 0x010F downwards ``<key>:<json>`` for each
  ``extra_pnginfo`` key), PNG text chunks for APNG. The UI result is ComfyUI's ``images`` list
  plus ``animated: [True]`` (False for a one-frame batch).
- ``LoadImageOutput`` lists the images in output/ as ComfyUI's annotated names
  (``name.png [output]``) and loads one as LoadImage does.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from engine.api import Bool, Choice, Context, Float, Int, NodeContext, NodeSpec, Out, Result, Text, node
from nodes.comfy import COMPAT
from nodes.images import COMFYUI_HIDDEN, MAX_NUMBER, png_text, to_png_images
from nodes.runtime import IMAGE_SUFFIXES, Runtime, confined, file_fingerprint, list_files

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}  # Pillow's WEBP ``method`` (0 fast .. 6 small)
OUTPUT_ANNOTATION = " [output]"
EXIF_PROMPT_TAG = 0x0110  # "Model": ComfyUI keeps the prompt here
EXIF_FIRST_EXTRA_TAG = 0x010F  # "Make", then downwards for each extra_pnginfo key


@dataclass(frozen=True)
class OutputImageChoice(Choice):
    """The output/ images, with the options ComfyUI gives LoadImageOutput's list: the folder it
    reads (``image_folder``) and the route its frontend refreshes the list from (``remote``)."""

    def spec_options(self) -> dict[str, Any]:
        return {**super().spec_options(), "image_folder": "output",
                "remote": {"route": "/internal/files/output", "refresh_button": True,
                           "control_after_refresh": "first"}}


def frame_duration_ms(fps: float) -> int:
    """Milliseconds each frame shows at ``fps`` frames per second (ComfyUI rounds down)."""
    return int(1000.0 / fps)


def webp_exif(text: Mapping[str, str]) -> Any:
    """The workflow chunks of :func:`nodes.images.png_text` as WEBP EXIF tags, ComfyUI's layout."""
    from PIL import Image

    exif = Image.Exif()
    if "prompt" in text:
        exif[EXIF_PROMPT_TAG] = f"prompt:{text['prompt']}"
    tag = EXIF_FIRST_EXTRA_TAG
    for key, value in text.items():
        if key != "prompt":
            exif[tag] = f"{key}:{value}"
            tag -= 1
    return exif


def output_target(folder: Path, prefix: str, node_id: str) -> tuple[Path, str]:
    """(``folder/prefix`` checked to stay inside ``folder``, its subfolder as ComfyUI reports it)."""
    target = confined(folder, prefix)
    if target is None or not Path(prefix).name:
        raise ValueError(f"{node_id}: filename_prefix {prefix!r} must name a file inside {folder} "
                         "(no '..' or absolute paths)")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{node_id}: filename_prefix {prefix!r} leads outside {folder} through a symbolic "
                         "link; save into a real subfolder")
    subfolder = Path(prefix).parent.as_posix()
    return target, "" if subfolder == "." else subfolder


def write_numbered(target: Path, suffix: str, data: bytes) -> Path:
    """Write ``data`` as ``<target>_<NNNNN>_<suffix>``: the next free number, never overwriting
    (each candidate is created exclusively)."""
    stem, folder = target.name, target.parent
    highest = 0
    for path in folder.glob(f"{stem}_*_{suffix}"):
        digits = path.name[len(stem) + 1:-len(f"_{suffix}")]
        if digits.isdigit():
            highest = max(highest, int(digits))
    for number in range(highest + 1, MAX_NUMBER):
        path = folder / f"{stem}_{number:05d}_{suffix}"
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path
    raise FileExistsError(f"no free file number for {folder / stem}_*_{suffix}")


def save_animation(images: Any, output_dir: Path, prefix: str, suffix: str, encode: Any, node_id: str) -> Result:
    """Encode the batch (B, H, W, 3) as one animation with ``encode(frames) -> bytes`` and save it."""
    target, subfolder = output_target(output_dir, prefix, node_id)
    frames = to_png_images(images)
    path = write_numbered(target, suffix, encode(frames))
    entry = {"filename": path.name, "subfolder": subfolder, "type": "output", "path": str(path)}
    return Result(values=(), ui={"images": [entry], "animated": [len(frames) != 1]})


def output_images(runtime: Runtime) -> list[str]:
    """The images in output/ as ComfyUI lists them for LoadImageOutput: ``sub/name.png [output]``."""
    return [name + OUTPUT_ANNOTATION for name in list_files(Path(runtime.settings.output_dir), IMAGE_SUFFIXES)]


def output_image_path(runtime: Runtime, name: str) -> Path | None:
    """The output image ``name`` (with or without `` [output]``), confined to output/; None if missing."""
    plain = name[:-len(OUTPUT_ANNOTATION)] if name.endswith(OUTPUT_ANNOTATION) else name
    path = confined(Path(runtime.settings.output_dir), plain)
    return path if path is not None and path.is_file() else None


def load_picture(path: Path) -> tuple[Any, Any]:
    """An image file as (IMAGE (1, H, W, 3), MASK (1, H, W)) in [0, 1]; the mask is 1 - alpha
    (zeros without an alpha channel), as our LoadInputImage reads input/."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        picture = ImageOps.exif_transpose(opened)
        rgba = np.asarray(picture.convert("RGBA"), dtype=np.float32) / 255.0  # (H, W, 4)
        has_alpha = "A" in picture.getbands() or "transparency" in picture.info
    pixels = torch.from_numpy(rgba[None, :, :, :3].copy())
    mask = 1.0 - torch.from_numpy(rgba[None, :, :, 3].copy()) if has_alpha \
        else torch.zeros(1, rgba.shape[0], rgba.shape[1])
    return pixels, mask


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    def output_dir(ctx: NodeContext | None) -> Path:
        services = ctx.services if ctx is not None else {}
        return Path(services.get("output_dir") or services.get("settings", runtime.settings).output_dir)

    # Not pure: a prompt queued again sends its images again (ComfyUI's node always re-runs too),
    # though the images themselves may come from the cache.
    @node("SaveImageWebsocket", display_name="SaveImageWebsocket", category="api/image", compat=COMPAT,
          output=True, pure=False)
    def save_image_websocket(images: "IMAGE", ctx: Context = None) -> None:
        """Send each image as PNG to the client that queued the prompt (a binary websocket frame:
        event 1, format 2, PNG bytes); writes no file and reports no output."""
        pictures = to_png_images(images)
        for index, picture in enumerate(pictures):
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG", compress_level=1)
            if ctx is not None:
                ctx.progress(index + 1, len(pictures), preview=buffer.getvalue())
        return None

    @node("SaveAnimatedWEBP", display_name="SaveAnimatedWEBP", category="image/animation", compat=COMPAT,
          output=True, hidden=COMFYUI_HIDDEN)
    def save_animated_webp(
        images: "IMAGE",
        filename_prefix: Text(default="ComfyUI"),
        fps: Float(default=6.0, min=0.01, max=1000.0, step=0.01),
        lossless: Bool(default=True),
        quality: Int(default=80, min=0, max=100),
        method: Choice(choices=tuple(WEBP_METHODS)),
        ctx: Context = None,
    ) -> None:
        """Save the batch as one animated WEBP (frame i = image i, 1000/fps ms each) in output/."""
        exif = webp_exif(png_text(ctx.services if ctx is not None else {}))

        def encode(frames: list[Any]) -> bytes:
            buffer = io.BytesIO()
            frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], exif=exif,
                           duration=frame_duration_ms(fps), lossless=lossless, quality=quality,
                           method=WEBP_METHODS[method], loop=0)
            return buffer.getvalue()

        return save_animation(images, output_dir(ctx), filename_prefix, ".webp", encode, "SaveAnimatedWEBP")

    @node("SaveAnimatedPNG", display_name="SaveAnimatedPNG", category="image/animation", compat=COMPAT,
          output=True, hidden=COMFYUI_HIDDEN)
    def save_animated_png(
        images: "IMAGE",
        filename_prefix: Text(default="ComfyUI"),
        fps: Float(default=6.0, min=0.01, max=1000.0, step=0.01),
        compress_level: Int(default=4, min=0, max=9),
        ctx: Context = None,
    ) -> None:
        """Save the batch as one animated PNG (APNG; 1000/fps ms a frame) in output/, with the
        workflow as PNG text chunks."""
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in png_text(ctx.services if ctx is not None else {}).items():
            info.add_text(key, value)

        def encode(frames: list[Any]) -> bytes:
            buffer = io.BytesIO()
            frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:], pnginfo=info,
                           duration=frame_duration_ms(fps), compress_level=compress_level, loop=0)
            return buffer.getvalue()

        return save_animation(images, output_dir(ctx), filename_prefix, ".png", encode, "SaveAnimatedPNG")

    @node("LoadImageOutput", display_name="Load Image (from Outputs)", category="image", compat=COMPAT,
          fingerprint=lambda image, **_: file_fingerprint(output_image_path(runtime, image)))
    def load_image_output(
        image: OutputImageChoice(choices=lambda: output_images(runtime), image_upload=True,
                      tooltip="an image in the output/ folder (name [output])"),
    ) -> Out(IMAGE="IMAGE", MASK="MASK"):
        """Load an image from output/ as LoadImage does from input/: alpha becomes the mask
        (transparent = 1)."""
        path = output_image_path(runtime, image)
        if path is None:
            raise FileNotFoundError(f"LoadImageOutput: image {image!r} is not in {runtime.settings.output_dir}; "
                                    "pick one of the saved outputs")
        return load_picture(path)

    return [save_image_websocket, save_animated_webp, save_animated_png, load_image_output]
