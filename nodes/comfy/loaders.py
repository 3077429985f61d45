"""ComfyUI's loaders: checkpoints, VAE, LoRA, diffusion model, text encoders, CLIP layer.

Adapters over our loaders (``nodes.loaders``): LoadCheckpoint, LoadVAE, LoadLoRA, LoadUNet,
LoadTextEncoder, SetClipLayer. Each keeps its loader's cache fingerprint (the file's
modification time), so an edited model file reloads here too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from engine.api import Choice, Float, Int, NodeSpec, Out, node
from engine.model_paths import ModelChoice, ModelPaths
from nodes.comfy import COMPAT, call
from nodes.loaders import TEXT_ENCODERS
from nodes.runtime import Runtime, file_fingerprint
from nodes.values import VaeValue

CONFIGS = (
    "anything_v3.yaml", "v1-inference.yaml", "v1-inference_clip_skip_2.yaml", "v1-inference_clip_skip_2_fp16.yaml",
    "v1-inference_fp16.yaml", "v1-inpainting-inference.yaml", "v2-inference-v.yaml", "v2-inference-v_fp32.yaml",
    "v2-inference.yaml", "v2-inference_fp32.yaml", "v2-inpainting-inference.yaml",
)
# What a config tells that tensor shapes do not: the prediction type and the CLIP layer.
# (Precision and the inpainting UNet are ours to choose / read from the file.)
CONFIG_PREDICTION = {"v2-inference-v.yaml": "v", "v2-inference-v_fp32.yaml": "v"}
CONFIG_CLIP_SKIP = {"anything_v3.yaml": 2, "v1-inference_clip_skip_2.yaml": 2, "v1-inference_clip_skip_2_fp16.yaml": 2}
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
DEVICES = ("default", "cpu")
CLIP_TYPES = (
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos", "lumina2",
    "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image",
)
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")
LORA_STRENGTH = dict(min=-100.0, max=100.0, step=0.01)
SDXL_VAE_SCALE, SD_VAE_SCALE = 0.13025, 0.18215
ENCODER_TIP = "a text encoder file in models/text_encoders/ (or models/clip/)"
TAESD_VAES = ("taesd", "taesdxl")  # VAE names for TAESD pairs in models/vae_approx/ (ComfyUI's names)
VAE_TIP = ("a file in models/vae/, or taesd / taesdxl (the tiny autoencoder for SD 1.x-2.x / SDXL: fast, a little "
           "less faithful), listed when its encoder and decoder files are both in models/vae_approx/")


def approx_folders(models: ModelPaths) -> list[Path]:
    """The vae_approx folders (TAESD files) in search order."""
    return [folder.path for folder in models.folders("vae_approx")]


@dataclass(frozen=True)
class VaeChoice(ModelChoice):
    """The VAE files, then ``taesd`` / ``taesdxl`` for each TAESD whose encoder and decoder files
    (``taesd_encoder.*`` + ``taesd_decoder.*``, ``taesdxl_*``) are both in models/vae_approx/, as
    ComfyUI lists them (no torch: the list is part of /object_info)."""

    def options(self) -> list[str]:
        from sgm.io.taesd_files import taesd_vae_names

        assert self.models is not None
        return [*super().options(), *taesd_vae_names(approx_folders(self.models))]

    def check(self, value: Any) -> str | None:
        problem = super().check(value)
        if problem is not None and value in TAESD_VAES and self.models is not None:
            return taesd_missing_message(self.models, value)
        return problem


def taesd_missing_message(models: ModelPaths, name: str) -> str:
    """What a TAESD VAE name lacks and where to put it."""
    from sgm.io.taesd_files import PARTS, PREFIX_FAMILIES, find_taesd_file

    folders = approx_folders(models)
    missing = [f"{name}_{part}" for part in PARTS if find_taesd_file(folders, PREFIX_FAMILIES[name], part) is None]
    where = " or ".join(f"{folder}/" for folder in folders) or "models/vae_approx/"
    return (f"VAE {name!r} needs {' and '.join(missing) or 'both files'} (.safetensors or .pth, from "
            f"madebyollin/taesd) in {where}")


def taesd_vae(runtime: Runtime, name: str, node_id: str) -> VaeValue:
    """The TAESD pair ``name`` (taesd / taesdxl) from models/vae_approx/ as a VAE value: its
    ``encode`` / ``decode`` speak unscaled latents, so the decode and encode nodes run it unchanged."""
    from sgm.io.taesd_files import PARTS, PREFIX_FAMILIES, find_taesd_file, load_tiny_autoencoder

    models = runtime.settings.model_paths
    family = PREFIX_FAMILIES[name]
    encoder, decoder = (find_taesd_file(approx_folders(models), family, part) for part in PARTS)
    if encoder is None or decoder is None:
        raise FileNotFoundError(f"{node_id}: vae_name: {taesd_missing_message(models, name)}")
    # One cache entry for the pair, under the decoder's file; the encoder's version is part of
    # the kind, so replacing either file loads the pair again.
    kind = f"taesd:{encoder.resolve()}@{encoder.stat().st_mtime_ns}"
    vae = runtime.load_model(decoder, kind, node_id,
                             lambda dtype: load_tiny_autoencoder(encoder, decoder, family, dtype))
    return VaeValue(vae, vae.scale_factor, name)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    def files(node_id: str, input_name: str, tooltip: str | None = None) -> Any:
        """Our loader's file choice (same folders, same list), optionally re-described."""
        widget = ours[node_id].input(input_name).widget
        return widget if tooltip is None else replace(widget, tooltip=tooltip)

    @node("CheckpointLoaderSimple", display_name="Load Checkpoint", category="loaders", compat=COMPAT,
          fingerprint=ours["LoadCheckpoint"].fingerprint)
    def checkpoint_loader_simple(
        ckpt_name: files("LoadCheckpoint", "ckpt_name"),
    ) -> Out(MODEL="MODEL", CLIP="CLIP", VAE="VAE"):
        """Load a checkpoint's diffusion model, text encoder and VAE (latentflow's LoadCheckpoint)."""
        return call(ours, "LoadCheckpoint", ckpt_name=ckpt_name)

    @node("CheckpointLoader", display_name="Load Checkpoint With Config (DEPRECATED)", category="advanced/loaders",
          compat=COMPAT, deprecated=True, fingerprint=ours["LoadCheckpoint"].fingerprint)
    def checkpoint_loader(
        config_name: Choice(choices=CONFIGS, tooltip="ComfyUI's model config; only its prediction type and "
                                                      "CLIP layer matter here (the rest is read from the file)"),
        ckpt_name: files("LoadCheckpoint", "ckpt_name"),
    ) -> Out(MODEL="MODEL", CLIP="CLIP", VAE="VAE"):
        """Load a checkpoint (latentflow's LoadCheckpoint) with the config's prediction type (v for the v2 "-v"
        configs, else eps) and CLIP layer (clip skip 2 for the clip_skip_2 and anything_v3 configs)."""
        model, clip, vae = call(ours, "LoadCheckpoint", ckpt_name=ckpt_name)
        prediction = CONFIG_PREDICTION.get(config_name, "eps")
        if getattr(model.model_sampling, "prediction", None) != prediction:
            from sgm.sampling.denoisers import model_sampling_for

            model = replace(model, model_sampling=model_sampling_for(prediction))
        if config_name in CONFIG_CLIP_SKIP and clip is not None:
            clip = replace(clip, clip_skip=CONFIG_CLIP_SKIP[config_name])
        return model, clip, vae

    def vae_fingerprint(vae_name: Any = None, **literals: Any) -> Any:
        if vae_name in TAESD_VAES:  # both TAESD files: replacing either reloads
            from sgm.io.taesd_files import PARTS, PREFIX_FAMILIES, find_taesd_file

            folders = approx_folders(runtime.settings.model_paths)
            return [file_fingerprint(find_taesd_file(folders, PREFIX_FAMILIES[vae_name], part)) for part in PARTS]
        return ours["LoadVAE"].fingerprint(vae_name=vae_name, **literals)

    @node("VAELoader", display_name="Load VAE", category="loaders", compat=COMPAT, fingerprint=vae_fingerprint)
    def vae_loader(
        vae_name: VaeChoice(models=runtime.settings.model_paths, kinds=("vae",), tooltip=VAE_TIP),
    ) -> Out(VAE="VAE"):
        """Load a standalone VAE (latentflow's LoadVAE), or taesd / taesdxl: the tiny autoencoder whose encoder and
        decoder files are in models/vae_approx/. ComfyUI scales latents by the model, we by the VAE: a file whose
        name says it is an SDXL VAE ("xl") gets SDXL's factor 0.13025, any other SD's 0.18215."""
        if vae_name in TAESD_VAES:
            return taesd_vae(runtime, vae_name, "VAELoader")
        scale = SDXL_VAE_SCALE if "xl" in Path(vae_name).name.lower() else SD_VAE_SCALE
        return call(ours, "LoadVAE", vae_name=vae_name, scale_factor=scale)

    @node("LoraLoader", display_name="Load LoRA", category="loaders", compat=COMPAT,
          fingerprint=ours["LoadLoRA"].fingerprint)
    def lora_loader(
        model: "MODEL",
        clip: "CLIP",
        lora_name: files("LoadLoRA", "lora_name"),
        strength_model: Float(default=1.0, **LORA_STRENGTH),
        strength_clip: Float(default=1.0, **LORA_STRENGTH),
    ) -> Out(MODEL="MODEL", CLIP="CLIP"):
        """Apply a LoRA to the diffusion model and the text encoder (latentflow's LoadLoRA)."""
        if strength_model == 0 and strength_clip == 0:
            return model, clip  # as ComfyUI: nothing to apply, the file is not read
        return call(ours, "LoadLoRA", model=model, clip=clip, lora_name=lora_name,
                    strength_model=strength_model, strength_clip=strength_clip)

    @node("LoraLoaderModelOnly", display_name="LoraLoaderModelOnly", category="loaders", compat=COMPAT,
          fingerprint=ours["LoadLoRA"].fingerprint)
    def lora_loader_model_only(
        model: "MODEL",
        lora_name: files("LoadLoRA", "lora_name"),
        strength_model: Float(default=1.0, **LORA_STRENGTH),
    ) -> Out(MODEL="MODEL"):
        """Apply a LoRA to the diffusion model only (latentflow's LoadLoRA)."""
        if strength_model == 0:
            return model
        new_model, _ = call(ours, "LoadLoRA", model=model, clip=None, lora_name=lora_name,
                            strength_model=strength_model, strength_clip=0.0)
        return new_model

    @node("UNETLoader", display_name="Load Diffusion Model", category="advanced/loaders", compat=COMPAT,
          fingerprint=ours["LoadUNet"].fingerprint)
    def unet_loader(
        unet_name: files("LoadUNet", "unet_name"),
        weight_dtype: Choice(choices=WEIGHT_DTYPES, tooltip="default: the installation's precision; fp8_*: "
                                                            "weights stored in one byte, computed in it"),
    ) -> Out(MODEL="MODEL"):
        """Load a diffusion model (UNet) file, eps prediction (latentflow's LoadUNet); a Lotus-D UNet gets its
        img-to-img sampling (``nodes.comfy.lotus``). fp8 weights are stored in one byte and computed in the
        installation's precision (fp8_e4m3fn_fast is fp8_e4m3fn here)."""
        from nodes.comfy.lotus import lotus_model

        return lotus_model(call(ours, "LoadUNet", unet_name=unet_name, prediction="eps",
                                weight_dtype="fp8_e4m3fn" if weight_dtype == "fp8_e4m3fn_fast" else weight_dtype))

    @node("CLIPLoader", display_name="Load CLIP", category="advanced/loaders", compat=COMPAT,
          fingerprint=lambda clip_name=None, **_: ours["LoadTextEncoder"].fingerprint(text_encoder_name=clip_name))
    def clip_loader(
        clip_name: files("LoadTextEncoder", "text_encoder_name", ENCODER_TIP),
        type: Choice(choices=CLIP_TYPES, tooltip="only stable_diffusion (SD 1.x / 2.x CLIP, SDXL refiner's "
                                                  "bigG) is supported here"),
        device: Choice(choices=DEVICES, optional=True, advanced=True) = None,
    ) -> Out(CLIP="CLIP"):
        """Load a text encoder file (latentflow's LoadTextEncoder); the family (SD 1.x, SD 2.x or the SDXL refiner)
        is read from the file."""
        if type != "stable_diffusion":
            raise ValueError(f"CLIPLoader: type {type!r} is not supported (no {type} text encoder here); "
                             "the supported type is 'stable_diffusion' (SD 1.x / 2.x, SDXL refiner)")
        check_device(runtime, device, "CLIPLoader")
        path = runtime.resolve_model(TEXT_ENCODERS, clip_name, "CLIPLoader", "clip_name")
        tower = text_tower_kind(path)
        family = {"clip_l": "sd1", "open_clip_h": "sd2", "big_g": "sdxl-refiner"}[tower]
        return call(ours, "LoadTextEncoder", text_encoder_name=clip_name, family=family)

    @node("DualCLIPLoader", display_name="DualCLIPLoader", category="advanced/loaders", compat=COMPAT,
          fingerprint=lambda clip_name1=None, clip_name2=None, **_: ours["LoadTextEncoder"].fingerprint(
              text_encoder_name=clip_name1, text_encoder_name_2=clip_name2))
    def dual_clip_loader(
        clip_name1: files("LoadTextEncoder", "text_encoder_name", ENCODER_TIP),
        clip_name2: files("LoadTextEncoder", "text_encoder_name", ENCODER_TIP),
        type: Choice(choices=DUAL_CLIP_TYPES, tooltip="only sdxl (CLIP-L + OpenCLIP bigG) is supported here"),
        device: Choice(choices=DEVICES, optional=True, advanced=True) = None,
    ) -> Out(CLIP="CLIP"):
        """Load SDXL's two text encoders (latentflow's LoadTextEncoder), in either order (bigG is told by its
        shape)."""
        if type != "sdxl":
            raise ValueError(f"DualCLIPLoader: type {type!r} is not supported (no {type} text encoders here); "
                             "the supported type is 'sdxl' (CLIP-L + OpenCLIP bigG)")
        check_device(runtime, device, "DualCLIPLoader")
        names = [clip_name1, clip_name2]
        paths = [runtime.resolve_model(TEXT_ENCODERS, n, "DualCLIPLoader", i)
                 for n, i in zip(names, ("clip_name1", "clip_name2"))]
        kinds = [text_tower_kind(p) for p in paths]
        if kinds[0] != "clip_l" and kinds[1] == "clip_l":
            names.reverse()  # ComfyUI tells the towers apart by their keys, not by their order
        return call(ours, "LoadTextEncoder", text_encoder_name=names[0], family="sdxl",
                    text_encoder_name_2=names[1])

    @node("CLIPSetLastLayer", display_name="CLIP Set Last Layer", category="conditioning", compat=COMPAT)
    def clip_set_last_layer(
        clip: "CLIP",
        stop_at_clip_layer: Int(default=-1, min=-24, max=-1, step=1),
    ) -> Out(CLIP="CLIP"):
        """Encode prompts from an earlier text-encoder layer; -2 = "clip skip 2" (latentflow's SetClipLayer)."""
        return call(ours, "SetClipLayer", clip=clip, stop_at_clip_layer=stop_at_clip_layer)

    return [checkpoint_loader_simple, checkpoint_loader, vae_loader, lora_loader, lora_loader_model_only,
            unet_loader, clip_loader, dual_clip_loader, clip_set_last_layer]


