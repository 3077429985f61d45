"""Custom node packs written for ComfyUI, loaded and run as our nodes: a layer of its own.

A folder in ``custom_nodes/`` that exports ``NODE_CLASS_MAPPINGS`` (the class API) or
``comfy_entrypoint`` (the V3 API) is a ComfyUI pack. :class:`ComfyPacks` is the registry's
``foreign_packs`` hook (main.py installs it): it imports such a pack with the shims it
imports (:mod:`comfy_packs.imports`), turns every node class into our
:class:`engine.api.NodeSpec` (:mod:`comfy_packs.nodeclass`, :mod:`comfy_packs.v3`), so those
nodes are listed, validated, cached and run like ours, keeps the pack's ``WEB_DIRECTORY`` for
ComfyUI's frontend, and hands the server the pack's HTTP routes (:mod:`comfy_packs.server`).

Node ids are the pack's class names, unprefixed (ComfyUI workflows name them so); one that is
already taken is skipped and reported, the rest of the pack loads.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from pathlib import Path
from typing import Any, Callable

from engine.api import NodeSpec

log = logging.getLogger(__name__)

MARKERS = ("NODE_CLASS_MAPPINGS", "comfy_entrypoint")
MAX_SCAN_BYTES = 1 << 20


class PackImportError(ImportError):
    """A ComfyUI pack that could not be imported; the message says what it needs."""


class ComfyPacks:
    """The registry's hook for ComfyUI packs (``registry.foreign_packs``)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.web_directories: dict[str, Path] = {}  # pack folder name -> its WEB_DIRECTORY
        self.packs: dict[str, list[str]] = {}  # pack -> the node ids it added
        self._bound = False

    def claims(self, location: Path) -> bool:
        """Whether ``location`` (a plugin's ``__init__.py`` or file) is a ComfyUI pack: it names
        NODE_CLASS_MAPPINGS or comfy_entrypoint and not our NODES list."""
        try:
            with open(location, "rb") as handle:
                text = handle.read(MAX_SCAN_BYTES).decode("utf-8", errors="replace")
        except OSError:
            return False
        return any(marker in text for marker in MARKERS) and "\nNODES" not in text

    def load(self, registry: Any, name: str, location: Path, source: str) -> list[NodeSpec]:
        """The pack's nodes as NodeSpecs (the caller registers them)."""
        from comfy_packs import imports, state
        from comfy_packs.nodeclass import from_class, run_maybe_async, to_spec
        from comfy_packs.v3 import from_schema, is_v3

        if not self._bound:  # the shims serve the installation that loads packs last (tests load several)
            state.bind(self.settings, registry)
            imports.activate()
            imports.refresh_shims()
            importlib.import_module(imports.NODES_ALIAS)  # our `nodes` falls back to it (nodes.__getattr__)
            self._bound = True
        pack_dir = location.parent if location.name == "__init__.py" else location.parent
        imports.forget_refused()
        try:
            module = imports.import_pack(f"latentflow_plugins.{name}", location)
        except (Exception, SystemExit) as error:
            raise PackImportError(imports.explain(error, name, pack_dir)) from error
        mappings = dict(getattr(module, "NODE_CLASS_MAPPINGS", None) or {})
        display_names = dict(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
        entrypoint = getattr(module, "comfy_entrypoint", None)
        if entrypoint is not None:
            extension = run_maybe_async(entrypoint())
            run_maybe_async(extension.on_load())
            for cls in run_maybe_async(extension.get_node_list()):
                mappings.setdefault(cls.define_schema().node_id, cls)
        if not mappings and entrypoint is None:
            raise PackImportError(f"ComfyUI pack {name!r} exports neither NODE_CLASS_MAPPINGS nor comfy_entrypoint")
        web = getattr(module, "WEB_DIRECTORY", None)
        if isinstance(web, str) and location.name == "__init__.py":
            folder = (pack_dir / web).resolve()
            if folder.is_dir() and pack_dir.resolve() in [folder, *folder.parents]:
                self.web_directories[name] = folder
        specs: list[NodeSpec] = []
        for class_type, cls in mappings.items():
            where = f"{source} node {class_type}"
            try:
                pack_node = from_schema(cls, name, display_names.get(class_type)) if is_v3(cls) else \
                    from_class(str(class_type), cls, name, display_names.get(class_type))
                spec = to_spec(pack_node)
                if spec.id in registry:
                    raise ValueError(f"node id {spec.id!r} is defined twice: by {registry.source(spec.id)} and by "
                                     f"{source}; this one is skipped")
                specs.append(spec)
            except Exception as error:  # one broken class must not take the pack down
                _record(registry, where, error)
        self.packs[name] = [s.id for s in specs]
        return specs

    def attach_server(self, app: Any, send: Callable[[str, Any, str | None], None]) -> None:
        """Give the packs' routes and ``send_sync`` a server (web.app.create_app calls this)."""
        from comfy_packs.server import PackServer

        PackServer.instance.attach(app, send)


def _record(registry: Any, where: str, error: BaseException) -> None:
    from engine.registry import PluginFailure

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    registry.failures.append(PluginFailure(where, f"{type(error).__name__}: {error}", text))
    log.error("%s not loaded: %s", where, error)
