"""Our document (or an API prompt) -> ComfyUI's UI-format graph, for its frontend to open.

The graph is laid out as the current frontend saves one: each node's inputs are its sockets
in catalogue order followed by one entry per widget (``"widget": {"name": ...}``, linked or
not), its outputs carry the ids of their links, and ``widgets_values`` holds the values in
widget order with the seed-control entry ("fixed" unless our editor's ``ui.controls`` says
otherwise) and the upload-button entry where the frontend has those widgets. Positions come
from ``layout``, else from our ``ui.pos``, else from a left-to-right layout by depth.
Ids that are not plain integers get fresh integers; the original id is kept in
``properties["latentflow_id"]`` so that converting back restores it. The editor's node state
goes out as the frontend keeps it: ``ui.mode`` as ``mode`` (muted 2, bypassed 4),
``ui.collapsed`` / ``ui.pinned`` as ``flags``, ``ui.color`` as ``color``/``bgcolor``
(:mod:`engine.comfyui_node_state`), and our editor's ``Reroute`` nodes as ComfyUI's Reroute
(one unnamed ``*`` input, one output typed after what it carries).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from engine.comfyui_graph import (
    CONTROL_VALUES, REROUTE_INPUT, REROUTE_TYPE, GraphProblem, InputSlot, catalogue_inputs, output_names,
    output_types,
)
from engine.comfyui_node_state import comfy_fields_from_ui
from engine.workflow import Link, NodeInstance, comfyui_prompt_to_document, document_to_workflow, is_comfyui_prompt

COLUMN_WIDTH, ROW_HEIGHT, MARGIN = 380, 280, 50
NODE_WIDTH, SLOT_HEIGHT, TITLE_HEIGHT = 320, 22, 30
EMPTY_WIDGET_VALUES: dict[str, Any] = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False, "COMBO": ""}


def build_ui_graph(document_or_prompt: Mapping[str, Any], object_info: Mapping[str, Any],
                   layout: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    document = (comfyui_prompt_to_document(document_or_prompt) if is_comfyui_prompt(document_or_prompt)
                else document_or_prompt)
    workflow = document_to_workflow(document)
    ui_ids = _ui_ids(list(workflow.nodes))
    depth = _depths(workflow.nodes)
    positions = _positions(workflow.nodes, depth, layout or {})

    nodes: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    for order, node_id in enumerate(sorted(workflow.nodes, key=lambda n: (depth[n], ui_ids[n]))):
        instance = workflow.nodes[node_id]
        entry = _ui_node(instance, object_info.get(instance.type), ui_ids[node_id], positions[node_id], order)
        nodes.append(entry)
        by_id[node_id] = entry
    nodes.sort(key=lambda n: n["id"])

    links: list[list[Any]] = []
    for node_id, instance in workflow.nodes.items():
        target = by_id[node_id]
        for slot, item in enumerate(target["inputs"]):
            value = instance.inputs.get(target.get("_reroute_input") or item["name"])
            if not isinstance(value, Link) or value.node_id not in by_id:
                continue
            origin = by_id[value.node_id]
            origin_slot = _output_slot(origin, value.output)
            link_id = len(links) + 1
            link_type = origin["outputs"][origin_slot]["type"]
            links.append([link_id, origin["id"], origin_slot, target["id"], slot, link_type])
            item["link"] = link_id
            outgoing = origin["outputs"][origin_slot]
            outgoing["links"] = [*(outgoing["links"] or []), link_id]
    _type_reroutes(nodes, links)

    groups = ((document.get("ui") or {}).get("comfyui") or {}).get("groups") or []
    return {
        "last_node_id": max((n["id"] for n in nodes), default=0),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [dict(g) for g in groups if isinstance(g, Mapping)],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
        "version": 0.4,
    }


def export_problems(document_or_prompt: Mapping[str, Any], object_info: Mapping[str, Any]) -> list[GraphProblem]:
    """What :func:`build_ui_graph` cannot write as ComfyUI expects: nodes the catalogue does not
    know go out without widget names. Our editor's Reroute is not one of them (it becomes the
    frontend's Reroute)."""
    document = (comfyui_prompt_to_document(document_or_prompt) if is_comfyui_prompt(document_or_prompt)
                else document_or_prompt)
    nodes = document.get("nodes") if isinstance(document.get("nodes"), Mapping) else {}
    return [GraphProblem(f"node type {entry.get('type')!r} is not in the node catalogue; its values were written "
                         "in document order and ComfyUI may not place them", str(node_id), str(entry.get("type")),
                         hint="install the node pack that provides it, or replace the node",
                         severity="warning", code="unknown_type")
            for node_id, entry in nodes.items()
            if isinstance(entry, Mapping) and entry.get("type") not in object_info
            and entry.get("type") != REROUTE_TYPE]


