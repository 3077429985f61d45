"""ComfyUI's upscale-model nodes: load an ESRGAN / Real-ESRGAN / SwinIR / DAT / ... file by content
(spandrel) and upscale images with it in tiles (``sgm.io.upscalers``).

ImageScaleBy and ImageScaleToTotalPixels, the other nodes of ComfyUI's upscaling workflows,
are in ``nodes.comfy.image`` and ``nodes.comfy.image_ops``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from engine.api import Context, NodeSpec, Out, node
from engine.model_paths import model_choice
from nodes import limits
from nodes.comfy import COMPAT
from nodes.runtime import Runtime, model_file_fingerprint

UPSCALE_MODELS = ("upscale_models",)

FileVersion = tuple[str, int, int]  # (path, modification time in ns, bytes)


def file_version(path: Path) -> FileVersion | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_mtime_ns, stat.st_size


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    models = runtime.settings.model_paths

    fingerprint = model_file_fingerprint(models, UPSCALE_MODELS, "model_name")
    # The scale of each file version this installation loaded: spandrel reads it from the
    # weights, so validation (torch-free) knows it only from an earlier load (nodes.limits).
    scales: dict[FileVersion, int] = {}

    def known_scale(model_name: str) -> int | None:
        path = models.resolve(UPSCALE_MODELS, model_name)
        version = file_version(path) if path is not None else None
        return scales.get(version) if version is not None else None

    @node("UpscaleModelLoader", display_name="Load Upscale Model", category="loaders", compat=COMPAT,
          fingerprint=fingerprint)
    def upscale_model_loader(
        model_name: model_choice(models, *UPSCALE_MODELS, tooltip="an upscale model file in models/upscale_models/ "
                                                                  "(ESRGAN, Real-ESRGAN, SwinIR, DAT, ...)"),
    ) -> Out(UPSCALE_MODEL="UPSCALE_MODEL"):
        """Load an image upscale model; its architecture, scale and channels are read from the file (spandrel)."""
        from sgm.io.upscalers import load_upscale_model

        path = runtime.resolve_model(UPSCALE_MODELS, model_name, "UpscaleModelLoader", "model_name")
        version = file_version(path)
        model = runtime.load_model(path, "upscale_model", "UpscaleModelLoader",
                                   lambda dtype: load_upscale_model(path, dtype), prepare=False)
        if version is not None:
            scales[version] = model.scale
        return model

    @node("ImageUpscaleWithModel", display_name="Upscale Image (using Model)", category="image/upscaling",
          compat=COMPAT)
    def image_upscale_with_model(
        upscale_model: "UPSCALE_MODEL",
        image: "IMAGE",
        ctx: Context = None,
    ) -> Out(IMAGE="IMAGE"):
        """Upscale images by the model's factor, in 512-pixel tiles that overlap by 32 and are blended (tiles
        halve when memory runs short)."""
        from sgm.io.upscalers import upscale_image

        batch, height, width = (int(n) for n in image.shape[:3])  # (B, H, W, C)
        limits.check_upscale(ctx.node_id if ctx is not None else "?", width, height, batch, upscale_model.scale,
                             upscale_model.name or "the upscale model")

        def progress(done: int, total: int) -> None:
            if ctx is not None:
                ctx.progress(done, total)

        def work() -> Any:
            with runtime.models.use(upscale_model.module):
                return upscale_image(upscale_model, image, on_progress=progress)

        return runtime.models.retry_on_oom(work, "ImageUpscaleWithModel")

    loader = dataclasses.replace(upscale_model_loader, check=limits.upscale_model_loader(known_scale))
    return [loader, image_upscale_with_model]
