"""Loader nodes: checkpoints, VAEs, UNets, text encoders and LoRAs from ``models/``.

Choices list the files in the installation's model folders (``settings.model_paths``:
``models/<kind>/`` plus the folders extra_model_paths.yaml adds); a missing file's message
names the folders to put it in. Files are loaded through the
runtime's :class:`sgm.io.model_cache.ModelCache` (once per file version, shared by every
workflow); each loader's cache fingerprint is the file's modification time, so an edited
file reloads.
"""

from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.api import Choice, Float, Int, NodeSpec, Out, node
from engine.model_paths import model_choice
from nodes.runtime import Runtime, model_file_fingerprint
from nodes.values import ClipValue, LatentFormat, LoraPatch, ModelValue, VaeValue
from sgm.nets.speed_names import COMPILE_MODE_CHOICES, WEIGHT_DTYPE_CHOICES

CHECKPOINTS = ("checkpoints",)
VAES = ("vae",)
UNETS = ("diffusion_models",)  # models/unet/ and models/diffusion_models/ (one kind, as in ComfyUI)
TEXT_ENCODERS = ("text_encoders",)  # models/text_encoders/ and models/clip/
LORAS = ("loras",)
NONE = "none"
TEXT_FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner")


WEIGHT_DTYPE_TIP = ("how the diffusion model's weights are stored: default = as --weight-dtype says (else "
                    "as loaded); fp8_e4m3fn / fp8_e5m2 / int8 = one byte per weight, computed in the usual "
                    "dtype (an fp8 file stays as stored)")


def weight_dtype_for(runtime: Runtime, choice: str, node_id: str) -> Any:
    """The node's weight_dtype input, "default" deferring to the installation's --weight-dtype."""
    from sgm.nets.quant import WeightDtype, parse_weight_dtype

    chosen = parse_weight_dtype(choice, f"{node_id}: weight_dtype")
    return runtime.weight_dtype() if chosen == WeightDtype.DEFAULT else chosen


