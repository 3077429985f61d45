"""Image nodes: VAE decode, loading, scaling, saving (PNG with the workflow) and previews.

SaveImage and PreviewImage have ComfyUI's interface (and PNG text chunks); the other
ComfyUI image nodes are adapters in ``nodes.comfy``.

IMAGE values are (B, H, W, 3) float in [0, 1] and MASK values (B, H, W) in [0, 1] with
1 = repaint (the ComfyUI conventions), on the CPU.
"""

import errno
import functools
import json
import os
import secrets
from pathlib import Path
from typing import Any, Mapping

from engine.api import Bool, Choice, Context, Int, NodeContext, NodeSpec, Out, Result, Text, node
from nodes.latents import check_vae
from nodes.runtime import IMAGE_SUFFIXES, Runtime, confined, file_fingerprint, list_files

SCALE_METHODS = ("nearest-exact", "bilinear", "bicubic", "area", "lanczos")
CROP_MODES = ("disabled", "center")
MAX_NUMBER = 10**9
PNG_KEY = "latentflow"  # the PNG text chunk holding our own workflow format
MASK_CHANNELS = ("alpha", "red", "green", "blue")
# Latent tile sizes a plain decode falls back to, in order, when it runs out of memory.
TILED_FALLBACK_LATENT = (64, 32, 16)
# ComfyUI lists what SaveImage / PreviewImage read from the submission as hidden inputs; ours
# read them from the run context (ctx.services).
COMFYUI_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def read_mask(path: Path, channel: str) -> Any:
    """One channel of an image file as a MASK (1, H, W) in [0, 1]; for ``alpha`` the mask is
    1 - alpha (transparent = 1 = repaint), as LoadInputImage's mask."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    if channel not in MASK_CHANNELS:
        raise ValueError(f"channel {channel!r} is not one of {', '.join(MASK_CHANNELS)}")
    with Image.open(path) as opened:
        rgba = np.asarray(ImageOps.exif_transpose(opened).convert("RGBA"), dtype=np.float32) / 255.0
    values = torch.from_numpy(rgba[None, :, :, MASK_CHANNELS.index(channel) - 1].copy())  # alpha is index 3
    return 1.0 - values if channel == "alpha" else values


def decode_latent(runtime: Runtime, vae: Any, latent: Any, tiled: bool, node_id: str,
                  tiles: tuple[int, int] | None = None) -> Any:
    """LATENT -> IMAGE (B, H, W, 3) in [0, 1]; ``tiles`` = (tile size, overlap) in latent
    pixels when tiled (the library's defaults when None)."""
    import torch

    def work(tiled: bool = tiled, tiles: tuple[int, int] | None = tiles) -> Any:
        with runtime.models.use(vae.vae) as device, torch.no_grad():
            z = latent.samples.to(device) / vae.scale_factor
            if tiled:
                pixels = vae.vae.decode_tiled(z, *tiles) if tiles else vae.vae.decode_tiled(z)
            else:
                pixels = vae.vae.decode(z)  # (B, 3, H, W) in ~[-1, 1]
        return ((pixels.float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).contiguous()

    # Out of memory even with the device emptied: decode in tiles, smaller each time (latent pixels).
    fallbacks = [(f"tiled decode ({size}x{size} latent tiles)", functools.partial(work, True, (size, size // 4)))
                 for size in TILED_FALLBACK_LATENT if not tiled or (tiles or (64, 16))[0] > size]
    return runtime.models.retry_on_oom(work, f"{node_id} (VAE decode)", fallbacks)


def to_png_images(image: Any) -> list[Any]:
    """IMAGE (B, H, W, 3) -> PIL images (8-bit RGB)."""
    import torch
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(dtype=torch.uint8).numpy()
    return [Image.fromarray(item, mode="RGB") for item in array]


def comfy_prompt(document: Mapping[str, Any]) -> dict[str, Any]:
    """Our workflow document in ComfyUI's API prompt shape (links kept as written)."""
    prompt: dict[str, Any] = {}
    for node_id, entry in (document.get("nodes") or {}).items():
        inputs = {name: (value["value"] if isinstance(value, dict) and set(value) == {"value"} else value)
                  for name, value in (entry.get("inputs") or {}).items()}
        prompt[node_id] = {"class_type": entry.get("type"), "inputs": inputs}
    return prompt


class OutputWriteError(OSError):
    """An output file could not be written (full disk, no permission, ...); the message says
    which file and what to do, and no partial or temporary file is left behind."""


def write_png_atomically(folder: Path, prefix: str, image: Any, text: Mapping[str, str],
                         node_id: str = "SaveImage", hint: str = "choose another folder with --output-directory",
                         ) -> Path:
    """Save ``image`` as ``<prefix>_<NNNNN>_.png`` in ``folder``: the next free number,
    written to a temporary file first and linked into place, so a reader never sees a
    half-written file and an existing file is never overwritten. A failed write (e.g. a
    full disk) raises :class:`OutputWriteError` naming the file and removes the temporary."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)  # tEXt as ComfyUI writes it (iTXt only for non-Latin-1 text)
    stem = Path(prefix).name
    temporary: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # O_EXCL with a random name: never writes through a file or link that is already there
        # (mode 0o666 less the umask, as a plain open would give; mkstemp's 0o600 would not).
        name = folder / f".{stem}.{secrets.token_hex(8)}.tmp"
        handle = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        temporary = name
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG", pnginfo=info, compress_level=4)
    except BaseException as error:  # a full disk, or anything else: never leave the temporary behind
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            final = folder / f"{stem}_{next_number(folder, stem):05d}_.png"
            raise _write_error(error, final, node_id, hint) from error
        raise
    try:
        number = next_number(folder, stem)
        while number < MAX_NUMBER:
            final = folder / f"{stem}_{number:05d}_.png"
            try:
                os.link(temporary, final)  # atomic; fails instead of overwriting
                return final
            except FileExistsError:
                number += 1
        raise FileExistsError(f"no free file number for {folder / stem}_*.png")
    except FileExistsError:
        raise
    except OSError as error:
        raise _write_error(error, folder / f"{stem}_*_.png", node_id, hint) from error
    finally:
        temporary.unlink(missing_ok=True)


def _write_error(error: OSError, path: Path, node_id: str, hint: str) -> OutputWriteError:
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return OutputWriteError(f"{node_id}: no space left on device while writing {path}; free space or {hint}")
    reason = error.strerror or str(error)
    name = errno.errorcode.get(error.errno, "") if error.errno is not None else ""
    return OutputWriteError(f"{node_id}: could not write {path}: {reason}{f' ({name})' if name else ''}; "
                            f"check that the folder is writable and has free space, or {hint}")


def next_number(folder: Path, stem: str) -> int:
    """1 + the highest number of ``<stem>_<N>_.png`` files in ``folder`` (1 when none)."""
    highest = 0
    for path in folder.glob(f"{stem}_*_.png"):
        digits = path.name[len(stem) + 1:-len("_.png")]
        if digits.isdigit():
            highest = max(highest, int(digits))
    return highest + 1


def png_text(services: Mapping[str, Any]) -> dict[str, str]:
    """The PNG text chunks of a saved image, as ComfyUI writes them plus ours:

    - ``prompt``: the API prompt as the client sent it (ours converted when it sent our format);
    - one chunk per key of the client's ``extra_data.extra_pnginfo`` (ComfyUI's frontend sends
      ``{"workflow": <its UI graph>}``, which it reads back when a PNG is dropped on it);
    - ``latentflow``: the workflow in our format (what ``main.py run image.png`` and our editor read).
    """
    from engine.workflow import is_comfyui_prompt

    text: dict[str, str] = {}
    document = services.get("workflow_document")
    sent = services.get("prompt")
    if isinstance(sent, Mapping) and is_comfyui_prompt(dict(sent)):
        text["prompt"] = json.dumps(sent)
    elif isinstance(document, Mapping):
        text["prompt"] = json.dumps(document if is_comfyui_prompt(dict(document)) else comfy_prompt(document))
    extra = services.get("extra_pnginfo")
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            if key not in ("prompt", PNG_KEY):  # never shadow the prompt or our own chunk
                text[str(key)] = json.dumps(value)
    if isinstance(document, Mapping) and not is_comfyui_prompt(dict(document)):
        text[PNG_KEY] = json.dumps(document)
    return text


def _settings(runtime: Runtime, ctx: NodeContext) -> Any:
    return ctx.services.get("settings", runtime.settings) if ctx is not None else runtime.settings


def save_images(image: Any, folder: Path, prefix: str, kind: str, ctx: NodeContext | None, node_id: str) -> Result:
    """Write every image of the batch as a numbered PNG; the UI entry of each for the editor/CLI."""
    target = confined(folder, prefix)
    if target is None or not Path(prefix).name:
        raise ValueError(f"{node_id}: filename_prefix {prefix!r} must name a file inside {folder} "
                         "(no '..' or absolute paths)")
    subfolder = Path(prefix).parent.as_posix()
    subfolder = "" if subfolder == "." else subfolder
    # The name is checked above; the place it leads to is checked here, after symbolic links
    # (a subfolder of output/ that is a link to elsewhere must not receive files).
    root, resolved = folder.resolve(), target.parent.resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"{node_id}: filename_prefix {prefix!r} leads outside {folder}: the subfolder "
                         f"{subfolder!r} is a symbolic link to {resolved}; save into a real subfolder of "
                         f"{folder} (or remove the link)")
    hint = "choose another folder with --output-directory" if kind == "output" else f"empty {folder}"
    text = png_text(ctx.services if ctx is not None else {})
    images = []
    for picture in to_png_images(image):
        path = write_png_atomically(target.parent, target.name, picture, text, node_id, hint)
        images.append({"filename": path.name, "subfolder": subfolder, "type": kind, "path": str(path)})
    return Result(values=(), ui={"images": images})


def input_images(runtime: Runtime) -> list[str]:
    """The image files in the input/ folder (subfolders as ``sub/name``)."""
    return list_files(Path(runtime.settings.input_dir), IMAGE_SUFFIXES)


def input_image_path(runtime: Runtime, name: str) -> Path | None:
    """The input image ``name`` (confined to input/), or None when there is no such file."""
    path = confined(Path(runtime.settings.input_dir), name)
    return path if path is not None and path.is_file() else None


def existing_input(runtime: Runtime, name: str, node_id: str, input_name: str = "image") -> Path:
    path = input_image_path(runtime, name)
    if path is None:
        raise FileNotFoundError(f"{node_id}: {input_name} {name!r} is not in {runtime.settings.input_dir}; put "
                                "it there (or upload it) and pick it again")
    return path


def nodes(runtime: Runtime) -> list[NodeSpec]:
    def image_path(name: str) -> Path | None:
        return input_image_path(runtime, name)

    @node("Decode", display_name="VAE Decode", category="latent")
    def decode(vae: "VAE", latent: "LATENT",
               tiled: Bool(tooltip="decode in overlapping tiles to bound memory on large images") = False,
               ) -> Out(image="IMAGE"):
        """Turn a latent into images with the VAE."""
        return decode_latent(runtime, check_vae(vae, "Decode"), latent, tiled, "Decode")

    @node("LoadInputImage", display_name="Load Input Image", category="image",
          fingerprint=lambda image, **_: file_fingerprint(image_path(image)))
    def load_input_image(
        image: Choice(choices=lambda: input_images(runtime), image_upload=True,
                      tooltip="a file in the input/ folder"),
    ) -> Out(image="IMAGE", mask="MASK"):
        """Load an image from input/; its alpha channel becomes the mask (transparent = 1 = repaint)."""
        import numpy as np
        import torch
        from PIL import Image, ImageOps

        path = existing_input(runtime, image, "LoadInputImage")
        with Image.open(path) as opened:
            picture = ImageOps.exif_transpose(opened)
            rgba = np.asarray(picture.convert("RGBA"), dtype=np.float32) / 255.0  # (H, W, 4)
            has_alpha = "A" in picture.getbands() or "transparency" in picture.info
        pixels = torch.from_numpy(rgba[None, :, :, :3].copy())  # (1, H, W, 3)
        mask = 1.0 - torch.from_numpy(rgba[None, :, :, 3].copy()) if has_alpha \
            else torch.zeros(1, rgba.shape[0], rgba.shape[1])
        return pixels, mask

    @node("ScaleImage", display_name="Scale Image", category="image")
    def scale_image(
        image: "IMAGE",
        width: Int(min=1, max=16384) = 512,
        height: Int(min=1, max=16384) = 512,
        method: Choice(choices=SCALE_METHODS) = "bilinear",
        crop: Choice(choices=CROP_MODES, tooltip="center: crop to the target aspect ratio first") = "disabled",
    ) -> Out(image="IMAGE"):
        """Resize images to width x height."""
        import torch.nn.functional as F

        x = image.permute(0, 3, 1, 2)  # (B, 3, H, W)
        if crop == "center":
            src_h, src_w = x.shape[-2:]
            if src_w * height > src_h * width:  # too wide
                keep = max(1, round(src_h * width / height))
                x = x[..., :, (src_w - keep) // 2:(src_w - keep) // 2 + keep]
            else:
                keep = max(1, round(src_w * height / width))
                x = x[..., (src_h - keep) // 2:(src_h - keep) // 2 + keep, :]
        if method == "lanczos":
            return _lanczos(image if crop == "disabled" else x.permute(0, 2, 3, 1), width, height)
        kwargs = {"align_corners": False, "antialias": True} if method in ("bilinear", "bicubic") else {}
        out = F.interpolate(x, size=(height, width), mode=method, **kwargs)
        return out.clamp(0, 1).permute(0, 2, 3, 1).contiguous()

    @node("SaveImage", display_name="Save Image", category="image", output=True, hidden=COMFYUI_HIDDEN)
    def save_image(
        images: "IMAGE",
        filename_prefix: Text(tooltip="file name start; may include a subfolder (sub/name)") = "ComfyUI",
        ctx: Context = None,
    ) -> None:
        """Save images as PNG (<prefix>_00001_.png, ...) in output/ with the workflow embedded
        (drop one on the editor, or `python main.py run image.png`, to get the workflow back).
        Never overwrites a file."""
        output_dir = Path(ctx.services.get("output_dir") or _settings(runtime, ctx).output_dir)
        return save_images(images, output_dir, filename_prefix, "output", ctx, "SaveImage")

    @node("PreviewImage", display_name="Preview Image", category="image", output=True, hidden=COMFYUI_HIDDEN)
    def preview_image(images: "IMAGE", ctx: Context = None) -> None:
        """Show images in the editor without keeping them (written to temp/)."""
        settings = _settings(runtime, ctx)
        return save_images(images, Path(settings.root) / "temp", "preview", "temp", ctx, "PreviewImage")

    return [decode, load_input_image, scale_image, save_image, preview_image]


def _lanczos(image: Any, width: int, height: int) -> Any:
    import numpy as np
    import torch
    from PIL import Image

    out = [np.asarray(picture.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
           for picture in to_png_images(image)]
    return torch.from_numpy(np.stack(out))
