"""Built-in node packs: thin adapters over sgm/, one module per domain.

``BUILTIN_PACKS`` lists the modules whose ``NODES`` the registry loads (main.py wires it).
"""

BUILTIN_PACKS: list[str] = [
    "nodes.utility",
    "nodes.builtin",  # loaders, text, latents, sampling, images (one shared model cache)
]
