"""ComfyUI's ``latent_preview``: prepare_callback (progress only)."""

from comfy_packs.runtime import prepare_callback  # noqa: F401
