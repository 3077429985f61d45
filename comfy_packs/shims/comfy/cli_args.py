"""ComfyUI's ``comfy.cli_args``: ``args`` with ComfyUI's defaults (latentflow has its own CLI)."""

import argparse as _argparse
import enum as _enum


class LatentPreviewMethod(_enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


args = _argparse.Namespace(
    listen="127.0.0.1", port=8188, preview_method=LatentPreviewMethod.Auto, disable_metadata=False,
    cpu=False, lowvram=False, highvram=False, normalvram=False, novram=False, gpu_only=False,
    disable_smart_memory=False, deterministic=False, output_directory=None, input_directory=None,
    temp_directory=None, user_directory=None, base_directory=None, disable_xformers=True, dont_print_server=False,
    verbose="INFO", enable_cors_header=None, multi_user=False, front_end_version="comfyanonymous/ComfyUI@latest",
    front_end_root=None, fast=set(), force_fp16=False, force_fp32=False, fp16_vae=False, bf16_vae=False,
)
