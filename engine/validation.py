"""Check a whole workflow before anything runs and report every problem at once.

Each :class:`ValidationError` names the node, the input, what was expected, what came
and how to fix it. The CLI prints them; the server returns them in its 400 response,
shaped as ComfyUI's (:func:`comfyui_error_body`): each problem also carries ComfyUI's
error type name (``value_not_in_list``, ``required_input_missing``, ...) so ComfyUI
clients and its frontend read our errors as their own.
"""

from __future__ import annotations

import difflib
import traceback
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Literal, Mapping

import jsonschema
import networkx as nx

from engine.api import ANY, COMBO, STRING, NodeSpec
from engine.registry import NodeRegistry
from engine.workflow import (
    Link,
    Workflow,
    comfyui_prompt_to_document,
    document_to_workflow,
    is_comfyui_prompt,
    workflow_schema,
)


# Our problem codes -> ComfyUI's error type names (execution.py's validate_prompt uses
# these); where ComfyUI has no name for a check it does not make, ours is kept.
COMFYUI_ERROR_TYPES: Mapping[str, str] = {
    "schema": "invalid_prompt",
    "unknown_type": "missing_node_type",
    "missing_class_type": "missing_node_type",
    "missing_input": "required_input_missing",
    "not_linked": "invalid_input_type",
    "bad_value": "invalid_input_type",  # refined per check: value_not_in_list, value_*_than_*
    "missing_node": "bad_linked_input",
    "missing_output": "bad_linked_input",
    "type_mismatch": "return_type_mismatch",
    "validation_exception": "exception_during_inner_validation",
    "no_output": "prompt_no_outputs",
    "cycle": "dependency_cycle",
}

# Stands in for the class_type a ComfyUI prompt node lacks (its frontend leaves it out
# for node types it does not know); no node can have this id.
MISSING_CLASS_TYPE = "<missing class_type>"


