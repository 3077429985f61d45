"""ComfyUI's ``nodes`` module for packs: ``MAX_RESOLUTION``, the core node classes by name
(each calling our node of that name: ``nodes.comfy``), ``SaveImage`` / ``PreviewImage`` as
classes packs subclass, ``common_ksampler``, ``NODE_CLASS_MAPPINGS``.

Only packs see this as ``nodes`` (see :mod:`comfy_packs.imports`); our own ``nodes`` package
is untouched.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from comfy_packs import state
from comfy_packs.files import run_folder
from comfy_packs.models import NotSupportedError
from comfy_packs.values import from_comfy, to_comfy

MAX_RESOLUTION = 16384

# class -> (method, its parameters in ComfyUI's order): packs call these positionally.
CORE = {
    "CheckpointLoaderSimple": ("load_checkpoint", ("ckpt_name",)),
    "CheckpointLoader": ("load_checkpoint", ("config_name", "ckpt_name")),
    "VAELoader": ("load_vae", ("vae_name",)),
    "LoraLoader": ("load_lora", ("model", "clip", "lora_name", "strength_model", "strength_clip")),
    "LoraLoaderModelOnly": ("load_lora_model_only", ("model", "lora_name", "strength_model")),
    "UNETLoader": ("load_unet", ("unet_name", "weight_dtype")),
    "CLIPLoader": ("load_clip", ("clip_name", "type", "device")),
    "DualCLIPLoader": ("load_clip", ("clip_name1", "clip_name2", "type", "device")),
    "CLIPSetLastLayer": ("set_last_layer", ("clip", "stop_at_clip_layer")),
    "CLIPTextEncode": ("encode", ("clip", "text")),
    "CLIPTextEncodeSDXL": ("encode", ("clip", "width", "height", "crop_w", "crop_h", "target_width",
                                      "target_height", "text_g", "text_l")),
    "ConditioningCombine": ("combine", ("conditioning_1", "conditioning_2")),
    "ConditioningSetArea": ("append", ("conditioning", "width", "height", "x", "y", "strength")),
    "ConditioningZeroOut": ("zero_out", ("conditioning",)),
    "EmptyLatentImage": ("generate", ("width", "height", "batch_size")),
    "KSampler": ("sample", ("model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                            "latent_image", "denoise")),
    "VAEDecode": ("decode", ("vae", "samples")),
    "VAEEncode": ("encode", ("vae", "pixels")),
    "VAEDecodeTiled": ("decode", ("vae", "samples", "tile_size", "overlap", "temporal_size", "temporal_overlap")),
    "VAEEncodeTiled": ("encode", ("vae", "pixels", "tile_size", "overlap", "temporal_size", "temporal_overlap")),
    "LatentUpscale": ("upscale", ("samples", "upscale_method", "width", "height", "crop")),
    "LatentUpscaleBy": ("upscale", ("samples", "upscale_method", "scale_by")),
    "LatentFromBatch": ("frombatch", ("samples", "batch_index", "length")),
    "RepeatLatentBatch": ("repeat", ("samples", "amount")),
    "SetLatentNoiseMask": ("set_mask", ("samples", "mask")),
    "LoadImage": ("load_image", ("image",)),
    "LoadImageMask": ("load_image", ("image", "channel")),
    "ImageScale": ("upscale", ("image", "upscale_method", "width", "height", "crop")),
    "ImageScaleBy": ("upscale", ("image", "upscale_method", "scale_by")),
}


def core_class(class_type: str) -> type:
    """A class with ComfyUI's interface whose method runs our node ``class_type``."""
    method_name, parameters = CORE[class_type]

    def spec() -> Any:
        found = state.installation().registry.get(class_type)
        if found is None:
            raise NotSupportedError(f"nodes.{class_type}", f"node {class_type}")
        return found

    def INPUT_TYPES(cls: type) -> dict[str, Any]:  # noqa: N802 - ComfyUI's name
        from engine.registry import node_info

        declared = node_info(spec())["input"]
        return {section: {name: tuple(entry) for name, entry in items.items()}
                for section, items in declared.items() if section in ("required", "optional")}

    def method(self: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        if len(args) > len(parameters):
            raise TypeError(f"{class_type}.{method_name}() takes {len(parameters)} inputs, got {len(args)}")
        inputs = {**dict(zip(parameters, args)), **kwargs}
        node = spec()
        types = {i.name: i.type for i in node.inputs}
        ours = {name: from_comfy(value, types.get(name, "*"), f"nodes.{class_type}") for name, value in inputs.items()}
        result = state.call_ours(class_type, **ours)
        if not isinstance(result, tuple):
            result = (result,)
        return tuple(to_comfy(value) for value in result)

    found = state.installation().registry.get(class_type)
    outputs = found.outputs if found is not None else ()
    return type(class_type, (), {
        "INPUT_TYPES": classmethod(INPUT_TYPES), "FUNCTION": method_name, method_name: method,
        "RETURN_TYPES": tuple(o.type for o in outputs), "RETURN_NAMES": tuple(o.name for o in outputs),
        "CATEGORY": found.category if found is not None else "", "OUTPUT_NODE": False,
    })


class SaveImage:
    """ComfyUI's SaveImage, as packs subclass it: ``save_images(images, filename_prefix, prompt,
    extra_pnginfo)`` writes numbered PNGs with the prompt and workflow, returns the UI entry."""

    def __init__(self) -> None:
        self.output_dir = run_folder("output")  # the run's: a worker's scratch folder (cluster.files)
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def save_images(self, images: Any, filename_prefix: str = "ComfyUI", prompt: Any = None,
                    extra_pnginfo: Any = None) -> dict[str, Any]:
        import numpy as np
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        from comfy_packs.files import save_image_path

        filename_prefix += self.prefix_append
        folder, filename, counter, subfolder, _ = save_image_path(
            filename_prefix, str(self.output_dir), images[0].shape[1], images[0].shape[0])
        os.makedirs(folder, exist_ok=True)
        results = []
        for batch_number, image in enumerate(images):
            array = np.clip(255.0 * image.float().cpu().numpy(), 0, 255).astype(np.uint8)
            picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
            info = PngInfo()
            if prompt is not None:
                info.add_text("prompt", json.dumps(prompt))
            for key, value in (extra_pnginfo or {}).items():
                info.add_text(str(key), json.dumps(value))
            name = filename.replace("%batch_num%", str(batch_number))
            file = f"{name}_{counter:05}_.png"
            picture.save(os.path.join(folder, file), pnginfo=info, compress_level=self.compress_level)
            results.append({"filename": file, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    """ComfyUI's PreviewImage: SaveImage into temp/ with a random suffix."""

    def __init__(self) -> None:
        super().__init__()
        self.output_dir = run_folder("temp")
        self.type = "temp"
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:  # noqa: N802
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


def common_ksampler(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                    positive: Any, negative: Any, latent: Any, denoise: float = 1.0, disable_noise: bool = False,
                    start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> tuple[Any]:
    """``nodes.common_ksampler``: KSampler's sampling; partial step ranges are not offered."""
    if disable_noise or start_step is not None or last_step is not None:
        raise NotSupportedError("common_ksampler with disable_noise / start_step / last_step",
                                "KSamplerAdvanced step ranges")
    return core_class("KSampler")().sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                           latent, denoise)


def module_names() -> dict[str, Any]:
    """Everything the ``nodes`` shim exports."""
    classes: dict[str, Any] = {name: core_class(name) for name in CORE
                               if state.installation().registry.get(name) is not None}
    classes.update(SaveImage=SaveImage, PreviewImage=PreviewImage)
    return {**classes, "NODE_CLASS_MAPPINGS": dict(classes),
            "NODE_DISPLAY_NAME_MAPPINGS": {name: name for name in classes}, "MAX_RESOLUTION": MAX_RESOLUTION,
            "common_ksampler": common_ksampler}
