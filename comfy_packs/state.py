"""What the shims serve: the installation the packs were loaded into, and the node now running.

ComfyUI's modules are module-level API (``folder_paths.models_dir``,
``PromptServer.instance``, ``comfy.utils.ProgressBar`` finding the running node by
itself), so the shims need one installation per process. It is bound once, by
:class:`comfy_packs.ComfyPacks` when it loads the first pack, and read only by this package
and its shims; the rest of latentflow still passes settings and registries explicitly.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class Installation:
    settings: Any  # engine.settings.Settings
    registry: Any  # engine.registry.NodeRegistry: our nodes, whose functions the shims call


@dataclass(frozen=True)
class Running:
    """The pack node running on this thread (ProgressBar, interruption, hidden inputs)."""

    ctx: Any  # engine.api.NodeContext
    pack: str
    class_type: str


_installation: Installation | None = None
_local = threading.local()
# comfy_execution.graph_utils.GraphBuilder's default id prefix: (node id, call index, graph
# index); the pack wrapper sets it before each call of a node's function.
graph_prefix: contextvars.ContextVar[tuple[str, int, int]] = contextvars.ContextVar(
    "latentflow_graph_prefix", default=("", 0, 0))


def bind(settings: Any, registry: Any) -> None:
    global _installation
    _installation = Installation(settings, registry)


def installation() -> Installation:
    if _installation is None:
        raise RuntimeError("the ComfyUI shims are used outside a loaded pack: load packs through "
                           "comfy_packs.ComfyPacks (main.py does) before importing folder_paths, comfy.*, ...")
    return _installation


def running() -> Running | None:
    return getattr(_local, "running", None)


@contextlib.contextmanager
def run_as(ctx: Any, pack: str, class_type: str) -> Iterator[None]:
    previous = running()
    _local.running = Running(ctx, pack, class_type)
    try:
        yield
    finally:
        _local.running = previous


def call_ours(node_id: str, **inputs: Any) -> Any:
    """Run our node ``node_id``'s function; its declared defaults fill what is not given."""
    spec = installation().registry.get(node_id)
    if spec is None:
        raise RuntimeError(f"this installation has no node {node_id!r}, which the ComfyUI shims use")
    defaults = {i.name: i.default for i in spec.inputs if i.name not in inputs and i.default is not None}
    if spec.context_param and spec.context_param not in inputs:
        current = running()
        inputs[spec.context_param] = current.ctx if current is not None else None
    return spec.function(**defaults, **inputs)