def _ui_node(instance: NodeInstance, info: Mapping[str, Any] | None, ui_id: int, pos: list[float],
             order: int) -> dict[str, Any]:
    properties: dict[str, Any] = {"Node name for S&R": instance.type}
    if str(ui_id) != instance.id:
        properties["latentflow_id"] = instance.id
    if instance.type == REROUTE_TYPE and info is None:  # our editor's Reroute -> the frontend's
        return _reroute_node(instance, ui_id, pos, order, properties)
    if info is not None:
        slots = catalogue_inputs(info)
        inputs = [_socket(s) for s in slots if not s.is_widget]
        inputs += [{**_socket(s), "widget": {"name": s.name}} for s in slots if s.is_widget]
        known = {s.name for s in slots}
        # Links into inputs the catalogue does not list still travel (validation reports them).
        inputs += [{"name": n, "type": "*", "link": None} for n, v in instance.inputs.items()
                   if n not in known and isinstance(v, Link)]
        widgets_values = _widget_values(instance, slots)
        outputs = [{"name": name, "type": kind, "links": None, "slot_index": i}
                   for i, (name, kind) in enumerate(zip(output_names(info), output_types(info)))]
    else:  # not in the catalogue: keep what we know; the frontend shows it as a missing node
        inputs = [{"name": n, "type": "*", "link": None} for n, v in instance.inputs.items() if isinstance(v, Link)]
        widgets_values = [v for v in instance.inputs.values() if not isinstance(v, Link)]
        outputs = []
    widget_rows = sum(1 for i in inputs if "widget" in i)
    socket_rows = max(len(inputs) - widget_rows, len(outputs))
    entry: dict[str, Any] = {
        "id": ui_id, "type": instance.type, "pos": pos,
        "size": [NODE_WIDTH, TITLE_HEIGHT + SLOT_HEIGHT * socket_rows + 26 * widget_rows + 10],
        "order": order, **comfy_fields_from_ui(instance.ui),
        "inputs": inputs, "outputs": outputs, "properties": properties, "widgets_values": widgets_values,
    }
    title = instance.ui.get("title")
    if isinstance(title, str) and title:
        entry["title"] = title
    return entry


def _reroute_node(instance: NodeInstance, ui_id: int, pos: list[float], order: int,
                  properties: dict[str, Any]) -> dict[str, Any]:
    """A Reroute as the frontend saves one; its output type is set once its links are known."""
    properties = {**properties, "showOutputText": False, "horizontal": False}
    entry: dict[str, Any] = {
        "id": ui_id, "type": REROUTE_TYPE, "pos": pos, "size": [75, 26], "order": order,
        **comfy_fields_from_ui(instance.ui),
        "inputs": [{"name": "", "type": "*", "link": None}],
        "outputs": [{"name": "", "type": "*", "links": None, "slot_index": 0}],
        "properties": properties,
    }
    entry["_reroute_input"] = REROUTE_INPUT  # which of our inputs is its socket (removed below)
    return entry


