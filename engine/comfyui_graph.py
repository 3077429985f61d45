"""ComfyUI's UI-format graph (what its frontend saves) <-> the API prompt and our document.

The UI graph is litegraph's serialisation::

    {"last_node_id": 9, "last_link_id": 9, "version": 0.4, "groups": [], "config": {}, "extra": {},
     "nodes": [{"id": 3, "type": "KSampler", "pos": [863, 186], "mode": 0,
                "inputs": [{"name": "model", "type": "MODEL", "link": 1}, ...],
                "outputs": [{"name": "LATENT", "type": "LATENT", "links": [7], "slot_index": 0}],
                "widgets_values": [156680208700286, "randomize", 20, 8, "euler", "normal", 1]}],
     "links": [[1, 4, 0, 3, 0, "MODEL"], ...]}   # [id, origin, origin_slot, target, target_slot, type]

Widget values carry no names: they are in widget order (the node's required, then optional,
inputs whose type has a widget), with an extra entry after every widget whose spec says
``control_after_generate`` (the "fixed"/"randomize" choice) and after an image-upload combo
(the upload button). The conversion follows the rules of the frontend's graph-to-prompt step:
links into converted widgets win over the widget value, ``PrimitiveNode`` gives its value to
every target, ``Reroute`` passes through, muted nodes (mode 2) are left out together with what
fed only them, bypassed nodes (mode 4) hand an input of the matching type to their consumers,
notes and groups are ignored, and simple subgraphs are flattened (ids ``"outer:inner"``).
Anything that cannot be mapped becomes a :class:`GraphProblem` naming the node.

The document for our editor (``ui_graph_to_document(..., editor=True)``) keeps instead what
the frontend draws but does not run: muted and bypassed nodes stay, with ``ui.mode``, linked
as drawn, and Reroutes stay as our editor's ``Reroute`` node (input ``input``, output
``output``); the editor resolves both before it queues (web/static/js/modes.js). Collapsed,
pinned and colour go to ``ui`` in both documents (:mod:`engine.comfyui_node_state`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Sequence

from engine.comfyui_node_state import node_ui_from_comfy
from engine.workflow import FORMAT_VERSION, comfyui_prompt_to_document

MUTED, BYPASSED = 2, 4  # litegraph node modes (0 = always)
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload")
PASS_THROUGH_TYPES = frozenset({"Reroute", "Reroute (rgthree)"})  # frontend-only, one in, one out
REROUTE_TYPE, REROUTE_INPUT = "Reroute", "input"  # our editor's Reroute (graph.js REROUTE_SPEC)
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE = "-10", "-20"  # litegraph's ids for a subgraph's io nodes
MAX_SUBGRAPH_DEPTH = 8


@dataclass(frozen=True)
class GraphProblem:
    """Something in a UI graph that could not be converted as written."""

    message: str
    node_id: str | None = None
    node_type: str | None = None
    input: str | None = None
    hint: str | None = None
    severity: Literal["error", "warning"] = "error"
    code: str = "ui_graph"
    details: str | None = None  # what was lost, e.g. the widget values of an unknown node

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def format(self) -> str:
        where = f"node {self.node_id}" + (f" ({self.node_type})" if self.node_type else "") if self.node_id else ""
        if self.input:
            where += f" / input {self.input!r}"
        text = f"{self.severity}: {where + ': ' if where else ''}{self.message}"
        return text + (f"\n    fix:      {self.hint}" if self.hint else "")


@dataclass(frozen=True)
class InputSlot:
    """One input of a catalogue entry, as the frontend lays it out."""

    name: str
    type: str  # "COMBO" for a list of choices
    optional: bool
    is_widget: bool
    force_input: bool = False  # a widget type shown as a socket only
    control: bool = False  # a control_after_generate entry follows the value
    upload: str | None = None  # "image" etc.: an upload-button entry follows the value
    default: Any = None


def catalogue_inputs(info: Mapping[str, Any]) -> list[InputSlot]:
    """The inputs of an ``/object_info`` entry in the frontend's order (required, then optional)."""
    slots: list[InputSlot] = []
    spec_inputs = info.get("input") or {}
    order = info.get("input_order") or {}
    for group in ("required", "optional"):
        entries = spec_inputs.get(group) or {}
        for name in order.get(group) or list(entries):
            entry = entries.get(name)
            if not isinstance(entry, (list, tuple)) or not entry:
                continue
            kind, options = entry[0], (entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {})
            choices = kind if isinstance(kind, list) else options.get("options")
            type_name = "COMBO" if isinstance(kind, list) else str(kind)
            widget_type = type_name in WIDGET_TYPES
            force = bool(options.get("forceInput")) and widget_type
            default = options.get("default")
            if default is None and isinstance(choices, list) and choices:
                default = choices[0]
            upload = next((o.split("_")[0] for o in UPLOAD_OPTIONS if options.get(o)), None)
            slots.append(InputSlot(name, type_name, group == "optional", widget_type and not force, force,
                                   bool(options.get("control_after_generate")), upload, default))
    return slots


