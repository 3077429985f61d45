"""The model node packs (loaders, text, latents, sampling, images) built for one installation.

``NODES(settings)`` creates the installation's :class:`nodes.runtime.Runtime` (settings +
model cache) once and gives it to every domain module, so all of them share one model
cache. Nothing here imports torch; node bodies do, when they run.
"""

from __future__ import annotations

from typing import Any

from engine.api import NodeSpec
from nodes import images, latents, loaders, sampling, text
from nodes.runtime import Runtime


def NODES(settings: Any) -> list[NodeSpec]:  # noqa: N802 - the pack protocol's name
    if settings is None:
        from engine.settings import Settings

        settings = Settings()
    return build_nodes(Runtime(settings))


def build_nodes(runtime: Runtime) -> list[NodeSpec]:
    """Every built-in model node, sharing ``runtime`` (tests pass their own to inspect it)."""
    return [*loaders.nodes(runtime), *text.nodes(runtime), *latents.nodes(runtime),
            *sampling.nodes(runtime), *images.nodes(runtime)]
