"""The node registry and plugin loader.

Built-in packs, ``custom_nodes/`` plugins (a ``.py`` file or a package exporting ``NODES``)
and installed packages (entry-point group ``latentflow.nodes``) all feed one registry.
Nothing registers at import time: a pack is a list of :class:`NodeSpec` that the
registry is given. Plugin node ids are namespaced by the plugin name unless they
already carry a namespace (``"mypack.Invert"``).

Plugin faults stay with their plugin. A plugin whose import raises anything, ``sys.exit()``
and ``KeyboardInterrupt`` included, is listed in :attr:`NodeRegistry.failures` and the rest
loads. A node whose ``Choice`` callable fails keeps its place in ``object_info`` with an
empty choice list, a ``choices_error`` note on that input and an ``errors`` list on the node,
and is listed in ``failures`` too (with ``node`` set) until the callable works again;
validation refuses prompts that use it with a node-level error. (A node that raises at run
time fails only its run; see ``engine.scheduler``.)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from engine.api import NodeSpec, describe_choices_failure

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "latentflow.nodes"
# Types ComfyUI's frontend draws as widgets unless the input spec says "forceInput".
WIDGET_TYPE_NAMES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})


# An input whose choice list failed: (input name, what happened in words, the exception);
# the input name is "" when the node's whole catalogue entry could not be built.
Broken = tuple[str, str, BaseException]


class DuplicateNodeError(ValueError):
    """Two sources define the same node id."""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded; the rest of the registry keeps working."""

    source: str
    message: str
    traceback: str
    node: str = ""  # set when one node of a loaded plugin is broken (its choice list failed)

    def to_dict(self) -> dict[str, str]:
        entry = {"source": self.source, "message": self.message, "traceback": self.traceback}
        if self.node:
            entry["node"] = self.node
        return entry


class ForeignPacks(Protocol):
    """Loads plugins written for another engine's node API (``comfy_packs.ComfyPacks``)."""

    def claims(self, location: Path) -> bool: ...

    def load(self, registry: "NodeRegistry", name: str, location: Path, source: str) -> list[NodeSpec]: ...


class NodeRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, NodeSpec] = {}
        self._sources: dict[str, str] = {}
        self.failures: list[PluginFailure] = []
        self._failures_lock = threading.Lock()  # object_info runs in server worker threads
        # Plugins written for another engine's node API, claimed by folder before our import
        # (ComfyUI packs: main.py installs comfy_packs.ComfyPacks); None = our NODES API only.
        self.foreign_packs: ForeignPacks | None = None
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
                if self.foreign_packs is not None and self.foreign_packs.claims(location):
                    self.register_pack(self.foreign_packs.load(self, name, location, source), source)
                    continue
                module = import_plugin_file(f"latentflow_plugins.{name}", location)
                self.register_pack(_exported_nodes(module, source), source, namespace=name)
            except BaseException as error:  # noqa: BLE001 - sys.exit() in a plugin must not stop us
                self._fail(source, error)
        self.check_plugin_nodes("custom_nodes/")

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load installed plugins declared as ``name = "package.module:NODES"``."""
        for entry_point in importlib.metadata.entry_points(group=group):
            source = f"entry point {entry_point.name} ({entry_point.value})"
            try:
                loaded = entry_point.load()
                nodes = loaded() if callable(loaded) and not isinstance(loaded, NodeSpec) else loaded
                self.register_pack(nodes, source, namespace=entry_point.name)
            except BaseException as error:  # noqa: BLE001 - as for custom_nodes/
                self._fail(source, error)
        self.check_plugin_nodes("entry point ")

    def _fail(self, source: str, error: BaseException) -> None:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        message = _describe(error)
        if not isinstance(error, Exception):  # sys.exit(), KeyboardInterrupt, ... raised by the plugin
            message += " (raised by the plugin while loading; it is skipped and everything else loads)"
        failure = PluginFailure(source, message, text)
        self.failures.append(failure)
        log.error("plugin %s failed to load: %s", source, failure.message)

    # ------------------------------------------------------------------ catalogue

    def object_info(self) -> dict[str, Any]:
        """The catalogue in ComfyUI's ``/object_info`` shape.

        Never raises for one node's fault: a node whose choice list fails is listed with an
        empty list and an error note; a node whose entry cannot be built at all (a plugin's
        own widget class failing) is left out. Either way it is listed in :attr:`failures`."""
        catalogue: dict[str, Any] = {}
        for spec in self.specs():
            source = self._sources[spec.id]
            try:
                info, broken = _node_info(spec, source)
            except BaseException as error:  # noqa: BLE001 - plugin code; the catalogue must still answer
                self._note_node_faults(spec.id, source, [("", _describe(error), error)])
                continue
            self._note_node_faults(spec.id, source, broken)
            catalogue[spec.id] = info
        return catalogue

    def check_plugin_nodes(self, source_prefix: str = "") -> None:
        """Build the catalogue entries of the nodes whose source starts with ``source_prefix``
        once, so a broken choice list is in :attr:`failures` (and shown by the CLI,
        ``/api/node_failures`` and the editor) from the start, not from the first
        ``/api/object_info``."""
        for spec in self.specs():
            source = self._sources[spec.id]
            if not source.startswith(source_prefix):
                continue
            try:
                _, broken = _node_info(spec, source)
            except BaseException as error:  # noqa: BLE001
                broken = [("", _describe(error), error)]
            self._note_node_faults(spec.id, source, broken)

    def _note_node_faults(self, node_id: str, source: str, broken: list[Broken]) -> None:
        """Keep exactly one entry in :attr:`failures` for a broken node (none once it works)."""
        if not broken and not any(f.node == node_id for f in self.failures):
            return  # the common case: a healthy node, nothing to take the lock for
        failure = None
        if broken:
            parts = [f"input {name!r} ({note})" if name else note for name, note, _ in broken]
            what = "lists no choices for" if broken[0][0] else "is left out of the catalogue:"
            error = broken[0][2]
            failure = PluginFailure(
                source, f"node {node_id!r} {what} " + "; ".join(parts),
                "".join(traceback.format_exception(type(error), error, error.__traceback__)), node=node_id)
        with self._failures_lock:
            previous = [f for f in self.failures if f.node == node_id]
            if failure is not None and [(f.source, f.message) for f in previous] == [(source, failure.message)]:
                return  # already reported (object_info runs on every editor load)
            self.failures[:] = [f for f in self.failures if f.node != node_id]
            if failure is not None:
                self.failures.append(failure)
                log.error("plugin %s: %s", source, failure.message)


def node_info(spec: NodeSpec, source: str = "") -> dict[str, Any]:
    """One node's ``/object_info`` entry (a failing choice list shows as empty, with a note)."""
    return _node_info(spec, source)[0]