def output_types(info: Mapping[str, Any]) -> list[str]:
    return ["COMBO" if isinstance(t, list) else str(t) for t in info.get("output") or []]


def output_names(info: Mapping[str, Any]) -> list[str]:
    types = output_types(info)
    names = list(info.get("output_name") or [])
    return [str(names[i]) if i < len(names) else types[i] for i in range(len(types))]


def is_ui_graph(document: Any) -> bool:
    """True for the frontend's saved graph: a ``nodes`` list (our format has a ``nodes`` object)."""
    return isinstance(document, dict) and isinstance(document.get("nodes"), list) and (
        "links" in document or "last_node_id" in document or "version" in document)


def types_match(a: Any, b: Any) -> bool:
    """litegraph's connection rule: equal, a wildcard, or sharing one of comma-separated types."""
    if a in ("*", "", 0, None) or b in ("*", "", 0, None):
        return True
    left, right = {t.strip().lower() for t in str(a).split(",")}, {t.strip().lower() for t in str(b).split(",")}
    return bool(left & right)


def ui_graph_to_prompt(graph: Mapping[str, Any], object_info: Mapping[str, Any],
                       ) -> tuple[dict[str, Any], list[GraphProblem]]:
    """Convert a UI graph to ComfyUI's API prompt (``{id: {class_type, inputs, _meta}}``)."""
    converter = _Converter(graph, object_info)
    return converter.prompt(), converter.problems


def ui_graph_to_document(graph: Mapping[str, Any], object_info: Mapping[str, Any], *, editor: bool = False,
                         ) -> tuple[dict[str, Any], list[GraphProblem]]:
    """Convert a UI graph to our document, keeping positions, titles, seed controls, collapsed,
    pinned, colours and groups.

    ``editor=False`` gives what runs (muted nodes left out, bypassed nodes and reroutes resolved,
    as in the API prompt); ``editor=True`` gives what the frontend shows, for our editor: muted and
    bypassed nodes stay with ``ui.mode`` and Reroutes stay as our ``Reroute`` nodes."""
    converter = _Converter(graph, object_info, editor=editor)
    prompt = converter.prompt()
    document = comfyui_prompt_to_document(prompt)
    for node_id, entry in document["nodes"].items():
        flat = converter.flats[node_id]
        ui: dict[str, Any] = dict(entry.get("ui") or {})
        ui.update(node_ui_from_comfy(flat.node, keep_mode=editor))
        pos = flat.node.get("pos")
        if isinstance(pos, Mapping):  # very old graphs: {"0": x, "1": y}
            pos = [pos.get("0"), pos.get("1")]
        if isinstance(pos, Sequence) and len(pos) >= 2 and all(isinstance(v, (int, float)) for v in pos[:2]):
            ui["pos"] = [round(pos[0] + flat.offset[0]), round(pos[1] + flat.offset[1])]
        if converter.controls.get(node_id):
            ui["controls"] = dict(converter.controls[node_id])
        if ui:
            entry["ui"] = ui
    groups = [g for g in graph.get("groups") or [] if isinstance(g, Mapping)]
    document["ui"] = {"comfyui": {"groups": groups}} if groups else {}
    if not document["ui"]:
        del document["ui"]
    document["version"] = FORMAT_VERSION
    return document, converter.problems


