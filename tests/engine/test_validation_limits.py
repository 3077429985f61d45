"""Validation refuses null / NaN / Infinity widget values, runs node checks with estimates that
flow along links, and stays linear (and its error body bounded) on huge workflows."""

import json
import time
from dataclasses import replace

from engine.api import Float, Int, Out, node
from engine.prompt_errors import comfyui_error_body
from engine.registry import NodeRegistry
from engine.validation import (
    MAX_PROBLEMS_PER_CODE, CheckInput, CheckProblem, CheckResult, validate_document, validate_workflow,
)
from engine.workflow import document_to_workflow
from tests.engine.graph_nodes import make_registry


def test_null_for_a_widget_with_a_default_is_refused_with_the_fix():
    registry, _ = make_registry()
    document = {"version": 1, "nodes": {
        "1": {"type": "Const", "inputs": {"value": None}},
        "2": {"type": "Output", "inputs": {"value": ["1", 0]}},
    }}
    report = validate_document(document, registry)
    (problem,) = report.errors
    assert (problem.code, problem.node_id, problem.input, problem.actual) == ("null_value", "1", "value", "null")
    assert "leave the input out to use its default 0.0" in problem.hint
    assert problem.error_type == "invalid_input_type"


def test_null_is_accepted_for_an_explicitly_optional_widget():
    registry = NodeRegistry()

    @node("Opt", category="test", output=True)
    def opt(count: Int(optional=True) = None) -> None:
        return None

    registry.register(opt, "test")
    report = validate_document({"version": 1, "nodes": {"1": {"type": "Opt", "inputs": {"count": None}}}}, registry)
    assert report.ok, report.format()


