"""ComfyUI's ``comfy.sd``: load_checkpoint_guess_config over our checkpoint loader; CLIP, VAE."""

from comfy_packs.models import ComfyClip as CLIP, ComfyVae as VAE  # noqa: F401
from comfy_packs.loaders import load_checkpoint_guess_config  # noqa: F401
