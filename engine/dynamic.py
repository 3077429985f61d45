"""What the scheduler needs for ComfyUI's dynamic semantics, kept out of its hot loop.

- list mapping: a node reading an :class:`~engine.api.ItemList` runs once per item
  (:func:`item_calls`), its per-item results merged into lists (:func:`merge_calls`);
- graph expansion: an :class:`~engine.api.Expand` result checked and turned into node
  instances in a dependency order (:func:`expansion_instances`), and its outputs resolved
  once the new nodes have run (:func:`resolve_links`).
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Iterator, Mapping

from engine.api import Blocked, Expand, ItemList, NodeSpec
from engine.workflow import Link, NodeInstance


class ExpansionError(RuntimeError):
    """An expanded graph that cannot run (an id taken, an unknown type, a dangling link)."""


# --------------------------------------------------------------------------- lists


def item_calls(kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One argument dict per item: lists are walked together, the shorter ones repeating
    their last item (ComfyUI's rule); an empty list means no call at all."""
    lengths = [len(v) for v in kwargs.values() if type(v) is ItemList]
    if not lengths or min(lengths) == 0:
        return [] if lengths else [dict(kwargs)]
    count = max(lengths)
    return [{name: (value[min(i, len(value) - 1)] if type(value) is ItemList else value)
             for name, value in kwargs.items()} for i in range(count)]


def first_blocked(kwargs: Mapping[str, Any], whole_lists: bool = False) -> Blocked | None:
    """The first Blocked argument (inside lists too when the node takes whole lists)."""
    for value in kwargs.values():
        if isinstance(value, Blocked):
            return value
        if whole_lists and isinstance(value, ItemList):
            for item in value:
                if isinstance(item, Blocked):
                    return item
    return None


def merge_calls(spec: NodeSpec, results: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Per-call output tuples -> one value per output: the items of every call in order
    (an ``output_is_list`` output contributes each of its items); one item is handed on
    as itself, anything else as an ItemList."""
    merged = []
    flags = spec.output_is_list
    for index in range(len(spec.outputs)):
        is_list = index < len(flags) and flags[index]
        items: list[Any] = []
        for values in results:
            value = values[index]
            if is_list and isinstance(value, (list, tuple)):
                items.extend(value)
            else:
                items.append(value)
        merged.append(items[0] if len(items) == 1 else ItemList(items))
    return tuple(merged)


def merge_ui(uis: list[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for ui in uis:
        for key, value in (ui or {}).items():
            if isinstance(value, (list, tuple)) and isinstance(out.get(key, []), list):
                out.setdefault(key, []).extend(value)
            else:
                out[key] = value
    return out or None


# --------------------------------------------------------------------------- expansion


def expansion_instances(expand: Expand, parent: str, existing: Mapping[str, NodeInstance],
                        spec_of: Callable[[str], NodeSpec | None]) -> list[NodeInstance]:
    """The new nodes of ``expand`` (made by ``parent``), sources before readers.

    Refuses ids already in use, unknown node types, links to nodes that exist nowhere and
    cycles among the new nodes, each with a message that names ``parent``.
    """
    where = f"node {parent} expanded into a graph that"
    if not isinstance(expand.graph, Mapping):
        raise ExpansionError(f"{where} is a {type(expand.graph).__name__}, not a dict of node id -> node")
    instances: dict[str, NodeInstance] = {}
    for node_id, entry in expand.graph.items():
        node_id = str(node_id)
        if node_id in existing:
            raise ExpansionError(f"{where} reuses the node id {node_id!r}; new ids must be unique "
                                 "(GraphBuilder prefixes them with the expanding node's id)")
        if not isinstance(entry, Mapping):
            raise ExpansionError(f"{where} has node {node_id!r} as {type(entry).__name__}, not a dict")
        type_name = entry.get("type", entry.get("class_type"))
        if not isinstance(type_name, str) or spec_of(type_name) is None:
            raise ExpansionError(f"{where} names the unknown node type {type_name!r} (node {node_id!r})")
        inputs = entry.get("inputs") or {}
        if not isinstance(inputs, Mapping):
            raise ExpansionError(f"{where} gives node {node_id!r} inputs of type {type(inputs).__name__}")
        instances[node_id] = NodeInstance(node_id, type_name, dict(inputs), {"parent": parent})
    for instance in instances.values():
        for name, value in instance.inputs.items():
            if isinstance(value, Link) and value.node_id not in instances and value.node_id not in existing:
                raise ExpansionError(f"{where} links input {name!r} of node {instance.id!r} to node "
                                     f"{value.node_id!r}, which exists nowhere")
    for link in links_in(expand.outputs):
        if link.node_id not in instances and link.node_id not in existing:
            raise ExpansionError(f"{where} takes an output from node {link.node_id!r}, which exists nowhere")
    return _order(instances, where)


def _order(instances: Mapping[str, NodeInstance], where: str) -> list[NodeInstance]:
    indegree = {node_id: 0 for node_id in instances}
    readers: dict[str, list[str]] = {node_id: [] for node_id in instances}
    for node_id, instance in instances.items():
        for value in instance.inputs.values():
            if isinstance(value, Link) and value.node_id in instances:
                indegree[node_id] += 1
                readers[value.node_id].append(node_id)
    ready = [node_id for node_id, degree in indegree.items() if degree == 0]
    heapq.heapify(ready)
    order: list[NodeInstance] = []
    while ready:
        node_id = heapq.heappop(ready)
        order.append(instances[node_id])
        for reader in readers[node_id]:
            indegree[reader] -= 1
            if indegree[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) != len(instances):
        raise ExpansionError(f"{where} has a cycle among its new nodes")
    return order


def links_in(value: Any) -> Iterator[Link]:
    """Every Link in ``value``, looking inside tuples and lists."""
    if isinstance(value, Link):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from links_in(item)


def resolve_links(value: Any, lookup: Callable[[Link], Any]) -> Any:
    """``value`` with every Link (inside tuples and lists) replaced by ``lookup(link)``."""
    if isinstance(value, Link):
        return lookup(value)
    if isinstance(value, tuple):
        return tuple(resolve_links(item, lookup) for item in value)
    if isinstance(value, list):
        items = [resolve_links(item, lookup) for item in value]
        return items if type(value) is list else type(value)(items)  # an ItemList stays one
    return value
