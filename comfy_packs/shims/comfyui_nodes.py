"""ComfyUI's ``nodes`` as packs see it (``import nodes`` inside a pack; see comfy_packs.imports)."""

from comfy_packs.core_nodes import module_names as _module_names

globals().update(_module_names())