def _node_info(spec: NodeSpec, source: str) -> tuple[dict[str, Any], list[Broken]]:
    """The entry, and the inputs whose choice list could not be computed (with what happened)."""
    broken: list[Broken] = []
    required: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    for item in spec.inputs:
        if item.widget is not None:
            options = item.widget.spec_options()
            if item.default is not None:
                options["default"] = item.default
            choices = getattr(item.widget, "options", None)
            if callable(choices):
                try:
                    listed = choices()
                except BaseException as error:  # noqa: BLE001 - plugin code, of any kind
                    listed = []
                    options["choices_error"] = describe_choices_failure(item.widget, error)
                    broken.append((item.name, options["choices_error"], error))
                entry: list[Any] = [listed, options]
            else:
                entry = [item.type, options]
        else:
            options = {"tooltip": item.tooltip} if item.tooltip else {}
            if item.type in WIDGET_TYPE_NAMES:
                options["forceInput"] = True  # ComfyUI's mark of a socket-only INT/FLOAT/STRING/...
            entry = [item.type, options]
        if item.name in spec.lazy:
            entry[1]["lazy"] = True  # as ComfyUI lists a lazy input
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
    if spec.input_is_list:
        marks["is_input_list"] = True  # as ComfyUI's V3 node info says it
    if broken:
        marks["errors"] = [f"input {name!r}: {note}" for name, note, _ in broken]  # ours
    info = {
        "input": inputs,
        "input_order": order,
        "output": [o.type for o in spec.outputs],
        "output_is_list": [bool(spec.output_is_list[i]) if i < len(spec.output_is_list) else False
                           for i in range(len(spec.outputs))],
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
    return info, broken


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


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


def import_plugin_file(module_name: str, location: Path,
                       wrap_loader: Callable[[Any], Any] | None = None) -> Any:
    """Import a plugin file or package (``location``: its file or ``__init__.py``) as
    ``module_name`` under the ``latentflow_plugins`` namespace; ``wrap_loader`` may wrap the
    import loader (ComfyUI packs run with their own import rules, see ``comfy_packs``)."""
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
    if wrap_loader is not None:
        spec.loader = wrap_loader(spec.loader)
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