def nodes(runtime: Runtime) -> list[NodeSpec]:
    models = runtime.settings.model_paths

    def fingerprint_for(kinds: tuple[str, ...], *inputs: str) -> Any:
        return model_file_fingerprint(models, kinds, *inputs)

    def embeddings_folder() -> Path:
        # prompt embeddings are looked up in one folder (sgm.text): the first that exists
        folders = [f.path for f in models.folders("embeddings")]
        return next((f for f in folders if f.is_dir()), folders[0])

    def model_value(checkpoint: Any, name: str) -> ModelValue:
        unet, vae = checkpoint.unet, checkpoint.vae
        return ModelValue(
            unet=runtime.compiled(unet),
            model_sampling=checkpoint.model_sampling(),
            family=checkpoint.family,
            name=name,
            latent_format=LatentFormat(channels=int(unet.out_channels),
                                       downscale=int(getattr(vae, "downscale", 8)) if vae is not None else 8),
        )

    @node("LoadCheckpoint", display_name="Load Checkpoint", category="loaders",
          fingerprint=fingerprint_for(CHECKPOINTS, "ckpt_name"))
    def load_checkpoint(
        ckpt_name: model_choice(models, *CHECKPOINTS, tooltip="a file in models/checkpoints/"),
        weight_dtype: Choice(choices=WEIGHT_DTYPE_CHOICES, tooltip=WEIGHT_DTYPE_TIP) = "default",
    ) -> Out(model="MODEL", clip="CLIP", vae="VAE"):
        """Load a single-file checkpoint (SD 1.x, 2.x, SDXL, inpainting, or our own models):
        its diffusion model, text encoder and VAE. Architecture and family come from the file."""
        from sgm.io.checkpoints import load_checkpoint as load

        path = runtime.resolve_model(CHECKPOINTS, ckpt_name, "LoadCheckpoint", "ckpt_name")
        checkpoint = runtime.load_model(path, "checkpoint", "LoadCheckpoint",
                                        lambda dtype: load(path, device="cpu", dtype=dtype),
                                        weight_dtype=weight_dtype_for(runtime, weight_dtype, "LoadCheckpoint"))
        if checkpoint.unet is None:
            raise ValueError(f"LoadCheckpoint: {ckpt_name!r} holds no diffusion model (family "
                             f"{checkpoint.family!r}); load it with LoadVAE if it is a VAE")
        clip = ClipValue(checkpoint.conditioner, checkpoint.family, ckpt_name,
                         embeddings_dir=embeddings_folder())
        vae = VaeValue(checkpoint.vae, checkpoint.scale_factor, ckpt_name) if checkpoint.vae is not None else None
        return model_value(checkpoint, ckpt_name), clip, vae

    @node("LoadVAE", display_name="Load VAE", category="loaders", fingerprint=fingerprint_for(VAES, "vae_name"))
    def load_vae(
        vae_name: model_choice(models, *VAES, tooltip="a file in models/vae/"),
        scale_factor: Float(min=0.0001, max=10.0, step=0.00001, tooltip=(
            "latent scale: 0.18215 for SD 1.x/2.x VAEs, 0.13025 for SDXL's")) = 0.18215,
    ) -> Out(vae="VAE"):
        """Load a standalone VAE (original or diffusers keys) to decode/encode with instead of
        the checkpoint's own."""
        from sgm.io.checkpoints import load_vae as load

        path = runtime.resolve_model(VAES, vae_name, "LoadVAE", "vae_name")
        vae = runtime.load_model(path, "vae", "LoadVAE", lambda dtype: load(path, device="cpu", dtype=dtype))
        return VaeValue(vae, float(scale_factor), vae_name)

    @node("LoadUNet", display_name="Load Diffusion Model", category="loaders",
          fingerprint=fingerprint_for(UNETS, "unet_name"))
    def load_unet(
        unet_name: model_choice(models, *UNETS, tooltip="a file in models/unet/ or models/diffusion_models/"),
        prediction: Choice(choices=("eps", "v"), tooltip="what the model predicts (v for SD 2.x 768-v)") = "eps",
        weight_dtype: Choice(choices=WEIGHT_DTYPE_CHOICES, tooltip=WEIGHT_DTYPE_TIP) = "default",
    ) -> Out(model="MODEL"):
        """Load a diffusion model (UNet) on its own, original or diffusers keys."""
        from sgm.io.checkpoints import load_unet as load

        path = runtime.resolve_model(UNETS, unet_name, "LoadUNet", "unet_name")
        unet = runtime.load_model(path, "unet", "LoadUNet", lambda dtype: load(path, device="cpu", dtype=dtype),
                                  weight_dtype=weight_dtype_for(runtime, weight_dtype, "LoadUNet"))
        family = unet_family(unet)
        from sgm.io.lotus import LOTUS_FAMILY, is_lotus_unet, lotus_model_sampling
        from sgm.sampling.denoisers import model_sampling_for

        sampling = model_sampling_for(prediction)
        if is_lotus_unet(unet):  # Lotus-D: its own family (task vector) and img-to-img sampling
            family, sampling = LOTUS_FAMILY, lotus_model_sampling(sampling)
        return ModelValue(runtime.compiled(unet), sampling, family, unet_name,
                          LatentFormat(channels=int(unet.out_channels)))

    @node("LoadTextEncoder", display_name="Load Text Encoder", category="loaders",
          fingerprint=fingerprint_for(TEXT_ENCODERS, "text_encoder_name", "text_encoder_name_2"))
    def load_text_encoder(
        text_encoder_name: model_choice(models, *TEXT_ENCODERS,
                                        tooltip="a file in models/text_encoders/ or models/clip/ (SDXL: the CLIP-L one)"),
        family: Choice(choices=TEXT_FAMILIES, tooltip="which model family the encoder serves") = "sd1",
        text_encoder_name_2: Choice(choices=lambda: [NONE, *runtime.model_files(*TEXT_ENCODERS)],
                                    tooltip="SDXL's second (OpenCLIP bigG) encoder, or none") = NONE,
    ) -> Out(clip="CLIP"):
        """Load one or two text encoders (transformers or released single-file keys) as the
        family's text conditioner."""
        from sgm.text.encoders import build_conditioner

        names = [text_encoder_name] + ([text_encoder_name_2] if text_encoder_name_2 != NONE else [])
        paths = [runtime.resolve_model(TEXT_ENCODERS, n, "LoadTextEncoder", i)
                 for n, i in zip(names, ("text_encoder_name", "text_encoder_name_2"))]

        def build(dtype: Any) -> Any:
            return build_conditioner(text_state_dict_for(family, paths), family, {}, model_path=paths[0], dtype=dtype)

        conditioner = runtime.load_model(paths[0], f"text:{family}:{'+'.join(map(str, paths))}", "LoadTextEncoder",
                                         build)
        return ClipValue(conditioner, family, "+".join(names), embeddings_dir=embeddings_folder())

    @node("LoadLoRA", display_name="Load LoRA", category="loaders", fingerprint=fingerprint_for(LORAS, "lora_name"))
    def load_lora(
        model: "MODEL",
        clip: "CLIP",
        lora_name: model_choice(models, *LORAS, tooltip="a file in models/loras/"),
        strength_model: Float(min=-10.0, max=10.0, step=0.01, tooltip="scale of the UNet update") = 1.0,
        strength_clip: Float(min=-10.0, max=10.0, step=0.01, tooltip="scale of the text-encoder update") = 1.0,
    ) -> Out(model="MODEL", clip="CLIP"):
        """Apply a LoRA (kohya or diffusers keys) to the model and text encoder with separate
        strengths. The base weights are never changed for good: the LoRA is applied while
        sampling / encoding and removed afterwards, so no reload is needed to drop it."""
        from sgm.io.lora import match_lora, read_lora

        path = runtime.resolve_model(LORAS, lora_name, "LoadLoRA", "lora_name")
        state_dict = runtime.load_model(path, "lora", "LoadLoRA", lambda dtype: read_lora(path), prepare=False)
        match = match_lora(state_dict, model.unet, clip.towers() if clip is not None else [])
        if not match.targets:
            raise ValueError(
                f"LoadLoRA: no key of {lora_name!r} matches this model ({model.family}); first keys "
                f"{match.unmatched[:4]}. Is the LoRA for another model family?")
        new_model = replace(model, loras=model.loras + (
            LoraPatch(lora_name, match.for_module("unet"), float(strength_model)),))
        text_targets = tuple(t for t in match.targets if t.module != "unet")
        new_clip = clip if clip is None else replace(
            clip, loras=clip.loras + (LoraPatch(lora_name, text_targets, float(strength_clip)),))
        return new_model, new_clip

    @node("CompileModel", display_name="Compile Model", category="advanced/model")
    def compile_model(
        model: "MODEL",
        mode: Choice(choices=COMPILE_MODE_CHOICES, tooltip=(
            "torch.compile mode: default; reduce-overhead adds CUDA graphs for sizes seen first; "
            "max-autotune searches kernels (slow to compile)")) = "default",
    ) -> Out(model="MODEL"):
        """Run the diffusion model through torch.compile (opt-in): the first image at each size
        compiles (minutes on a CPU; cached on disk under user/compile-cache for the next start),
        later ones run faster. If compiling fails, sampling runs uncompiled and the log says why."""
        return replace(model, unet=runtime.compiled(model.unet, mode))

    @node("SetClipLayer", display_name="Set CLIP Layer", category="loaders")
    def clip_set_last_layer(
        clip: "CLIP",
        stop_at_clip_layer: Int(min=-24, max=-1, tooltip="-1 = last layer, -2 = penultimate (clip skip 2)") = -1,
    ) -> Out(clip="CLIP"):
        """Encode prompts from an earlier text-encoder layer (A1111's "clip skip")."""
        return replace(clip, clip_skip=-int(stop_at_clip_layer))

    return [load_checkpoint, load_vae, load_unet, load_text_encoder, load_lora, compile_model, clip_set_last_layer]


