"""What a pack node's calls returned, as our values: merged as ComfyUI merges the calls of a
node mapped over lists, or handed to the scheduler as an :class:`engine.api.Expand` when a
call returned an ``"expand"`` graph (GraphBuilder's), with ExecutionBlocker kept as
:class:`engine.api.Blocked`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from comfy_packs.values import ComfyList, from_comfy
from engine.api import Blocked, Expand, Result
from engine.workflow import Link

if TYPE_CHECKING:
    from comfy_packs.nodeclass import PackNode


class PackResultError(RuntimeError):
    """A pack node's result that cannot be used (the message names the pack and node)."""


@dataclass(frozen=True)
class Normalized:
    values: tuple[Any, ...]
    ui: Mapping[str, Any] | None
    graph: Mapping[str, Any] | None = None  # an "expand" graph: values may hold links into it


def normalize(result: Any, expected: int, where: str) -> Normalized:
    """One call's result: a tuple, ``{"ui", "result", "expand"}``, a V3 NodeOutput, an
    ExecutionBlocker (every output blocked), or None."""
    ui = graph = None
    if hasattr(result, "args") and hasattr(result, "ui") and type(result).__name__ == "NodeOutput":
        ui = result.ui.as_dict() if hasattr(result.ui, "as_dict") else result.ui
        graph = getattr(result, "expand", None)
        blocked = getattr(result, "block_execution", None)
        result = (Blocked(blocked),) * expected if blocked is not None else result.args
    elif isinstance(result, dict):
        ui = result.get("ui")
        graph = result.get("expand")
        result = result.get("result", ())
    if isinstance(result, Blocked):
        result = (result,) * expected
    if result is None:
        result = ()
    if not isinstance(result, (tuple, list)):
        raise TypeError(f"{where} returned {type(result).__name__}; a node returns a tuple of its outputs")
    if len(result) < expected:
        raise TypeError(f"{where} returned {len(result)} values for its {expected} outputs")
    if graph is not None and not isinstance(graph, Mapping):
        raise TypeError(f"{where} returned an 'expand' of type {type(graph).__name__}; expected the dict "
                        "GraphBuilder.finalize() gives")
    return Normalized(tuple(result[:expected]), ui, graph)


def merge(results: list[Normalized], node: PackNode, where: str) -> Result:
    values = []
    for index, output in enumerate(node.outputs):
        items: list[Any] = []
        for result in results:
            value = result.values[index]
            if (node.output_is_list[index] if index < len(node.output_is_list) else False) \
                    and not isinstance(value, Blocked):
                items.extend(value)
            else:
                items.append(value)
        items = [from_comfy(item, output.type, where) for item in items]
        values.append(items[0] if len(items) == 1 else ComfyList(items))
    return Result(values=tuple(values), ui=merged_ui(results))


def merged_ui(results: list[Normalized]) -> dict[str, Any]:
    """The UI data of several calls as one: lists joined in call order, other values the last."""
    ui: dict[str, Any] = {}
    for result in results:
        for key, value in (result.ui or {}).items():
            if isinstance(value, (list, tuple)):
                ui.setdefault(key, []).extend(value)
            else:
                ui[key] = value
    return ui


def expansion(results: list[Normalized], node: PackNode, where: str) -> Expand:
    """Calls that returned ``"expand"`` graphs: one :class:`Expand` of all of them, whose
    outputs (links into the graphs, or values) are merged as ComfyUI merges calls once the
    new nodes ran. A value from the new nodes that is a list stands for its items."""
    graph: dict[str, Any] = {}
    for result in results:
        for node_id, entry in (result.graph or {}).items():
            if node_id in graph:
                raise PackResultError(f"{where} expanded two graphs that both define node {node_id!r}; "
                                    "build them with comfy_execution.graph_utils.GraphBuilder")
            if not isinstance(entry, Mapping) or not isinstance(entry.get("inputs", {}), Mapping):
                raise PackResultError(f"{where} expanded a graph whose node {node_id!r} is not "
                                    "{'class_type': ..., 'inputs': {...}}")
            graph[str(node_id)] = {"type": entry.get("class_type"),
                                   "inputs": {k: _link(v) for k, v in entry.get("inputs", {}).items()}}
    outputs = tuple(tuple(_link(v) for v in result.values) for result in results)
    linked = [[is_comfy_link(v) for v in result.values] for result in results]

    def finish(resolved: tuple[tuple[Any, ...], ...]) -> Result:
        values = []
        for index, output in enumerate(node.outputs):
            is_list = node.output_is_list[index] if index < len(node.output_is_list) else False
            items: list[Any] = []
            for call, call_values in enumerate(resolved):
                value = call_values[index]
                if linked[call][index]:  # our value, from a new node: a list stands for its items
                    items.extend(value if isinstance(value, ComfyList) else [value])
                elif is_list and not isinstance(value, Blocked):
                    items.extend(from_comfy(item, output.type, where) for item in value)
                else:
                    items.append(from_comfy(value, output.type, where))
            values.append(items[0] if len(items) == 1 else ComfyList(items))
        return Result(values=tuple(values), ui=merged_ui(results))

    return Expand(graph=graph, outputs=outputs, finish=finish)


def is_comfy_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _link(value: Any) -> Any:
    return Link(value[0], int(value[1])) if is_comfy_link(value) else value
