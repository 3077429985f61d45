"""ComfyUI's ``comfy`` package, as far as packs commonly use it: utils, model_management,
samplers, sample, sd, model_patcher, cli_args (comfy_packs)."""