def prompt_to_ui_graph(document_or_prompt: Mapping[str, Any], object_info: Mapping[str, Any],
                       layout: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """Our document (or an API prompt) as a UI graph the ComfyUI frontend opens; see
    :mod:`engine.comfyui_graph_export`."""
    from engine.comfyui_graph_export import build_ui_graph

    return build_ui_graph(document_or_prompt, object_info, layout)


# ---------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _UiLink:
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int


@dataclass
class _Scope:
    """One graph level: the root graph, or one instance of a subgraph definition."""

    prefix: str  # "" at the root, "5:" inside subgraph instance 5
    nodes: dict[str, Mapping[str, Any]]
    links: dict[str, _UiLink]
    instance: "_Flat | None" = None
    definition: Mapping[str, Any] | None = None
    exec_ids: dict[str, str] = field(default_factory=dict)  # UI node id -> execution id

    def exec_id(self, ui_id: str) -> str:
        return self.exec_ids.get(ui_id, self.prefix + ui_id)


@dataclass
class _Flat:
    """A node with its execution id (``"5:3"`` for node 3 inside subgraph instance 5)."""

    exec_id: str
    node: Mapping[str, Any]
    scope: _Scope
    offset: tuple[float, float] = (0.0, 0.0)
    inner: _Scope | None = None  # set for a subgraph instance

    @property
    def type(self) -> str:
        return str(self.node.get("type"))

    @property
    def mode(self) -> int:
        mode = self.node.get("mode", 0)
        return mode if isinstance(mode, int) else 0

    def input_list(self) -> list[Mapping[str, Any]]:
        return [i for i in self.node.get("inputs") or [] if isinstance(i, Mapping)]

    def output_list(self) -> list[Mapping[str, Any]]:
        return [o for o in self.node.get("outputs") or [] if isinstance(o, Mapping)]


@dataclass(frozen=True)
class _Output:
    exec_id: str
    slot: int


@dataclass(frozen=True)
class _Value:
    value: Any


@dataclass(frozen=True)
class _Muted:
    exec_id: str


_Resolved = _Output | _Value | _Muted | None


def _parse_links(raw: Any) -> dict[str, _UiLink]:
    links: dict[str, _UiLink] = {}
    for item in raw or []:
        if isinstance(item, (list, tuple)) and len(item) >= 5:
            link_id, origin, origin_slot, target, target_slot = item[:5]
        elif isinstance(item, Mapping):
            link_id, origin, origin_slot = item.get("id"), item.get("origin_id"), item.get("origin_slot")
            target, target_slot = item.get("target_id"), item.get("target_slot")
        else:
            continue
        if isinstance(origin_slot, int) and isinstance(target_slot, int) and link_id is not None:
            links[str(link_id)] = _UiLink(str(origin), origin_slot, str(target), target_slot)
    return links


class _Converter:
    def __init__(self, graph: Mapping[str, Any], object_info: Mapping[str, Any], editor: bool = False) -> None:
        self.object_info = object_info
        self.editor = editor  # keep muted/bypassed nodes and reroutes (the editor's document)
        self.problems: list[GraphProblem] = []
        self.flats: dict[str, _Flat] = {}
        self.controls: dict[str, dict[str, str]] = {}
        definitions = (graph.get("definitions") or {}).get("subgraphs") or []
        self.subgraphs = {str(d.get("id")): d for d in definitions if isinstance(d, Mapping)}
        self._expand(graph.get("nodes") or [], graph.get("links"), "", None, None, (0.0, 0.0), 0)
        self._prompt: dict[str, Any] | None = None

    # -------------------------------------------------------------- flattening

    def _expand(self, nodes: Sequence[Any], links: Any, prefix: str, instance: _Flat | None,
                definition: Mapping[str, Any] | None, offset: tuple[float, float], depth: int) -> _Scope:
        scope = _Scope(prefix, {}, _parse_links(links), instance, definition)
        for node in nodes:
            if not isinstance(node, Mapping) or node.get("id") is None:
                continue
            node_id = str(node["id"])
            scope.nodes[node_id] = node
            # A graph we exported keeps our own node ids in its properties; they come back.
            own_id = (node.get("properties") or {}).get("latentflow_id") if not prefix else None
            exec_id = own_id if isinstance(own_id, str) and own_id and own_id not in self.flats else prefix + node_id
            scope.exec_ids[node_id] = exec_id
            flat = _Flat(exec_id, node, scope, offset)
            self.flats[flat.exec_id] = flat
            definition_of = self.subgraphs.get(str(node.get("type")))
            if definition_of is not None and flat.mode not in (MUTED, BYPASSED):
                if depth >= MAX_SUBGRAPH_DEPTH:
                    self._problem(flat, f"subgraphs nest deeper than {MAX_SUBGRAPH_DEPTH} levels (or contain "
                                        "themselves); not converted", "unpack the subgraphs in ComfyUI and save again")
                    continue
                pos = node.get("pos") if isinstance(node.get("pos"), (list, tuple)) else (0, 0)
                inner_offset = (offset[0] + float(pos[0]), offset[1] + float(pos[1]))
                flat.inner = self._expand(definition_of.get("nodes") or [], definition_of.get("links"),
                                          f"{flat.exec_id}:", flat, definition_of, inner_offset, depth + 1)
        return scope

    def _problem(self, flat: _Flat, message: str, hint: str | None = None, input_name: str | None = None,
                 severity: Literal["error", "warning"] = "error", code: str = "ui_graph") -> None:
        self.problems.append(GraphProblem(message, flat.exec_id, flat.type, input_name, hint, severity, code))

    # -------------------------------------------------------------- link resolution

    def resolve_input(self, flat: _Flat, slot: int, want_type: Any, seen: frozenset[str] = frozenset()) -> _Resolved:
        key = f"{flat.exec_id}[in]{slot}"
        if key in seen:
            self._problem(flat, "links form a loop through frontend-only nodes (reroutes, bypassed nodes)",
                          "remove one of the links of the loop")
            return None
        inputs = flat.input_list()
        if slot >= len(inputs) or inputs[slot].get("link") is None:
            return None
        link = flat.scope.links.get(str(inputs[slot]["link"]))
        if link is None:
            self._problem(flat, f"input links to link {inputs[slot]['link']}, which is not in the links table; "
                                "it is left unlinked", "reconnect the input in ComfyUI and save again",
                          str(inputs[slot].get("name")), "warning")
            return None
        if link.origin_id == SUBGRAPH_INPUT_NODE and flat.scope.instance is not None:
            return self._resolve_subgraph_input(flat, link.origin_slot, want_type, seen | {key})
        origin = flat.scope.nodes.get(link.origin_id)
        if origin is None:
            self._problem(flat, f"input is linked to node {link.origin_id}, which is not in the graph",
                          "reconnect the input in ComfyUI and save again", str(inputs[slot].get("name")), "warning")
            return None
        return self.resolve_output(self.flats[flat.scope.exec_id(link.origin_id)], link.origin_slot, want_type,
                                   seen | {key})

    def resolve_output(self, flat: _Flat, slot: int, want_type: Any, seen: frozenset[str]) -> _Resolved:
        key = f"{flat.exec_id}[out]{slot}"
        if key in seen:
            self._problem(flat, "links form a loop through frontend-only nodes", "remove one of the links of the loop")
            return None
        seen = seen | {key}
        if self._drawn_only(flat):
            return _Output(flat.exec_id, slot)
        if flat.mode == BYPASSED:
            index = self._bypass_slot(flat, slot, want_type)
            return None if index < 0 else self.resolve_input(flat, index, want_type, seen)
        if flat.mode == MUTED:
            return _Muted(flat.exec_id)
        if flat.type == "PrimitiveNode":
            values = flat.node.get("widgets_values")
            return _Value(values[0]) if isinstance(values, list) and values else None
        if flat.type in PASS_THROUGH_TYPES:
            return self.resolve_input(flat, slot, want_type, seen)
        if flat.type in NOTE_TYPES:
            return None
        if flat.inner is not None:
            return self._resolve_subgraph_output(flat, slot, want_type, seen)
        return _Output(flat.exec_id, slot)

    def _bypass_slot(self, flat: _Flat, slot: int, want_type: Any) -> int:
        """The input a bypassed node hands to the consumer of its output ``slot``."""
        inputs, outputs = flat.input_list(), flat.output_list()
        if want_type in ("*", "", None):
            return slot if slot < len(inputs) else (0 if inputs else -1)
        output_type = outputs[slot].get("type") if slot < len(outputs) else want_type
        if slot < len(inputs) and types_match(inputs[slot].get("type"), output_type) \
                and types_match(inputs[slot].get("type"), want_type):
            return slot
        exact = [i for i, item in enumerate(inputs) if item.get("type") == want_type]
        if exact:
            return exact[0]
        return next((i for i, item in enumerate(inputs) if types_match(item.get("type"), output_type)
                     and types_match(item.get("type"), want_type)), -1)

    def _resolve_subgraph_input(self, flat: _Flat, slot: int, want_type: Any, seen: frozenset[str]) -> _Resolved:
        instance = flat.scope.instance
        assert instance is not None
        inputs = instance.input_list()
        if slot < len(inputs) and inputs[slot].get("link") is not None:
            return self.resolve_input(instance, slot, want_type, seen)
        if slot < len(inputs) and inputs[slot].get("widget"):
            self._problem(instance, "this subgraph input is a promoted widget whose value cannot be read from "
                                    "the saved graph; it is left to the inner node's own value",
                          "link a node (or a PrimitiveNode) to it, or unpack the subgraph in ComfyUI "
                          "(right-click > Unpack Subgraph) and save again", str(inputs[slot].get("name")))
        return None

    def _resolve_subgraph_output(self, flat: _Flat, slot: int, want_type: Any, seen: frozenset[str]) -> _Resolved:
        inner = flat.inner
        assert inner is not None
        link = next((l for l in inner.links.values()
                     if l.target_id == SUBGRAPH_OUTPUT_NODE and l.target_slot == slot), None)
        if link is None or link.origin_id not in inner.nodes:
            return None
        if link.origin_id == SUBGRAPH_INPUT_NODE:  # an input wired straight to an output
            return self._resolve_subgraph_input(flat, link.origin_slot, want_type, seen)
        return self.resolve_output(self.flats[inner.exec_id(link.origin_id)], link.origin_slot, want_type, seen)

    # -------------------------------------------------------------- the prompt

    def prompt(self) -> dict[str, Any]:
        if self._prompt is None:
            self._prompt = self._build_prompt()
        return self._prompt

    def _drawn_only(self, flat: _Flat) -> bool:
        """In the editor's document: a node the frontend draws but does not run as such (muted,
        bypassed, a reroute), kept for the editor to resolve. Subgraph instances, notes and
        PrimitiveNodes are not (the editor has none of those)."""
        if not self.editor or flat.inner is not None or flat.type in NOTE_TYPES or flat.type == "PrimitiveNode":
            return False
        if flat.type in self.subgraphs and flat.type not in self.object_info:
            return False
        return flat.mode in (MUTED, BYPASSED) or flat.type in PASS_THROUGH_TYPES

    def _executable(self, flat: _Flat) -> bool:
        if self._drawn_only(flat):
            return True
        if flat.inner is not None or flat.mode in (MUTED, BYPASSED):
            return False
        if flat.type in NOTE_TYPES or flat.type in PASS_THROUGH_TYPES or flat.type == "PrimitiveNode":
            return False
        return flat.type in self.object_info or flat.type not in self.subgraphs

    def _build_prompt(self) -> dict[str, Any]:
        prompt: dict[str, Any] = {}
        fed_muted: dict[str, list[tuple[str, str]]] = {}
        for exec_id, flat in self.flats.items():
            if not self._executable(flat):
                self._report_left_out(flat)
                continue
            reroute = flat.type in PASS_THROUGH_TYPES
            info = None if reroute else self.object_info.get(flat.type)
            inputs: dict[str, Any] = {}
            if info is None and not reroute:
                self._report_unknown(flat)
            elif info is not None:
                inputs.update(self._widget_inputs(flat, info))
            for index, item in enumerate(flat.input_list()):
                name = REROUTE_INPUT if reroute else str(item.get("name"))
                if item.get("link") is None:
                    continue
                resolved = self.resolve_input(flat, index, item.get("type"))
                if isinstance(resolved, _Output):
                    inputs[name] = [resolved.exec_id, resolved.slot]
                elif isinstance(resolved, _Value) and resolved.value is not None:
                    inputs[name] = {"__value__": resolved.value} if isinstance(resolved.value, list) else resolved.value
                elif isinstance(resolved, _Muted):
                    if not self.editor:  # the frontend drops inputs fed by nodes it leaves out
                        inputs.pop(name, None)
                        fed_muted.setdefault(exec_id, []).append((name, resolved.exec_id))
            entry: dict[str, Any] = {"inputs": inputs, "class_type": REROUTE_TYPE if reroute else flat.type}
            title = flat.node.get("title")
            if isinstance(title, str) and title:
                entry["_meta"] = {"title": title}
            prompt[exec_id] = entry
        if self.editor:  # everything drawn stays on the canvas; only links to what is not there go
            self._drop_dangling_links(prompt)
        else:
            self._prune(prompt)
        for exec_id, feeds in fed_muted.items():
            if exec_id in prompt:
                for name, source in feeds:
                    self._problem(self.flats[exec_id], f"input was fed by node {source}, which is muted (mode 2), "
                                  "so it is left out", "unmute that node or link another source",
                                  name, "warning", "muted_source")
        return prompt

    def _report_left_out(self, flat: _Flat) -> None:
        """The editor's document lacks a muted or bypassed subgraph: say so (it is drawn in ComfyUI)."""
        if self.editor and flat.mode in (MUTED, BYPASSED) and flat.inner is None and flat.type in self.subgraphs:
            state = "muted" if flat.mode == MUTED else "bypassed"
            self._problem(flat, f"this subgraph is {state}; the editor cannot show a {state} subgraph, so it is "
                                "left out" + (" and its inputs pass through" if flat.mode == BYPASSED else ""),
                          f"un{'mute' if flat.mode == MUTED else 'bypass'} it (or unpack it) in ComfyUI and save "
                          "again to keep it", severity="warning", code="subgraph_mode")

    def _report_unknown(self, flat: _Flat) -> None:
        values = flat.node.get("widgets_values")
        lost = f"its widget values {values!r} cannot be given input names" if values else None
        if flat.type.startswith(("workflow>", "workflow/")):
            hint = "this is a legacy group node: convert it to nodes in ComfyUI (right-click > Convert to nodes)"
        else:
            hint = ("install the node pack that provides it, replace it with a known node, or delete it if it "
                    "is a frontend-only node (a label or a viewer)")
        message = f"node type {flat.type!r} is not in the node catalogue" + (f"; {lost}" if lost else "")
        self.problems.append(GraphProblem(message, flat.exec_id, flat.type, None, hint, "error", "unknown_type", lost))

    def _widget_inputs(self, flat: _Flat, info: Mapping[str, Any]) -> dict[str, Any]:
        slots = catalogue_inputs(info)
        values = flat.node.get("widgets_values")
        if values is None:
            return {}
        if isinstance(values, Mapping):  # newer frontends' nodes keep {widget name: value}
            named = {s.name: values[s.name] for s in slots if (s.is_widget or s.force_input) and s.name in values}
            return {k: ({"__value__": v} if isinstance(v, list) else v) for k, v in named.items()}
        if not isinstance(values, list):
            self._problem(flat, f"widgets_values must be a list or an object, got {type(values).__name__}",
                          "re-save the workflow in ComfyUI")
            return {}
        layout = self._layout(flat, slots, len(values))
        inputs: dict[str, Any] = {}
        controls: dict[str, str] = {}
        for (kind, name), value in zip(layout, values):
            if kind == "control" and isinstance(value, str):
                controls[name] = value
            elif kind == "value" and value is not None:
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
        if controls:
            self.controls[flat.exec_id] = controls
        return inputs

    def _layout(self, flat: _Flat, slots: list[InputSlot], count: int) -> list[tuple[str, str]]:
        """Which widget each entry of ``widgets_values`` belongs to: ("value" | "control" | "upload", name).

        Frontends differ (forceInput widgets, upload buttons, graphs saved before seeds had a
        control entry), so the layout whose length matches the saved values is chosen."""
        shown = {str(i.get("name")) for i in flat.input_list() if i.get("widget")}
        forced_default = any(s.force_input and s.name in shown for s in slots)
        has_forced = any(s.force_input for s in slots)
        candidates: list[list[tuple[str, str]]] = []
        for forced in ([forced_default, not forced_default] if has_forced else [False]):
            for control, upload in ((True, True), (True, False), (False, True), (False, False)):
                layout: list[tuple[str, str]] = []
                for s in slots:
                    if s.is_widget or (forced and s.force_input):
                        layout.append(("value", s.name))
                        if control and s.control:
                            layout.append(("control", s.name))
                        if upload and s.upload:
                            layout.append(("upload", s.name))
                candidates.append(layout)
        for layout in candidates:
            if len(layout) == count:
                return layout
        expected = candidates[0]
        names = ", ".join(name if kind == "value" else f"({kind} of {name})" for kind, name in expected)
        self._problem(flat, f"has {count} widget values but {flat.type} has {len(expected)} widget entries "
                            f"({names}); values were matched in order and may be misplaced",
                      "check this node's values (the node's definition may have changed since the workflow "
                      "was saved)", severity="warning", code="widget_count")
        return expected

    def _prune(self, prompt: dict[str, Any]) -> None:
        """Leave out nodes that fed only nodes which are left out (muted, or fed only those)."""
        scopes = {id(flat.scope): flat.scope for flat in self.flats.values()}
        had_consumers = {scope.exec_id(link.origin_id) for scope in scopes.values() for link in scope.links.values()}
        self._drop_dangling_links(prompt)
        while True:
            used = {value[0] for entry in prompt.values() for value in entry["inputs"].values()
                    if isinstance(value, list) and len(value) == 2}
            dead = [exec_id for exec_id, entry in prompt.items()
                    if exec_id in had_consumers and exec_id not in used
                    and not (self.object_info.get(entry["class_type"]) or {}).get("output_node")]
            if not dead:
                return
            for exec_id in dead:
                del prompt[exec_id]
            self._drop_dangling_links(prompt)

    @staticmethod
    def _drop_dangling_links(prompt: dict[str, Any]) -> None:
        """Links into nodes that are not in the prompt go, as in the frontend."""
        for entry in prompt.values():
            for name in [n for n, v in entry["inputs"].items()
                         if isinstance(v, list) and len(v) == 2 and v[0] not in prompt]:
                del entry["inputs"][name]
