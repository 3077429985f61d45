"""Built-in node packs: thin adapters over sgm/, one module per domain.

``BUILTIN_PACKS`` lists the modules whose ``NODES`` the registry loads (main.py wires it).
"""

BUILTIN_PACKS: list[str] = [
    "nodes.utility",
    "nodes.builtin",  # loaders, text, latents, sampling, images (one shared model cache)
]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562
    """ComfyUI's ``nodes`` names (``MAX_RESOLUTION``, ``SaveImage``, ...) for ComfyUI packs that load
    their modules by hand, past ``comfy_packs.imports``' redirect; only once packs were loaded."""
    import sys

    comfyui_nodes = sys.modules.get("comfyui_nodes")
    if comfyui_nodes is not None and hasattr(comfyui_nodes, name):
        return getattr(comfyui_nodes, name)
    raise AttributeError(f"module 'nodes' has no attribute {name!r}")
