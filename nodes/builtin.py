"""The model node packs (loaders, text, latents, sampling, images, and ComfyUI's interface over
them in ``nodes.comfy``) built for one installation.

``NODES(settings)`` creates the installation's :class:`nodes.runtime.Runtime` (settings +
model cache) once and gives it to every domain module, so all of them share one model
cache. Nothing here imports torch; node bodies do, when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.api import NodeSpec
from nodes import comfy, images, latents, limits, loaders, sampling, text
from nodes.interrupts import interruptible_spec
from nodes.runtime import Runtime


def NODES(settings: Any) -> list[NodeSpec]:  # noqa: N802 - the pack protocol's name
    if settings is None:
        from engine.settings import Settings

        settings = Settings()
    return build_nodes(Runtime(settings))


def build_nodes(runtime: Runtime) -> list[NodeSpec]:
    """Every built-in model node, sharing ``runtime`` (tests pass their own to inspect it):
    ours, then ComfyUI's interface over them (``nodes.comfy``), each with its resource check
    (``nodes.limits``) and run interruptible inside its kernels (``nodes.interrupts``)."""
    ours = [*loaders.nodes(runtime), *text.nodes(runtime), *latents.nodes(runtime),
            *sampling.nodes(runtime), *images.nodes(runtime)]
    specs = [*ours, *comfy.nodes(runtime, {spec.id: spec for spec in ours})]
    table = limits.checks(lambda: Path(runtime.settings.input_dir))
    return [interruptible_spec(spec) for spec in limits.with_checks(specs, table)]
