"""``comfy_execution.graph_utils``: build the graphs a node returns as ``{"expand": ...}``.

A node builds a graph with :class:`GraphBuilder` (``node(class_type, **inputs)`` gives a
:class:`Node` whose ``out(i)`` is a link ``[id, i]``), returns
``{"result": (links or values...), "expand": builder.finalize()}``, and our scheduler runs it
(:class:`engine.api.Expand`). Ids get a prefix unique to the expanding node and call
(``"<node id>.<call>.<graph>."``), which the pack wrapper sets before every call.
"""

from __future__ import annotations

from typing import Any

from comfy_packs import state
from engine.api import Blocked

ExecutionBlocker = Blocked  # ExecutionBlocker(message): blocks the nodes reading the output


def is_link(value: Any) -> bool:
    """``[node_id, output_index]`` as ComfyUI's prompts write links."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool))


class Node:
    """One node of a graph being built."""

    def __init__(self, id: str, class_type: str, inputs: dict[str, Any]) -> None:
        self.id, self.class_type, self.inputs = id, class_type, inputs
        self.override_display_id: str | None = None

    def out(self, index: int) -> list[Any]:
        return [self.id, index]

    def set_input(self, key: str, value: Any) -> None:
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str) -> Any:
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id: str) -> None:
        self.override_display_id = override_display_id

    def serialize(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"class_type": self.class_type, "inputs": self.inputs}
        if self.override_display_id is not None:
            entry["override_display_id"] = self.override_display_id
        return entry


class GraphBuilder:
    """Nodes under one id prefix; ``finalize()`` gives the prompt-shaped dict to expand."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else GraphBuilder.alloc_prefix()
        self.nodes: dict[str, Node] = {}
        self.id_gen = 1

    @classmethod
    def set_default_prefix(cls, prefix_root: str, call_index: int, graph_index: int = 0) -> None:
        state.graph_prefix.set((str(prefix_root), call_index, graph_index))

    @classmethod
    def alloc_prefix(cls, root: str | None = None, call_index: int | None = None,
                     graph_index: int | None = None) -> str:
        default_root, default_call, default_graph = state.graph_prefix.get()
        root = default_root if root is None else root
        call_index = default_call if call_index is None else call_index
        graph_index = default_graph if graph_index is None else graph_index
        state.graph_prefix.set((default_root, default_call, default_graph + 1))
        return f"{root}.{call_index}.{graph_index}."

    def node(self, class_type: str, id: str | None = None, **inputs: Any) -> Node:
        if id is None:
            id = str(self.id_gen)
            self.id_gen += 1
        full = self.prefix + id
        if full not in self.nodes:
            self.nodes[full] = Node(full, class_type, inputs)
        return self.nodes[full]

    def lookup_node(self, id: str) -> Node | None:
        return self.nodes.get(self.prefix + id)

    def finalize(self) -> dict[str, Any]:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}

    def replace_node_output(self, node_id: str, index: int, new_value: Any) -> None:
        """Every input linked to ``node_id``'s output ``index`` takes ``new_value`` (None: removed)."""
        target = self.prefix + node_id
        for node in self.nodes.values():
            for key, value in list(node.inputs.items()):
                if is_link(value) and value[0] == target and value[1] == index:
                    if new_value is None:
                        del node.inputs[key]
                    else:
                        node.inputs[key] = new_value

    def remove_node(self, id: str) -> None:
        del self.nodes[self.prefix + id]


def add_graph_prefix(graph: dict[str, Any], outputs: Any, prefix: str) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """``graph`` and ``outputs`` with ``prefix`` before every node id and every link to one."""
    def moved(value: Any) -> Any:
        return [prefix + value[0], value[1]] if is_link(value) else value

    renamed = {prefix + node_id: {"class_type": entry["class_type"],
                                  "inputs": {k: moved(v) for k, v in entry.get("inputs", {}).items()}}
               for node_id, entry in graph.items()}
    return renamed, tuple(moved(v) for v in outputs)
