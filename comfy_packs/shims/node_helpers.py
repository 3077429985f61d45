"""ComfyUI's ``node_helpers``: conditioning_set_values, pillow."""

from __future__ import annotations

from typing import Any, Callable


def conditioning_set_values(conditioning: list, values: dict | None = None, append: bool = False) -> list:
    """A new conditioning with ``values`` set in every entry's options (inputs untouched)."""
    out = []
    for context, options in conditioning:
        updated = type(options)(options)
        if hasattr(options, "origin"):
            updated.origin = options.origin
        for key, value in (values or {}).items():
            updated[key] = (list(updated[key]) + list(value)) if append and key in updated else value
        out.append([context, updated])
    return out


def pillow(fn: Callable[..., Any], arg: Any) -> Any:
    """Open an image with PIL, retrying once with truncated images allowed (ComfyUI's helper)."""
    from PIL import ImageFile

    try:
        return fn(arg)
    except (OSError, SyntaxError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
