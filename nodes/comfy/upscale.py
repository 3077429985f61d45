"""ComfyUI's upscale-model nodes: load an ESRGAN / Real-ESRGAN / SwinIR / DAT / ... file by content
(spandrel) and upscale images with it in tiles (``sgm.io.upscalers``).

ImageScaleBy and ImageScaleToTotalPixels, the other nodes of ComfyUI's upscaling workflows,
are in ``nodes.comfy.image`` and ``nodes.comfy.image_ops``.
"""

from __future__ import annotations

from typing import Any, Mapping

from engine.api import Context, NodeSpec, Out, node
from engine.model_paths import model_choice
from nodes.comfy import COMPAT
from nodes.runtime import Runtime, model_file_fingerprint

UPSCALE_MODELS = ("upscale_models",)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    models = runtime.settings.model_paths

    fingerprint = model_file_fingerprint(models, UPSCALE_MODELS, "model_name")

    @node("UpscaleModelLoader", display_name="Load Upscale Model", category="loaders", compat=COMPAT,
          fingerprint=fingerprint)
    def upscale_model_loader(
        model_name: model_choice(models, *UPSCALE_MODELS, tooltip="an upscale model file in models/upscale_models/ "
                                                                  "(ESRGAN, Real-ESRGAN, SwinIR, DAT, ...)"),
    ) -> Out(UPSCALE_MODEL="UPSCALE_MODEL"):
        """Load an image upscale model; its architecture, scale and channels are read from the file (spandrel)."""
        from sgm.io.upscalers import load_upscale_model

        path = runtime.resolve_model(UPSCALE_MODELS, model_name, "UpscaleModelLoader", "model_name")
        return runtime.load_model(path, "upscale_model", "UpscaleModelLoader",
                                  lambda dtype: load_upscale_model(path, dtype), prepare=False)

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

        def progress(done: int, total: int) -> None:
            if ctx is not None:
                ctx.progress(done, total)

        def work() -> Any:
            with runtime.models.use(upscale_model.module):
                return upscale_image(upscale_model, image, on_progress=progress)

        return runtime.models.retry_on_oom(work, "ImageUpscaleWithModel")

    return [upscale_model_loader, image_upscale_with_model]
