from engine.validation import validate_document
from tests.engine.graph_nodes import chain_document, make_registry


def codes(report):
    return sorted((p.code, p.node_id, p.input) for p in report.errors)


def test_valid_chain_has_no_problems():
    registry, _ = make_registry()
    report = validate_document(chain_document(5), registry)
    assert report.ok and report.problems == ()


def test_every_problem_is_reported_at_once():
    registry, _ = make_registry()
    document = {"version": 1, "nodes": {
        "1": {"type": "Const", "inputs": {"value": "three"}},              # wrong type
        "2": {"type": "Scale", "inputs": {"x": ["1", "value"], "factor": 11}},  # out of range
        "3": {"type": "Add", "inputs": {"a": ["9", 0]}},                    # missing node + missing input b
        "4": {"type": "Label", "inputs": {"x": ["2", "nope"], "style": "bold"}},  # missing output, bad choice
        "5": {"type": "Scael", "inputs": {}},                               # unknown type
        "6": {"type": "Scale", "inputs": {"x": ["4", "text"]}},             # STRING into FLOAT
        "7": {"type": "Output", "inputs": {"value": ["6", 0]}},
        "8": {"type": "Const", "inputs": {"valeu": 1}},                     # unknown input name
    }}
    report = validate_document(document, registry)
    assert codes(report) == [
        ("bad_value", "1", "value"),
        ("bad_value", "2", "factor"),
        ("bad_value", "4", "style"),
        ("missing_input", "3", "b"),
        ("missing_node", "3", "a"),
        ("missing_output", "4", "x"),
        ("type_mismatch", "6", "x"),
        ("unknown_input", "8", "valeu"),
        ("unknown_type", "5", None),
    ]
    by_code = {p.code: p for p in report.errors}
    assert by_code["unknown_type"].hint.startswith("did you mean 'Scale'")
    assert by_code["type_mismatch"].expected == "FLOAT" and by_code["type_mismatch"].actual == "STRING"
    assert "0:x (FLOAT)" in by_code["missing_output"].expected
    assert by_code["unknown_input"].hint == "did you mean 'value'?"
    factor = next(p for p in report.errors if p.input == "factor")
    assert factor.actual == "11" and factor.hint == "use a value <= 10" and "max 10" in factor.expected
    assert all(p.hint for p in report.errors)
    # unused node 3 / 8 / 5 produce warnings, not errors
    assert {w.node_id for w in report.warnings} == {"3", "5", "8"}


def test_cycle_names_the_nodes_on_it():
    registry, _ = make_registry()
    document = {"version": 1, "nodes": {
        "1": {"type": "Const", "inputs": {"value": 1}},
        "2": {"type": "Add", "inputs": {"a": ["1", 0], "b": ["4", 0]}},
        "3": {"type": "Scale", "inputs": {"x": ["2", 0]}},
        "4": {"type": "Scale", "inputs": {"x": ["3", 0]}},
        "5": {"type": "Output", "inputs": {"value": ["4", 0]}},
    }}
    report = validate_document(document, registry)
    (cycle,) = [p for p in report.errors if p.code == "cycle"]
    assert cycle.message == "nodes form a cycle: 2 -> 3 -> 4 -> 2"


def test_no_output_node():
    registry, _ = make_registry()
    report = validate_document({"version": 1, "nodes": {"1": {"type": "Const", "inputs": {}}}}, registry)
    assert [p.code for p in report.errors] == ["no_output"]
    assert "SaveImage" in report.errors[0].hint


def test_schema_errors_point_at_the_input():
    registry, _ = make_registry()
    document = chain_document(3)
    document["nodes"]["2"]["inputs"]["factor"] = [1, 2, 3]
    document["version"] = 7
    report = validate_document(document, registry)
    schema = [p for p in report.errors if p.code == "schema"]
    assert any(p.node_id == "2" and p.input == "factor" and '{"value"' in p.hint for p in schema)
    assert any(p.hint == 'set "version": 1' for p in schema)


def test_comfyui_api_prompt_shape_is_accepted():
    registry, _ = make_registry()
    prompt = {
        "3": {"class_type": "Const", "inputs": {"value": 2.5}, "_meta": {"title": "two and a half"}},
        "4": {"class_type": "Split", "inputs": {"x": ["3", 0]}},
        "9": {"class_type": "Output", "inputs": {"value": ["4", 1]}},
    }
    report = validate_document(prompt, registry)
    assert report.ok, report.format()
    assert report.workflow.source_format == "comfyui-api"
    assert report.workflow.nodes["3"].ui == {"title": "two and a half"}
    bad = dict(prompt, **{"9": {"class_type": "Output", "inputs": {"value": ["4", 5]}}})
    assert [p.code for p in validate_document(bad, registry).errors] == ["missing_output"]


def test_errors_serialise_for_the_server():
    registry, _ = make_registry()
    document = chain_document(3)
    document["nodes"]["1"]["inputs"]["value"] = "x"
    report = validate_document(document, registry)
    grouped = report.node_errors()
    assert list(grouped) == ["1"]
    assert grouped["1"][0]["code"] == "bad_value" and grouped["1"][0]["input"] == "value"
    assert "node 1 (Const) / input 'value'" in report.format()


def test_malformed_structures_are_schema_errors_not_crashes():
    registry, _ = make_registry()
    for document in ({"version": 1, "nodes": [1, 2]},
                     {"version": 1, "nodes": {"1": {"type": "Const", "inputs": [1]}}, "ui": 3},
                     {"version": 1, "nodes": {"1": "x"}},
                     {"1": {"class_type": "Const", "inputs": [3]}}):
        report = validate_document(document, registry)
        assert not report.ok and any(p.code == "schema" for p in report.errors), document