def test_nan_and_infinity_from_python_callers_are_refused():
    """JSON parsing refuses NaN already; a Python caller (or --set) can still pass one."""
    registry, _ = make_registry()
    for value, shown in ((float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")):
        document = {"version": 1, "nodes": {
            "1": {"type": "Const", "inputs": {"value": value}},  # Const has no max: inf passed before
            "2": {"type": "Output", "inputs": {"value": ["1", 0]}},
        }}
        (problem,) = validate_document(document, registry).errors
        assert (problem.code, problem.input, problem.actual) == ("not_finite", "value", shown)
        assert json.dumps(comfyui_error_body(validate_document(document, registry)), allow_nan=False)


def _registry_with_checks():
    """A source of sizes, a doubler and a consumer whose check refuses big sizes."""
    registry = NodeRegistry()

    @node("Make", category="test")
    def make(size: Int(min=1, max=10**9) = 8) -> Out(thing="THING"):
        return size

    @node("Double", category="test")
    def double(thing: "THING") -> Out(thing="THING"):
        return thing * 2

    @node("Use", category="test", output=True)
    def use(thing: "THING", scale: Float(min=0, max=10) = 1.0) -> None:
        return None

    seen: list[CheckInput] = []

    def make_check(node_in: CheckInput) -> CheckResult:
        seen.append(node_in)
        return CheckResult(estimate=node_in.values["size"])

    def double_check(node_in: CheckInput) -> CheckResult:
        seen.append(node_in)
        below = node_in.upstream.get("thing")
        return CheckResult(estimate=None if below is None else below * 2)

    def use_check(node_in: CheckInput) -> CheckResult:
        seen.append(node_in)
        size = node_in.upstream.get("thing")
        if size is not None and size * node_in.values["scale"] > 100:
            return CheckResult(problems=(CheckProblem(f"{size} is too big (limit 100)", hint="make less",
                                                      input="thing", actual=str(size), expected="at most 100"),))
        return CheckResult()

    for spec, check in ((make, make_check), (double, double_check), (use, use_check)):
        registry.register(replace(spec, check=check), "test")
    return registry, seen


def test_node_checks_see_literals_and_upstream_estimates_and_can_refuse():
    registry, seen = _registry_with_checks()
    document = {"version": 1, "nodes": {
        "1": {"type": "Make", "inputs": {"size": 60}},
        "2": {"type": "Double", "inputs": {"thing": ["1", 0]}},
        "3": {"type": "Use", "inputs": {"thing": ["2", 0]}},  # scale left out: default 1.0 given
    }}
    report = validate_document(document, registry)
    (problem,) = report.errors
    assert (problem.code, problem.node_id, problem.input) == ("resource_limit", "3", "thing")
    assert problem.message == "120 is too big (limit 100)" and problem.hint == "make less"
    assert [c.node_id for c in seen] == ["1", "2", "3"]  # topological order
    assert seen[2].values == {"scale": 1.0} and seen[2].upstream == {"thing": 120}
    small = json.loads(json.dumps(document))
    small["nodes"]["1"]["inputs"]["size"] = 20
    assert validate_document(small, registry).ok


def test_a_node_with_its_own_errors_is_not_checked_and_a_raising_check_is_reported():
    registry, seen = _registry_with_checks()
    document = {"version": 1, "nodes": {
        "1": {"type": "Make", "inputs": {"size": "many"}},
        "2": {"type": "Use", "inputs": {"thing": ["1", 0]}},
    }}
    report = validate_document(document, registry)
    assert [p.code for p in report.errors] == ["bad_value"]
    assert [c.node_id for c in seen] == ["2"] and seen[0].upstream == {}

    def broken(node_in: CheckInput) -> CheckResult:
        raise ZeroDivisionError("oops")

    registry2 = NodeRegistry()
    for spec in registry.specs():
        registry2.register(replace(spec, check=broken) if spec.id == "Make" else spec, "test")
    report = validate_document({"version": 1, "nodes": {
        "1": {"type": "Make", "inputs": {"size": 3}}, "2": {"type": "Use", "inputs": {"thing": ["1", 0]}}}},
        registry2)
    (problem,) = report.errors
    assert problem.code == "validation_exception" and "ZeroDivisionError: oops" in problem.message


def broken_document(count: int) -> dict:
    """``count`` nodes: every other one links to a node that does not exist, the rest are outputs."""
    nodes = {}
    for i in range(count):
        if i % 2:
            nodes[str(i)] = {"type": "Scale", "inputs": {"x": [f"missing{i}", 0]}}
        else:
            nodes[str(i)] = {"type": "Output", "inputs": {"value": [str(i - 1) if i else "none", 0]}}
    return {"version": 1, "nodes": nodes}


def test_50k_nodes_with_25k_broken_links_validate_in_well_under_a_second():
    """Was quadratic: 10k nodes 6.1 s, 50k no answer (a sort of every node id per broken link,
    a walk per output node for dependent_outputs, jsonschema over every node)."""
    registry, _ = make_registry()
    document = broken_document(50_000)
    validate_document(broken_document(100), registry)  # warm the schema validator
    # CPU time of this process: other processes sharing the cores do not count against it.
    started = time.process_time()
    report = validate_document(document, registry)
    body = comfyui_error_body(report)
    seconds = time.process_time() - started
    assert seconds < 1.5, f"validating 50k nodes took {seconds:.2f} s of CPU"
    missing = [p for p in report.errors if p.code == "missing_node"]
    assert len(missing) == MAX_PROBLEMS_PER_CODE
    assert ("error", "missing_node", 25_001 - MAX_PROBLEMS_PER_CODE) in report.omitted
    assert not report.ok
    text = json.dumps(body)
    assert len(text) < 200_000, f"error body of {len(text)} bytes"
    assert "25001 problems" in body["error"]["message"] and "not listed" in body["error"]["message"]
    assert {"severity": "error", "code": "missing_node", "count": 25_001 - MAX_PROBLEMS_PER_CODE} in \
        body["error"]["omitted"]
    # dependent outputs still name the output each broken node feeds
    assert body["node_errors"]["0"]["dependent_outputs"] == ["0"]  # an output depends on itself
    assert body["node_errors"]["1"]["dependent_outputs"] == ["2"]


def test_schema_problems_are_capped_and_counted():
    registry, _ = make_registry()
    nodes = {str(i): {"type": "Const", "inputs": {"value": 1}, "colour": "red"} for i in range(500)}
    nodes["out"] = {"type": "Output", "inputs": {"value": ["0", 0]}}
    report = validate_document({"version": 1, "nodes": nodes}, registry)
    schema = [p for p in report.errors if p.code == "schema"]
    assert len(schema) == MAX_PROBLEMS_PER_CODE and "colour" in schema[0].message
    assert ("error", "schema", 500 - MAX_PROBLEMS_PER_CODE) in report.omitted


def test_validation_time_grows_linearly():
    """Doubling the workflow at most ~triples the time (a quadratic one quadruples it)."""
    registry, _ = make_registry()
    small, large = broken_document(10_000), broken_document(40_000)
    workflow_small = document_to_workflow(small)
    workflow_large = document_to_workflow(large)
    validate_workflow(workflow_small, registry)

    def best(workflow) -> float:
        times = []
        for _ in range(3):
            started = time.process_time()
            validate_workflow(workflow, registry)
            times.append(time.process_time() - started)
        return min(times)

    ratio = best(workflow_large) / best(workflow_small)
    assert ratio < 8, f"4x the nodes took {ratio:.1f}x the time"