def unet_family(unet: Any) -> str:
    """A UNet's family told from its shape (SDXL's vector width tells base from refiner)."""
    if getattr(unet, "num_classes", None) == "sequential" and getattr(unet, "context_dim", None) != 1024:
        # (SD 2.1 unCLIP has a vector input too, with SD 2's 1024-wide text: it falls through to "sd2")
        return "sdxl-refiner" if getattr(unet, "adm_in_channels", None) == 2560 else "sdxl"
    family = "sd2" if getattr(unet, "context_dim", None) == 1024 else "sd1"
    return f"{family}-inpaint" if getattr(unet, "in_channels", 4) == 9 else family


def text_state_dict_for(family: str, paths: list[Path]) -> dict[str, Any]:
    """Text tensors in single-file layout (with prefixes) from one or two encoder files."""
    from sgm.io.checkpoints import TEXT_PREFIXES, read_state_dict
    from sgm.io.convert_text import text_diffusers_to_original

    parts = [read_state_dict(p)[0] for p in paths]
    if any(k.startswith(TEXT_PREFIXES) for k in parts[0]):
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        return merged
    first = parts[0]
    second = parts[1] if len(parts) > 1 else None
    if family == "sdxl-refiner":
        first, second = None, first  # the refiner's only encoder is bigG (text_encoder_2)
    return text_diffusers_to_original(family, first, second)