@dataclass(frozen=True)
class ValidationError:
    code: str  # machine-readable: schema, unknown_type, missing_input, ...
    message: str
    node_id: str | None = None
    node_type: str | None = None
    input: str | None = None
    expected: str | None = None
    actual: str | None = None
    hint: str | None = None
    severity: Literal["error", "warning"] = "error"
    comfyui_type: str | None = None  # ComfyUI's error type when the code alone does not tell
    details: str | None = None  # ComfyUI's short "details" text (input name, value, ...)
    extra_info: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}

    @property
    def error_type(self) -> str:
        """ComfyUI's name for this problem (``value_not_in_list``, ...)."""
        return self.comfyui_type or COMFYUI_ERROR_TYPES.get(self.code, self.code)

    def comfyui_error(self) -> dict[str, Any]:
        """ComfyUI's error object ``{type, message, details, extra_info}``, plus our fields
        (``code``, ``hint``, ``expected``, ``actual``) which its clients ignore."""
        extra: dict[str, Any] = {}
        if self.input is not None:
            extra["input_name"] = self.input
        extra.update(self.extra_info)
        shaped: dict[str, Any] = {"type": self.error_type, "message": self.message,
                                  "details": self.details if self.details is not None else (self.input or ""),
                                  "extra_info": extra, "code": self.code}
        for name in ("hint", "expected", "actual"):
            value = getattr(self, name)
            if value is not None:
                shaped[name] = value
        return shaped

    def format(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node {self.node_id}" + (f" ({self.node_type})" if self.node_type else ""))
        if self.input is not None:
            where.append(f"input {self.input!r}")
        lines = [f"{self.severity}: {' / '.join(where) + ': ' if where else ''}{self.message}"]
        if self.expected is not None:
            lines.append(f"    expected: {self.expected}")
        if self.actual is not None:
            lines.append(f"    got:      {self.actual}")
        if self.hint:
            lines.append(f"    fix:      {self.hint}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ValidationReport:
    workflow: Workflow | None
    problems: tuple[ValidationError, ...]
    outputs: tuple[str, ...] = ()  # the output node ids (what a run executes)

    @property
    def errors(self) -> list[ValidationError]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[ValidationError]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return self.workflow is not None and not self.errors

    def format(self) -> str:
        return "\n".join(p.format() for p in self.problems)

    def node_errors(self) -> dict[str, list[dict[str, Any]]]:
        """Errors grouped per node id (the server's 400 response body)."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for problem in self.errors:
            grouped.setdefault(problem.node_id or "", []).append(problem.to_dict())
        return grouped


def validate_document(document: Any, registry: NodeRegistry) -> ValidationReport:
    """Validate a raw JSON document (our format or ComfyUI's API prompt)."""
    problems: list[ValidationError] = []
    source_format = "latentflow"
    if looks_like_api_prompt(document):
        document = comfyui_prompt_to_document(_with_class_types(document))
        source_format = "comfyui-api"
    if not isinstance(document, dict):
        problems.append(ValidationError(
            "schema", f"a workflow must be a JSON object, got {type(document).__name__}",
            hint='write {"version": 1, "nodes": {...}} or a ComfyUI API prompt'))
        return ValidationReport(None, tuple(problems))
    problems.extend(_schema_problems(document))
    workflow = document_to_workflow(document, source_format)
    report = validate_workflow(workflow, registry)
    return ValidationReport(workflow, tuple(problems) + report.problems, report.outputs)


def looks_like_api_prompt(document: Any) -> bool:
    """ComfyUI's API prompt, including one whose nodes lack ``class_type`` (its frontend
    leaves it out for unknown nodes): ``{id: {"inputs": {...}, ...}}`` with no ``nodes`` key."""
    if is_comfyui_prompt(document):
        return True
    return (isinstance(document, dict) and bool(document) and "nodes" not in document
            and "version" not in document
            and all(isinstance(v, dict) and ("class_type" in v or "inputs" in v) for v in document.values()))


def _with_class_types(prompt: Mapping[str, Any]) -> dict[str, Any]:
    """A copy in which nodes without a (string) ``class_type`` carry the placeholder, so they
    are reported as one node-level problem each instead of breaking the whole prompt."""
    return {node_id: entry if isinstance(entry.get("class_type"), str) and entry["class_type"]
            else {**entry, "class_type": MISSING_CLASS_TYPE}
            for node_id, entry in prompt.items()}


@lru_cache(maxsize=1)
def _schema_validator() -> jsonschema.Draft202012Validator:
    # The shipped schema's local $refs are inlined once: same rules, ~3x faster on big graphs.
    schema = workflow_schema()
    return jsonschema.Draft202012Validator(_inline_refs(schema, schema.get("$defs", {})))


def _inline_refs(node: Any, definitions: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inline_refs(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {k: _inline_refs(v, definitions) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, definitions) for v in node]
    return node


def _schema_problems(document: Mapping[str, Any]) -> list[ValidationError]:
    validator = _schema_validator()
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        path = list(error.absolute_path)
        node_id = str(path[1]) if len(path) >= 2 and path[0] == "nodes" else None
        input_name = str(path[3]) if len(path) >= 4 and path[2] == "inputs" else None
        location = "/".join(map(str, path)) or "(top level)"
        hint = "see engine/workflow.schema.json"
        if input_name is not None and isinstance(error.instance, (list, dict)):
            hint = ('a link is [source_node_id, output_name_or_index]; '
                    'write a literal list as {"value": [...]}')
        elif path == ["version"]:
            hint = 'set "version": 1'
        problems.append(ValidationError(
            "schema", f"{location}: {error.message}", node_id=node_id, input=input_name, hint=hint))
    return problems


def validate_workflow(workflow: Workflow, registry: NodeRegistry) -> ValidationReport:
    problems: list[ValidationError] = []
    known_types = registry.ids()
    for node_id, instance in workflow.nodes.items():
        spec = registry.get(instance.type)
        if instance.type == MISSING_CLASS_TYPE:
            problems.append(_missing_class_type(node_id, instance.ui.get("title")))
            continue
        if spec is None:
            close = difflib.get_close_matches(instance.type, known_types, n=3, cutoff=0.5)
            lowered = {t.lower(): t for t in known_types}
            if instance.type.lower() in lowered and lowered[instance.type.lower()] not in close:
                close.insert(0, lowered[instance.type.lower()])
            title = instance.ui.get("title")
            problems.append(ValidationError(
                "unknown_type", f"unknown node type {instance.type!r}", node_id, instance.type,
                actual=instance.type,
                hint=(f"did you mean {', '.join(repr(c) for c in close)}?" if close else
                      "run `python main.py nodes` for the catalogue, or install the plugin that provides it"),
                details=f"Node ID '#{node_id}'",
                extra_info={"node_id": node_id, "class_type": instance.type, "node_title": title or instance.type},
            ))
            continue
        problems.extend(_input_problems(workflow, node_id, spec, registry))
    problems.extend(_cycle_problems(workflow))
    problems.extend(_output_problems(workflow, registry))
    outputs = tuple(n for n, i in workflow.nodes.items() if (s := registry.get(i.type)) and s.output_node)
    return ValidationReport(workflow, tuple(problems), outputs)


def _missing_class_type(node_id: str, title: Any) -> ValidationError:
    name = f"{title!r} (#{node_id})" if title else f"#{node_id}"
    return ValidationError(
        "missing_class_type", f"node {name} has no class_type, so there is no node type to run it",
        node_id, None, hint="the editor that sent it did not know this node type: install the node pack "
        "that provides it, or remove the node", details=f"Node ID '#{node_id}'",
        extra_info={"node_id": node_id, "class_type": None, "node_title": str(title) if title else None})


def _input_problems(workflow: Workflow, node_id: str, spec: NodeSpec,
                    registry: NodeRegistry) -> list[ValidationError]:
    problems: list[ValidationError] = []
    instance = workflow.nodes[node_id]
    declared = {i.name for i in spec.inputs}
    # ComfyUI ignores inputs a node does not declare; for its prompts that is a warning.
    extra_severity: Literal["error", "warning"] = "warning" if workflow.source_format == "comfyui-api" else "error"
    for name in instance.inputs:
        if name not in declared:
            close = difflib.get_close_matches(name, sorted(declared), n=1)
            problems.append(ValidationError(
                "unknown_input", f"{spec.id} has no input {name!r}", node_id, spec.id, name,
                expected=", ".join(sorted(declared)) or "(no inputs)", actual=name,
                hint=f"did you mean {close[0]!r}?" if close else "remove it", severity=extra_severity,
            ))
    for item in spec.inputs:
        if item.name not in instance.inputs:
            if item.required:
                problems.append(ValidationError(
                    "missing_input", f"required input {item.name!r} is missing", node_id, spec.id,
                    item.name, expected=item.type,
                    hint=(f"link an output of type {item.type} to it" if item.widget is None
                          else f"give it a value of type {item.type}"),
                ))
            continue
        value = instance.inputs[item.name]
        if isinstance(value, Link):
            problems.extend(_link_problems(workflow, node_id, spec, item.name, item.type,
                                           item.widget is not None, value, registry))
        elif item.widget is None:
            problems.append(ValidationError(
                "not_linked", f"input {item.name!r} takes a link from a node's {item.type} output, "
                f"not a literal value", node_id, spec.id, item.name, expected=f"link to a {item.type} output",
                actual=repr(value), hint="write [source_node_id, output_name_or_index]",
                extra_info={"received_value": _jsonable(value)}))
        elif value is None and not item.required:
            continue
        else:
            problems.extend(_widget_problems(node_id, spec, item.name, item.widget, value))
    return problems


def _widget_problems(node_id: str, spec: NodeSpec, name: str, widget: Any, value: Any) -> list[ValidationError]:
    """The widget's own check, classified as ComfyUI classifies it."""
    try:
        problem = widget.check(value)
        if not problem:
            return []
        expected, hint = _describe_widget(widget), _widget_hint(widget, value)
        options = widget.options() if widget.type == COMBO else None
    except Exception as error:  # a choice list that failed to load (a folder scan, a plugin bug)
        return [ValidationError(
            "validation_exception", f"checking input {name!r} failed: {type(error).__name__}: {error}",
            node_id, spec.id, name, hint="the node's choices or checks raised; see the traceback",
            details=str(error), extra_info={
                "exception_message": str(error), "exception_type": type(error).__name__,
                "traceback": traceback.format_exception(type(error), error, error.__traceback__)})]
    kind, details = "invalid_input_type", f"{name}, {value!r}"
    low, high = getattr(widget, "min", None), getattr(widget, "max", None)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if options is not None and isinstance(value, str):
        kind = "value_not_in_list"
        details = f"{name}: {value!r} not in " + (f"(list of length {len(options)})" if len(options) > 20
                                                  else str(options))
    elif is_number and low is not None and value < low:
        kind, details = "value_smaller_than_min", name
    elif is_number and high is not None and value > high:
        kind, details = "value_bigger_than_max", name
    config: Any = None
    if options is None or len(options) <= 20:  # ComfyUI leaves out long lists (file scans)
        config = [options if options is not None else widget.type, widget.spec_options()]
    return [ValidationError("bad_value", problem, node_id, spec.id, name, expected=expected, actual=repr(value),
                            hint=hint, comfyui_type=kind, details=details,
                            extra_info={"input_config": _jsonable(config), "received_value": _jsonable(value)})]


def _jsonable(value: Any) -> Any:
    """``value`` when it is plain JSON data, else its repr (error bodies must serialise)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _link_problems(workflow: Workflow, node_id: str, spec: NodeSpec, name: str, expected_type: str,
                   is_widget: bool, link: Link, registry: NodeRegistry) -> list[ValidationError]:
    source = workflow.nodes.get(link.node_id)
    if source is None:
        return [ValidationError(
            "missing_node", f"input {name!r} links to node {link.node_id!r}, which does not exist",
            node_id, spec.id, name, actual=repr(link.to_json()),
            hint=f"existing nodes: {', '.join(sorted(workflow.nodes)[:20])}",
            extra_info={"linked_node": link.to_json(), "received_value": link.to_json()})]
    source_spec = registry.get(source.type)
    if source_spec is None:
        return []  # reported as unknown_type on the source node
    index = source_spec.output_index(link.output)
    if index is None:
        names = [f"{i}:{o.name} ({o.type})" for i, o in enumerate(source_spec.outputs)]
        return [ValidationError(
            "missing_output", f"node {link.node_id} ({source.type}) has no output {link.output!r}",
            node_id, spec.id, name, expected=", ".join(names) or "(it has no outputs)",
            actual=repr(link.output), hint="link to one of its outputs by name or index",
            extra_info={"linked_node": link.to_json(), "received_value": link.to_json()})]
    actual_type = source_spec.outputs[index].type
    if not _types_compatible(actual_type, expected_type, is_widget):
        return [ValidationError(
            "type_mismatch", f"input {name!r} expects {expected_type} but node {link.node_id} "
            f"({source.type}) output {source_spec.outputs[index].name!r} is {actual_type}",
            node_id, spec.id, name, expected=expected_type, actual=actual_type,
            hint=f"link an output of type {expected_type} instead",
            details=f"{name}, received_type({actual_type}) mismatch input_type({expected_type})",
            extra_info={"received_type": actual_type, "linked_node": link.to_json()})]
    return []


def _types_compatible(actual: str, expected: str, is_widget: bool) -> bool:
    if actual == expected or ANY in (actual, expected):
        return True
    if is_widget and expected == COMBO and actual in (STRING, COMBO):
        return True
    actual_set, expected_set = set(actual.split(",")), set(expected.split(","))
    return bool(actual_set & expected_set)


def _describe_widget(widget: Any) -> str:
    parts = [widget.type]
    if getattr(widget, "min", None) is not None:
        parts.append(f"min {widget.min}")
    if getattr(widget, "max", None) is not None:
        parts.append(f"max {widget.max}")
    if widget.type == COMBO:
        options = widget.options()
        parts.append("one of " + ", ".join(repr(o) for o in options[:8]) + (" ..." if len(options) > 8 else ""))
    return ", ".join(parts)


def _widget_hint(widget: Any, value: Any) -> str:
    if widget.type == COMBO:
        options = widget.options()
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.4)
        if close:
            return f"did you mean {close[0]!r}?"
        return "pick one of the listed choices" if options else "no choices are available: add files to the folder"
    low, high = getattr(widget, "min", None), getattr(widget, "max", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (low is not None or high is not None):
        if low is not None and value < low:
            return f"use a value >= {low}"
        if high is not None and value > high:
            return f"use a value <= {high}"
    return f"give a value of type {widget.type}"


def _cycle_problems(workflow: Workflow) -> list[ValidationError]:
    graph = nx.DiGraph()
    for node_id, instance in workflow.nodes.items():
        graph.add_node(node_id)
        for value in instance.inputs.values():
            if isinstance(value, Link) and value.node_id in workflow.nodes:
                graph.add_edge(value.node_id, node_id)
    problems = []
    for component in nx.strongly_connected_components(graph):
        if len(component) == 1:
            (only,) = component
            if not graph.has_edge(only, only):
                continue
        cycle = [edge[0] for edge in nx.find_cycle(graph.subgraph(component))]
        path = " -> ".join(cycle + [cycle[0]])
        problems.append(ValidationError(
            "cycle", f"nodes form a cycle: {path}", cycle[0], workflow.nodes[cycle[0]].type,
            actual=path, hint="a workflow must be acyclic: remove one of these links"))
    return problems


def _output_problems(workflow: Workflow, registry: NodeRegistry) -> list[ValidationError]:
    outputs = [n for n, i in workflow.nodes.items() if (s := registry.get(i.type)) and s.output_node]
    if not outputs:
        if not workflow.nodes:
            return [ValidationError("no_output", "the workflow has no nodes",
                                    hint="add nodes, including an output node such as SaveImage")]
        return [ValidationError("no_output", "the workflow has no output node, so running it would do nothing",
                                hint="add an output node (e.g. SaveImage or PreviewImage) and link it")]
    # Nodes that feed no output never run: worth a warning, not an error.
    feeding = workflow.upstream_of(outputs)
    return [ValidationError("unused_node", "this node feeds no output node and will not run", node_id,
                            workflow.nodes[node_id].type, hint="link it to an output or delete it",
                            severity="warning")
            for node_id in workflow.nodes if node_id not in feeding]
