"""Check a whole workflow before anything runs and report every problem at once.

Each :class:`ValidationError` names the node, the input, what was expected, what came
and how to fix it. The CLI prints them; the server returns them in its 400 response,
shaped as ComfyUI's (:func:`comfyui_error_body`): each problem also carries ComfyUI's
error type name (``value_not_in_list``, ``required_input_missing``, ...) so ComfyUI
clients and its frontend read our errors as their own.
"""

from __future__ import annotations

import difflib
import heapq
import math
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable, Literal, Mapping

import jsonschema
import networkx as nx

from engine.api import ANY, COMBO, STRING, Choice, NodeSpec
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
    "null_value": "invalid_input_type",
    "not_finite": "invalid_input_type",
}

# Per problem code, at most this many are reported one by one; the rest are counted
# (``ValidationReport.omitted``). Keeps validation linear and the 400 body bounded when a
# workflow has tens of thousands of broken nodes.
MAX_PROBLEMS_PER_CODE = 50

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
    # Problems counted but not listed, past MAX_PROBLEMS_PER_CODE: (severity, code, count).
    omitted: tuple[tuple[str, str, int], ...] = ()

    @property
    def omitted_errors(self) -> int:
        return sum(count for severity, _, count in self.omitted if severity == "error")

    @property
    def errors(self) -> list[ValidationError]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[ValidationError]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return self.workflow is not None and not self.errors and not self.omitted_errors

    def format(self) -> str:
        lines = [p.format() for p in self.problems]
        lines += [f"{severity}: ... and {count} more {code} problem{'s' * (count != 1)} (not listed)"
                  for severity, code, count in self.omitted]
        return "\n".join(lines)

    def node_errors(self) -> dict[str, list[dict[str, Any]]]:
        """Errors grouped per node id (the server's 400 response body)."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for problem in self.errors:
            grouped.setdefault(problem.node_id or "", []).append(problem.to_dict())
        return grouped


def validate_document(document: Any, registry: NodeRegistry) -> ValidationReport:
    """Validate a raw JSON document (our format or ComfyUI's API prompt)."""
    problems = _Problems()
    source_format = "latentflow"
    if looks_like_api_prompt(document):
        document = comfyui_prompt_to_document(_with_class_types(document))
        source_format = "comfyui-api"
    if not isinstance(document, dict):
        problems.add(ValidationError(
            "schema", f"a workflow must be a JSON object, got {type(document).__name__}",
            hint='write {"version": 1, "nodes": {...}} or a ComfyUI API prompt'))
        return problems.report(None)
    _schema_problems(document, problems)
    workflow = document_to_workflow(document, source_format)
    return validate_workflow(workflow, registry, problems)


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


def _schema_problems(document: Mapping[str, Any], problems: "_Problems") -> None:
    """The schema's verdict. Nodes are checked first by a direct test of the same rules
    (microseconds each); only the nodes it does not pass, at most MAX_PROBLEMS_PER_CODE of
    them, go through jsonschema for its messages (which costs ~70 us a node)."""
    validator = _schema_validator()
    nodes = document.get("nodes")
    subject: Mapping[str, Any] = document
    if isinstance(nodes, dict):
        failing = [node_id for node_id, entry in nodes.items() if not _node_conforms(node_id, entry)]
        subject = {**document, "nodes": {n: nodes[n] for n in failing[:MAX_PROBLEMS_PER_CODE]}}
        if len(failing) > MAX_PROBLEMS_PER_CODE:
            problems.omit("error", "schema", len(failing) - MAX_PROBLEMS_PER_CODE)
    for error in sorted(validator.iter_errors(subject), key=lambda e: list(map(str, e.absolute_path))):
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
        problems.add(ValidationError(
            "schema", f"{location}: {error.message}", node_id=node_id, input=input_name, hint=hint))


_NODE_KEYS = frozenset({"type", "inputs", "ui"})


def _node_conforms(node_id: str, entry: Any) -> bool:
    """True only when ``entry`` certainly satisfies ``$defs/node`` of the schema (and its id
    the ``propertyNames`` rule); anything unusual is left to jsonschema."""
    if not 1 <= len(node_id) <= 128 or not isinstance(entry, dict) or not entry.keys() <= _NODE_KEYS:
        return False
    kind = entry.get("type")
    if not isinstance(kind, str) or not kind:
        return False
    if "ui" in entry and not isinstance(entry["ui"], dict):
        return False
    inputs = entry.get("inputs", {})
    if not isinstance(inputs, dict):
        return False
    for value in inputs.values():
        if value is None or isinstance(value, (str, int, float, bool)):
            continue
        if isinstance(value, list):
            if len(value) == 2 and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
                continue
            return False
        if isinstance(value, dict) and value.keys() == {"value"}:
            continue
        return False
    return True


class _Problems:
    """Collects problems, listing at most MAX_PROBLEMS_PER_CODE of each (severity, code) and
    counting the rest; remembers which nodes have errors."""

    def __init__(self) -> None:
        self.listed: list[ValidationError] = []
        self.counts: dict[tuple[str, str], int] = {}
        self.extra: dict[tuple[str, str], int] = {}
        self.nodes_with_errors: set[str] = set()

    def full(self, code: str, severity: str = "error") -> bool:
        """True when a further problem of this kind would only be counted (skip building it)."""
        return self.counts.get((severity, code), 0) >= MAX_PROBLEMS_PER_CODE

    def add(self, problem: ValidationError) -> None:
        key = (problem.severity, problem.code)
        if problem.severity == "error" and problem.node_id is not None:
            self.nodes_with_errors.add(problem.node_id)
        count = self.counts.get(key, 0)
        self.counts[key] = count + 1
        if count < MAX_PROBLEMS_PER_CODE:
            self.listed.append(problem)

    def omit(self, severity: str, code: str, count: int, node_id: str | None = None) -> None:
        """Count ``count`` problems of a kind without building them (for a full kind)."""
        self.extra[(severity, code)] = self.extra.get((severity, code), 0) + count
        if severity == "error" and node_id is not None:
            self.nodes_with_errors.add(node_id)

    def extend(self, problems: list[ValidationError]) -> None:
        for problem in problems:
            self.add(problem)

    def report(self, workflow: Workflow | None, outputs: tuple[str, ...] = ()) -> ValidationReport:
        omitted: dict[tuple[str, str], int] = dict(self.extra)
        for key, count in self.counts.items():
            if count > MAX_PROBLEMS_PER_CODE:
                omitted[key] = omitted.get(key, 0) + count - MAX_PROBLEMS_PER_CODE
        return ValidationReport(workflow, tuple(self.listed), outputs,
                                tuple((severity, code, count) for (severity, code), count in omitted.items()))


def validate_workflow(workflow: Workflow, registry: NodeRegistry,
                      problems: "_Problems | None" = None) -> ValidationReport:
    """Every problem of ``workflow``, in time linear in its size (nodes + links)."""
    problems = problems if problems is not None else _Problems()
    known_types = registry.ids()
    context = _Context(workflow, registry)
    suggestions: dict[str, str] = {}  # unknown type -> its hint, computed once per name
    for node_id, instance in workflow.nodes.items():
        spec = registry.get(instance.type)
        if instance.type == MISSING_CLASS_TYPE:
            problems.add(_missing_class_type(node_id, instance.ui.get("title")))
            continue
        if spec is None:
            if problems.full("unknown_type"):
                problems.omit("error", "unknown_type", 1, node_id)
                continue
            if instance.type not in suggestions:
                suggestions[instance.type] = _type_hint(instance.type, known_types)
            title = instance.ui.get("title")
            problems.add(ValidationError(
                "unknown_type", f"unknown node type {instance.type!r}", node_id, instance.type,
                actual=instance.type, hint=suggestions[instance.type],
                details=f"Node ID '#{node_id}'",
                extra_info={"node_id": node_id, "class_type": instance.type, "node_title": title or instance.type},
            ))
            continue
        _input_problems(context, node_id, spec, problems)
    order, cyclic = _topological_order(workflow)
    problems.extend(_cycle_problems(workflow, cyclic))
    _output_problems(workflow, registry, problems)
    _node_checks(context, order, problems)
    outputs = tuple(n for n, i in workflow.nodes.items() if (s := registry.get(i.type)) and s.output_node)
    return problems.report(workflow, outputs)


def _type_hint(node_type: str, known_types: list[str]) -> str:
    close = difflib.get_close_matches(node_type, known_types, n=3, cutoff=0.5)
    lowered = {t.lower(): t for t in known_types}
    if node_type.lower() in lowered and lowered[node_type.lower()] not in close:
        close.insert(0, lowered[node_type.lower()])
    return (f"did you mean {', '.join(repr(c) for c in close)}?" if close else
            "run `python main.py nodes` for the catalogue, or install the plugin that provides it")


class _Context:
    """What one validation computes once and every node reuses: the first node ids (for
    hints) and the options of choice lists computed on demand (a folder scan per node
    would make validation quadratic in practice)."""

    def __init__(self, workflow: Workflow, registry: NodeRegistry) -> None:
        self.workflow, self.registry = workflow, registry
        self._first_ids: str | None = None
        self._frozen: dict[int, tuple[Any, BaseException | None, Any]] = {}

    def first_ids(self) -> str:
        if self._first_ids is None:
            self._first_ids = ", ".join(heapq.nsmallest(20, self.workflow.nodes))
        return self._first_ids

    def widget(self, widget: Any) -> Any:
        """``widget`` with a callable choice list evaluated once for this validation."""
        if not isinstance(widget, Choice) or not callable(widget.choices):
            return widget
        key = id(widget)
        if key not in self._frozen:
            try:
                self._frozen[key] = (replace(widget, choices=tuple(widget.options())), None, None)
            except Exception as error:  # reported per node by _widget_problems
                self._frozen[key] = (widget, error, error.__traceback__)
        frozen, error, trace = self._frozen[key]
        if error is not None:
            raise error.with_traceback(trace)
        return frozen


def _missing_class_type(node_id: str, title: Any) -> ValidationError:
    name = f"{title!r} (#{node_id})" if title else f"#{node_id}"
    return ValidationError(
        "missing_class_type", f"node {name} has no class_type, so there is no node type to run it",
        node_id, None, hint="the editor that sent it did not know this node type: install the node pack "
        "that provides it, or remove the node", details=f"Node ID '#{node_id}'",
        extra_info={"node_id": node_id, "class_type": None, "node_title": str(title) if title else None})


def _input_problems(context: _Context, node_id: str, spec: NodeSpec, problems: _Problems) -> None:
    workflow = context.workflow
    instance = workflow.nodes[node_id]
    declared = {i.name for i in spec.inputs}
    # ComfyUI ignores inputs a node does not declare; for its prompts that is a warning.
    extra_severity: Literal["error", "warning"] = "warning" if workflow.source_format == "comfyui-api" else "error"
    for name in instance.inputs:
        if name not in declared:
            if problems.full("unknown_input", extra_severity):
                problems.omit(extra_severity, "unknown_input", 1, node_id)
                continue
            close = difflib.get_close_matches(name, sorted(declared), n=1)
            problems.add(ValidationError(
                "unknown_input", f"{spec.id} has no input {name!r}", node_id, spec.id, name,
                expected=", ".join(sorted(declared)) or "(no inputs)", actual=name,
                hint=f"did you mean {close[0]!r}?" if close else "remove it", severity=extra_severity,
            ))
    for item in spec.inputs:
        if item.name not in instance.inputs:
            if item.required:
                problems.add(ValidationError(
                    "missing_input", f"required input {item.name!r} is missing", node_id, spec.id,
                    item.name, expected=item.type,
                    hint=(f"link an output of type {item.type} to it" if item.widget is None
                          else f"give it a value of type {item.type}"),
                ))
            continue
        value = instance.inputs[item.name]
        if isinstance(value, Link):
            problems.extend(_link_problems(context, node_id, spec, item.name, item.type,
                                           item.widget is not None, value))
        elif item.widget is None:
            problems.add(ValidationError(
                "not_linked", f"input {item.name!r} takes a link from a node's {item.type} output, "
                f"not a literal value", node_id, spec.id, item.name, expected=f"link to a {item.type} output",
                actual=repr(value), hint="write [source_node_id, output_name_or_index]",
                extra_info={"received_value": _jsonable(value)}))
        elif value is None:
            if not item.widget.optional:
                problems.add(_null_problem(node_id, spec, item.name, item.type, item.default))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.add(_not_finite_problem(node_id, spec, item.name, item.type, value))
        elif problems.full("bad_value"):
            try:  # past the listing cap: only whether it is wrong matters
                if context.widget(item.widget).check(value):
                    problems.omit("error", "bad_value", 1, node_id)
            except Exception:
                problems.omit("error", "validation_exception", 1, node_id)
        else:
            problems.extend(_widget_problems(node_id, spec, item.name, item.widget, value, context))


def _null_problem(node_id: str, spec: NodeSpec, name: str, kind: str, default: Any) -> ValidationError:
    # ComfyUI's own nodes fail on null at run time (a TypeError deep in the node); say it here.
    fix = (f"give a {kind} value or leave the input out to use its default {default!r}" if default is not None
           else f"give a {kind} value")
    return ValidationError(
        "null_value", f"input {name!r} is null; this input needs a value", node_id, spec.id, name,
        expected=kind, actual="null", hint=fix, details=f"{name}, None",
        extra_info={"received_value": None})


def _not_finite_problem(node_id: str, spec: NodeSpec, name: str, kind: str, value: float) -> ValidationError:
    shown = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return ValidationError(
        "not_finite", f"input {name!r} is {shown}, which no node can compute with", node_id, spec.id, name,
        expected=f"a finite {kind}", actual=shown, hint="give a finite number",
        details=f"{name}, {shown}", extra_info={"received_value": shown})


def _widget_problems(node_id: str, spec: NodeSpec, name: str, widget: Any, value: Any,
                     context: _Context | None = None) -> list[ValidationError]:
    """The widget's own check, classified as ComfyUI classifies it."""
    try:
        if context is not None:
            widget = context.widget(widget)
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


def _link_problems(context: _Context, node_id: str, spec: NodeSpec, name: str, expected_type: str,
                   is_widget: bool, link: Link) -> list[ValidationError]:
    workflow, registry = context.workflow, context.registry
    source = workflow.nodes.get(link.node_id)
    if source is None:
        return [ValidationError(
            "missing_node", f"input {name!r} links to node {link.node_id!r}, which does not exist",
            node_id, spec.id, name, actual=repr(link.to_json()),
            hint=f"link an existing node instead (the first ids: {context.first_ids()})",
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


def _topological_order(workflow: Workflow) -> tuple[list[str], set[str]]:
    """Kahn's order of the nodes (links to missing nodes ignored) and the nodes it cannot
    order: those on a cycle or downstream of one. Linear in nodes + links."""
    consumers: dict[str, list[str]] = {}
    waiting: dict[str, int] = {}
    for node_id, instance in workflow.nodes.items():
        sources = [v.node_id for v in instance.inputs.values() if isinstance(v, Link) and v.node_id in workflow.nodes]
        waiting[node_id] = len(sources)
        for source in sources:
            consumers.setdefault(source, []).append(node_id)
    ready = deque(n for n, count in waiting.items() if count == 0)
    order: list[str] = []
    while ready:
        node_id = ready.popleft()
        order.append(node_id)
        for consumer in consumers.get(node_id, ()):
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                ready.append(consumer)
    return order, set(workflow.nodes) - set(order)


def _cycle_problems(workflow: Workflow, unordered: set[str]) -> list[ValidationError]:
    """One problem per cycle; only the nodes Kahn's sort left over need networkx."""
    if not unordered:
        return []
    graph = nx.DiGraph()
    for node_id in (n for n in workflow.nodes if n in unordered):  # document order: stable messages
        graph.add_node(node_id)
        for value in workflow.nodes[node_id].inputs.values():
            if isinstance(value, Link) and value.node_id in unordered:
                graph.add_edge(value.node_id, node_id)
    problems = []
    for component in nx.strongly_connected_components(graph):
        if len(component) == 1:
            (only,) = component
            if not graph.has_edge(only, only):
                continue
        if len(problems) >= MAX_PROBLEMS_PER_CODE:
            break
        cycle = [edge[0] for edge in nx.find_cycle(graph.subgraph(component))]
        path = " -> ".join(cycle + [cycle[0]])
        problems.append(ValidationError(
            "cycle", f"nodes form a cycle: {path}", cycle[0], workflow.nodes[cycle[0]].type,
            actual=path, hint="a workflow must be acyclic: remove one of these links"))
    return problems


def _output_problems(workflow: Workflow, registry: NodeRegistry, problems: _Problems) -> None:
    outputs = [n for n, i in workflow.nodes.items() if (s := registry.get(i.type)) and s.output_node]
    if not outputs:
        if not workflow.nodes:
            problems.add(ValidationError("no_output", "the workflow has no nodes",
                                         hint="add nodes, including an output node such as SaveImage"))
            return
        problems.add(ValidationError(
            "no_output", "the workflow has no output node, so running it would do nothing",
            hint="add an output node (e.g. SaveImage or PreviewImage) and link it"))
        return
    # Nodes that feed no output never run: worth a warning, not an error.
    feeding = workflow.upstream_of(outputs)
    for node_id in workflow.nodes:
        if node_id in feeding:
            continue
        if problems.full("unused_node", "warning"):
            problems.omit("warning", "unused_node", 1)
            continue
        problems.add(ValidationError("unused_node", "this node feeds no output node and will not run", node_id,
                                     workflow.nodes[node_id].type, hint="link it to an output or delete it",
                                     severity="warning"))


# --------------------------------------------------------------------------- node checks


@dataclass(frozen=True)
class CheckInput:
    """What a node's ``check`` sees: its literal widget values (declared defaults filled in for
    inputs left out) and, per linked input, the estimate the source node's check returned
    (absent when the source has no check or could not tell)."""

    node_id: str
    node_type: str
    values: Mapping[str, Any]
    upstream: Mapping[str, Any]


@dataclass(frozen=True)
class CheckProblem:
    """One refusal from a node check; ``message`` says what and how much, ``hint`` the fix."""

    message: str
    hint: str
    input: str | None = None
    expected: str | None = None
    actual: str | None = None
    code: Literal["resource_limit", "bad_value"] = "resource_limit"


@dataclass(frozen=True)
class CheckResult:
    """``estimate`` flows to the nodes that read this node's outputs (e.g. an image size)."""

    estimate: Any = None
    problems: tuple[CheckProblem, ...] = ()


NodeCheck = Callable[[CheckInput], CheckResult]


def _node_checks(context: _Context, order: list[str], problems: _Problems) -> None:
    """Run each node's ``check`` (NodeSpec.check) in topological order, feeding it its
    sources' estimates. A node with errors of its own is not checked (its values may be
    anything) and passes no estimate on."""
    workflow, registry = context.workflow, context.registry
    estimates: dict[str, Any] = {}
    for node_id in order:
        instance = workflow.nodes[node_id]
        spec = registry.get(instance.type)
        check = getattr(spec, "check", None) if spec is not None else None
        if check is None or node_id in problems.nodes_with_errors:
            continue
        values: dict[str, Any] = {}
        upstream: dict[str, Any] = {}
        for item in spec.inputs:
            value = instance.inputs.get(item.name, item.default)
            if isinstance(value, Link):
                if value.node_id in estimates:
                    upstream[item.name] = estimates[value.node_id]
            elif item.widget is not None:
                values[item.name] = value
        try:
            result = check(CheckInput(node_id, instance.type, values, upstream))
        except Exception as error:  # a check must not take validation down: report it on the node
            problems.add(ValidationError(
                "validation_exception", f"the node's resource check raised {type(error).__name__}: {error}",
                node_id, instance.type, hint="this is a bug in the node pack; report it with the workflow",
                details=str(error), extra_info={"exception_message": str(error),
                                                "exception_type": type(error).__name__}))
            continue
        if result.estimate is not None:  # passed on even when refused: each pass below says what it needs
            estimates[node_id] = result.estimate
        for found in result.problems:
            problems.add(ValidationError(
                found.code, found.message, node_id, instance.type, found.input, expected=found.expected,
                actual=found.actual, hint=found.hint,
                comfyui_type="value_bigger_than_max" if found.code == "resource_limit" else None,
                details=found.input or ""))