def _type_reroutes(nodes: list[dict[str, Any]], links: list[list[Any]]) -> None:
    """A Reroute's output (and the links out of it) take the type of what flows into it,
    following chains of Reroutes; as the frontend does."""
    by_id = {n["id"]: n for n in nodes}
    reroutes = [n for n in nodes if n.pop("_reroute_input", None) is not None]
    for _ in range(len(reroutes)):
        changed = False
        for node in reroutes:
            incoming = node["inputs"][0]["link"]
            link = next((l for l in links if l[0] == incoming), None)
            kind = by_id[link[1]]["outputs"][link[2]]["type"] if link is not None else "*"
            if node["outputs"][0]["type"] != kind:
                node["outputs"][0]["type"] = kind
                changed = True
        if not changed:
            break
    for link in links:
        link[5] = by_id[link[1]]["outputs"][link[2]]["type"]


def _socket(slot: InputSlot) -> dict[str, Any]:
    return {"name": slot.name, "type": slot.type, "link": None}


def _widget_values(instance: NodeInstance, slots: list[InputSlot]) -> list[Any]:
    controls = instance.ui.get("controls") if isinstance(instance.ui.get("controls"), Mapping) else {}
    values: list[Any] = []
    for slot in slots:
        if not slot.is_widget:
            continue
        value = instance.inputs.get(slot.name)
        if value is None or isinstance(value, Link):  # a linked widget keeps a value of its own
            value = slot.default if slot.default is not None else EMPTY_WIDGET_VALUES.get(slot.type, "")
        values.append(value)
        if slot.control:
            control = controls.get(slot.name) if controls else None
            values.append(control if control in CONTROL_VALUES else "fixed")
        if slot.upload:
            values.append(slot.upload)
    return values


def _output_slot(origin: Mapping[str, Any], output: str | int) -> int:
    outputs = origin["outputs"]
    if origin.get("_reroute_input"):  # one output, whatever our link calls it
        return 0
    if isinstance(output, int) or (isinstance(output, str) and output.isdigit()):
        index = int(output)
    else:
        index = next((i for i, o in enumerate(outputs) if o["name"] == output), -1)
        if index < 0:  # unknown output name (unknown node type): give it a slot
            index = len(outputs)
    while len(outputs) <= index:
        outputs.append({"name": str(output) if len(outputs) == index else f"out{len(outputs)}", "type": "*",
                        "links": None, "slot_index": len(outputs)})
    return index


def _ui_ids(node_ids: list[str]) -> dict[str, int]:
    """Plain integer ids are kept; the others get the next free integers, in document order."""
    ids = {n: int(n) for n in node_ids if n.isdigit() and str(int(n)) == n}
    next_id = max(ids.values(), default=0) + 1
    for node_id in node_ids:
        if node_id not in ids:
            ids[node_id] = next_id
            next_id += 1
    return ids


def _depths(nodes: Mapping[str, NodeInstance]) -> dict[str, int]:
    """Longest path from a node without inputs; cycles (invalid anyway) are cut off."""
    depth = {node_id: 0 for node_id in nodes}
    for _ in range(len(nodes)):
        changed = False
        for node_id, instance in nodes.items():
            for value in instance.inputs.values():
                if isinstance(value, Link) and value.node_id in depth and depth[value.node_id] + 1 > depth[node_id]:
                    depth[node_id] = depth[value.node_id] + 1
                    changed = True
        if not changed:
            break
    return depth


def _positions(nodes: Mapping[str, NodeInstance], depth: Mapping[str, int],
               layout: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    positions: dict[str, list[float]] = {}
    rows: dict[int, int] = {}
    for node_id in sorted(nodes, key=lambda n: (depth[n], n.zfill(12))):
        pos = layout.get(node_id) or nodes[node_id].ui.get("pos")
        if isinstance(pos, Sequence) and len(pos) >= 2 and all(isinstance(v, (int, float)) for v in pos[:2]):
            positions[node_id] = [pos[0], pos[1]]
        else:
            row = rows.get(depth[node_id], 0)
            rows[depth[node_id]] = row + 1
            positions[node_id] = [MARGIN + COLUMN_WIDTH * depth[node_id], MARGIN + ROW_HEIGHT * row]
    return positions