def check_device(runtime: Runtime, device: str | None, node_id: str) -> None:
    """ComfyUI's ``device`` option: "cpu" is honoured only where models run on the CPU anyway."""
    if device in (None, "default"):
        return
    if device == "cpu" and runtime.models.device.type == "cpu":
        return
    raise ValueError(f"{node_id}: device {device!r} is not supported on this {runtime.models.device.type} "
                     "installation (text encoders run where the other models run); use 'default'")


def text_tower_kind(path: Path) -> str:
    """Which CLIP text tower a file holds: "clip_l" (SD 1.x, SDXL's first), "open_clip_h" (SD 2.x)
    or "big_g" (SDXL's second, the refiner's), told by layout and width (key names and shapes
    only; no tensor is read from a .safetensors file)."""
    shapes = _tensor_shapes(path)
    width = next((shape[-1] for key, shape in shapes.items() if key.endswith("token_embedding.weight")), None)
    widths = {768: "clip_l", 1024: "open_clip_h", 1280: "big_g"}
    if width in widths:
        return widths[width]
    # Other widths (reduced test models): OpenCLIP layout is SD 2.x's; a projection is bigG's.
    if any(".resblocks." in key for key in shapes):
        return "open_clip_h"
    return "big_g" if any(key.endswith("text_projection.weight") for key in shapes) else "clip_l"


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    from sgm.io.state_dict import read_state_dict

    return {key: tuple(value.shape) for key, value in read_state_dict(path)[0].items()}
