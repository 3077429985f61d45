"""ComfyUI's ``comfy.model_patcher``: ModelPatcher is the MODEL packs get here."""

from comfy_packs.models import ComfyModel as ModelPatcher  # noqa: F401
