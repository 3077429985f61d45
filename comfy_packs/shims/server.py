"""ComfyUI's ``server`` for packs: ``PromptServer.instance`` (comfy_packs.server)."""

from comfy_packs.server import BinaryEventTypes, PackServer as PromptServer  # noqa: F401
