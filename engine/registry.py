"""The node registry and plugin loader.

Built-in packs, ``custom_nodes/`` plugins (a ``.py`` file or a package exporting ``NODES``)
and installed packages (entry-point group ``latentflow.nodes``) all feed one registry.
Nothing registers at import time: a pack is a list of :class:`NodeSpec` that the
registry is given. Plugin node ids are namespaced by the plugin name unless they
already carry a namespace (``"mypack.Invert"``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from engine.api import NodeSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "latentflow.nodes"
# Types ComfyUI's frontend draws as widgets unless the input spec says "forceInput".
WIDGET_TYPE_NAMES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})


class DuplicateNodeError(ValueError):
    """Two sources define the same node id."""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded; the rest of the registry keeps working."""

    source: str
    message: str
    traceback: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "message": self.message, "traceback": self.traceback}


class NodeRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, NodeSpec] = {}
        self._sources: dict[str, str] = {}
        self.failures: list[PluginFailure] = []
        # Bytes held by a value these nodes produce, for the result cache's byte bound;
        # main.py installs the model packs' measure (tensors and models), 0 by default.
        self.result_size: Callable[[Any], int] | None = None

    def register(self, spec: NodeSpec, source: str) -> None:
        if not isinstance(spec, NodeSpec):
            raise TypeError(
                f"{source}: expected a node made with @node(...), got {type(spec).__name__} {spec!r}"
            )
        if spec.id in self._specs:
            raise DuplicateNodeError(
                f"node id {spec.id!r} is defined twice: by {self._sources[spec.id]} and by {source}; "
                f"rename one of them (plugin ids are best namespaced, e.g. 'mypack.{spec.id}')"
            )
        self._specs[spec.id] = spec
        self._sources[spec.id] = source

    def register_pack(self, specs: Iterable[NodeSpec], source: str, namespace: str | None = None) -> None:
        """Register a pack atomically: on a duplicate nothing of the pack is kept."""
        specs = list(specs)
        if namespace:
            specs = [s if "." in s.id else s.with_id(f"{namespace}.{s.id}") for s in specs]
        seen: dict[str, NodeSpec] = {}
        for spec in specs:
            if not isinstance(spec, NodeSpec):
                raise TypeError(f"{source}: NODES must hold nodes made with @node(...), got {spec!r}")
            if spec.id in seen:
                raise DuplicateNodeError(f"node id {spec.id!r} appears twice in {source}")
            if spec.id in self._specs:
                raise DuplicateNodeError(
                    f"node id {spec.id!r} is defined twice: by {self._sources[spec.id]} and by {source}; "
                    f"rename one of them"
                )
            seen[spec.id] = spec
        for spec in specs:
            self.register(spec, source)

    def __contains__(self, node_type: str) -> bool:
        return node_type in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, node_type: str) -> NodeSpec | None:
        return self._specs.get(node_type)

    def source(self, node_type: str) -> str | None:
        return self._sources.get(node_type)

    def ids(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[NodeSpec]:
        return [self._specs[i] for i in self.ids()]

    # ------------------------------------------------------------------ plugins

    def load_custom_nodes(self, folder: str | Path) -> None:
        """Load every ``*.py`` file and package in ``folder`` that exports ``NODES``."""
        folder = Path(folder)
        if not folder.is_dir():
            return
        for path in sorted(folder.iterdir()):
            if path.name.startswith((".", "_")):
                continue
            if path.is_file() and path.suffix == ".py":
                name, location = path.stem, path
            elif path.is_dir() and (path / "__init__.py").exists():
                name, location = path.name, path / "__init__.py"
            else:
                continue
            source = f"custom_nodes/{path.name}"
            try:
                module = _import_path(f"latentflow_plugins.{name}", location)
                self.register_pack(_exported_nodes(module, source), source, namespace=name)
            except Exception as error:  # a broken plugin must not take the others down
                self._fail(source, error)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load installed plugins declared as ``name = "package.module:NODES"``."""
        for entry_point in importlib.metadata.entry_points(group=group):
            source = f"entry point {entry_point.name} ({entry_point.value})"
            try:
                loaded = entry_point.load()
                nodes = loaded() if callable(loaded) and not isinstance(loaded, NodeSpec) else loaded
                self.register_pack(nodes, source, namespace=entry_point.name)
            except Exception as error:
                self._fail(source, error)

    def _fail(self, source: str, error: BaseException) -> None:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        failure = PluginFailure(source, f"{type(error).__name__}: {error}", text)
        self.failures.append(failure)
        log.error("plugin %s failed to load: %s", source, failure.message)

    # ------------------------------------------------------------------ catalogue

    def object_info(self) -> dict[str, Any]:
        """The catalogue in ComfyUI's ``/object_info`` shape."""
        return {spec.id: node_info(spec, self._sources[spec.id]) for spec in self.specs()}


def node_info(spec: NodeSpec, source: str = "") -> dict[str, Any]:
    required: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    for item in spec.inputs:
        if item.widget is not None:
            options = item.widget.spec_options()
            if item.default is not None:
                options["default"] = item.default
            choices = getattr(item.widget, "options", None)
            entry: list[Any] = [choices(), options] if callable(choices) else [item.type, options]
        else:
            options = {"tooltip": item.tooltip} if item.tooltip else {}
            if item.type in WIDGET_TYPE_NAMES:
                options["forceInput"] = True  # ComfyUI's mark of a socket-only INT/FLOAT/STRING/...
            entry = [item.type, options]
        (required if _listed_required(item) else optional)[item.name] = entry
    inputs: dict[str, Any] = {"required": required, "optional": optional}
    order: dict[str, Any] = {
        "required": [i.name for i in spec.inputs if _listed_required(i)],
        "optional": [i.name for i in spec.inputs if not _listed_required(i)],
    }
    if spec.hidden:
        inputs["hidden"] = dict(spec.hidden)
        order["hidden"] = [name for name, _ in spec.hidden]
    marks: dict[str, Any] = {}
    if spec.deprecated:
        marks["deprecated"] = True
    if spec.compat:
        marks["compat"] = spec.compat  # ours: editors may list compatibility nodes apart
    return {
        "input": inputs,
        "input_order": order,
        "output": [o.type for o in spec.outputs],
        "output_is_list": [False for _ in spec.outputs],
        "output_name": [o.name for o in spec.outputs],
        "output_node": spec.output_node,
        "name": spec.id,
        "display_name": spec.display_name,
        "description": spec.description,
        "category": spec.category,
        "python_module": source,
        "version": spec.version,
        **marks,
    }


def _listed_required(item: Any) -> bool:
    """Widgets are listed as required (they always have a value) unless marked optional."""
    if item.widget is not None:
        return not item.widget.optional
    return item.required


def _exported_nodes(module: Any, source: str, settings: Any = None) -> list[NodeSpec]:
    nodes = getattr(module, "NODES", None)
    if nodes is None:
        raise AttributeError(f"{source} exports no NODES list; add NODES = [my_node, ...] at module level")
    if callable(nodes):
        import inspect

        nodes = nodes(settings) if inspect.signature(nodes).parameters else nodes()
    return list(nodes)


def _import_path(module_name: str, location: Path) -> Any:
    if "latentflow_plugins" not in sys.modules:
        import types

        package = types.ModuleType("latentflow_plugins")
        package.__path__ = []  # namespace for plugin modules
        sys.modules["latentflow_plugins"] = package
    spec = importlib.util.spec_from_file_location(
        module_name, location,
        submodule_search_locations=[str(location.parent)] if location.name == "__init__.py" else None,
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {location}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def import_pack(module_name: str, settings: Any = None) -> list[NodeSpec]:
    """The nodes of a built-in pack module (e.g. ``nodes.latents``); ``NODES`` may be a list
    or a factory taking the installation's settings."""
    return _exported_nodes(importlib.import_module(module_name), module_name, settings)
