"""ComfyUI's ``DynamicPrompt`` (the DYNPROMPT hidden input) over the graph of the running run.

Nodes that expand loops read the prompt as it is now (expanded nodes included) to clone a
loop body: :class:`DynamicPrompt` answers ``get_node`` in ComfyUI's prompt shape
(``{"class_type", "inputs"}`` with links ``[id, output index]``) from
:class:`engine.run_state.RunGraph`.
"""

from __future__ import annotations

from typing import Any, Mapping

from engine.workflow import Link


class NodeNotFoundError(Exception):
    """``get_node`` of an id the run does not have."""


class DynamicPrompt:
    def __init__(self, graph: Any, original_prompt: Mapping[str, Any] | None) -> None:
        self._graph = graph
        self.original_prompt = original_prompt or {}

    def get_node(self, node_id: str) -> dict[str, Any]:
        instance = self._graph.node(node_id) if self._graph is not None else None
        if instance is None:
            raise NodeNotFoundError(f"Node {node_id} not found")
        inputs = {name: [value.node_id, self._graph.output_index(value.node_id, value.output)]
                  if isinstance(value, Link) else value for name, value in instance.inputs.items()}
        return {"class_type": instance.type, "inputs": inputs}

    def has_node(self, node_id: str) -> bool:
        return self._graph is not None and self._graph.node(node_id) is not None

    def get_original_prompt(self) -> Mapping[str, Any]:
        return self.original_prompt

    def get_real_node_id(self, node_id: str) -> str:
        return self._graph.root(node_id) if self._graph is not None else node_id

    def get_display_node_id(self, node_id: str) -> str:
        return self.get_real_node_id(node_id)

    def get_parent_node_id(self, node_id: str) -> str | None:
        return self._graph.parent(node_id) if self._graph is not None else None

    def all_node_ids(self) -> set[str]:
        return set(self._graph.ids()) if self._graph is not None else set(self.original_prompt)
