import threading

from engine.api import Cancelled, Out, node
from engine.cache import ResultCache
from engine.registry import NodeRegistry
from engine.scheduler import Executor
from engine.validation import validate_document
from tests.engine.graph_nodes import chain_document, make_registry, validated


def diamond():
    return {"version": 1, "nodes": {
        "1": {"type": "Const", "inputs": {"value": 2}},
        "2": {"type": "Scale", "inputs": {"x": ["1", 0], "factor": 3}},
        "3": {"type": "Split", "inputs": {"x": ["2", 0]}},
        "4": {"type": "Add", "inputs": {"a": ["3", "low"], "b": ["2", "x"]}},
        "5": {"type": "Output", "inputs": {"value": ["4", "sum"]}},
        "6": {"type": "Output", "inputs": {"value": ["3", "high"]}},
    }}


def test_run_computes_values_and_ui():
    registry, calls = make_registry()
    result = Executor(registry).run(validated(diamond(), registry))
    assert result.status == "success"
    assert result.outputs["5"] == {"text": ["11.0"]} and result.outputs["6"] == {"text": ["7"]}
    assert sorted(result.executed) == ["1", "2", "3", "4", "5", "6"] and result.cached == ()


def test_identical_rerun_executes_nothing():
    registry, calls = make_registry()
    executor = Executor(registry)
    workflow = validated(diamond(), registry)
    executor.run(workflow)
    before = sum(calls.values())
    events = []
    result = executor.run(workflow, on_event=events.append)
    assert result.executed == () and sorted(result.cached) == ["1", "2", "3", "4", "5", "6"]
    assert sum(calls.values()) == before
    assert result.outputs["5"] == {"text": ["11.0"]}  # output UI comes back from the cache
    assert [e.type for e in events] == ["run_started"] + ["node_cached"] * 6 + ["run_finished"]
    assert [e.data.get("ui") for e in events if e.node_id == "5"] == [{"text": ["11.0"]}]


def test_changing_a_downstream_literal_reruns_only_downstream():
    registry, calls = make_registry()
    executor = Executor(registry)
    document = chain_document(6)
    executor.run(validated(document, registry))
    document["nodes"]["4"]["inputs"]["factor"] = 2.0
    result = executor.run(validated(document, registry))
    assert result.executed == ("4", "5", "6")
    assert result.cached == ("1", "2", "3")  # unchanged; only node 3's value was read
    assert result.outputs["6"] == {"text": ["2.0"]}


def test_version_is_part_of_the_key():
    registry, _ = make_registry()
    other = NodeRegistry()
    for spec in registry.specs():
        other.register(spec.with_id(spec.id) if spec.id != "Scale" else
                       __import__("dataclasses").replace(spec, version=3), "test")
    workflow = validated(chain_document(3), registry)
    assert Executor(registry).cache_keys(workflow)["2"] != Executor(other).cache_keys(workflow)["2"]
    assert Executor(registry).cache_keys(workflow)["1"] == Executor(other).cache_keys(workflow)["1"]


def test_identical_subgraphs_run_once():
    registry, calls = make_registry()
    document = {"version": 1, "nodes": {
        "a1": {"type": "Const", "inputs": {"value": 5}},
        "a2": {"type": "Scale", "inputs": {"x": ["a1", 0], "factor": 2}},
        "b1": {"type": "Const", "inputs": {"value": 5}},
        "b2": {"type": "Scale", "inputs": {"x": ["b1", 0], "factor": 2}},
        "sum": {"type": "Add", "inputs": {"a": ["a2", 0], "b": ["b2", 0]}},
        "out": {"type": "Output", "inputs": {"value": ["sum", 0]}},
    }}
    result = Executor(registry).run(validated(document, registry))
    assert calls["Const"] == 1 and calls["Scale"] == 1
    assert result.outputs["out"] == {"text": ["20.0"]}


def test_impure_nodes_always_run_and_fingerprints_decide():
    registry, calls = make_registry()
    executor = Executor(registry)
    impure = {"version": 1, "nodes": {
        "1": {"type": "Random", "inputs": {}},
        "2": {"type": "Output", "inputs": {"value": ["1", 0]}},
        "3": {"type": "FileValue", "inputs": {"path": "f"}},
        "4": {"type": "Output", "inputs": {"value": ["3", 0]}},
    }}
    workflow = validated(impure, registry)
    first = executor.run(workflow)
    second = executor.run(workflow)
    assert calls["Random"] == 2
    assert first.outputs["2"] != second.outputs["2"]  # downstream of an impure node re-runs too
    assert calls["FileValue"] == 1  # fingerprint unchanged
    registry.state["version"] = "bbb"
    third = executor.run(workflow)
    assert calls["FileValue"] == 2 and third.outputs["4"] == {"text": ["3.0"]}


def test_failing_node_fails_its_run_only():
    registry, calls = make_registry()
    executor = Executor(registry)
    document = chain_document(3)
    document["nodes"]["2"] = {"type": "Fail", "inputs": {"x": ["1", 0], "message": "bad thing"}}
    events = []
    result = executor.run(validated(document, registry), on_event=events.append)
    assert result.status == "failed"
    assert result.failure.node_id == "2" and result.failure.message == "RuntimeError: bad thing"
    assert "raise RuntimeError(message)" in result.failure.traceback
    assert result.failure.inputs == {"x": "1.0", "message": "'bad thing'"}
    assert [e.type for e in events][-2:] == ["node_failed", "run_failed"]
    ok = executor.run(validated(chain_document(3), registry))  # the executor keeps working
    assert ok.status == "success" and ok.executed == ("2", "3")  # node 1 came from the cache


def test_progress_events_and_cancellation_inside_a_node():
    registry, calls = make_registry()
    executor = Executor(registry)
    document = chain_document(3)
    document["nodes"]["2"] = {"type": "Steps", "inputs": {"x": ["1", 0], "n": 4}}
    events = []
    executor.run(validated(document, registry), on_event=events.append)
    progress = [(e.data["value"], e.data["max"]) for e in events if e.type == "node_progress"]
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]

    cancel = threading.Event()

    def cancel_on_second_step(event):
        if event.type == "node_progress" and event.data["value"] == 2:
            cancel.set()

    document["nodes"]["2"]["inputs"]["n"] = 10
    result = executor.run(validated(document, registry), on_event=cancel_on_second_step, cancel=cancel)
    assert result.status == "cancelled" and "2" not in result.executed


def test_cancellation_between_nodes():
    registry, calls = make_registry()
    cancel = threading.Event()
    events = []

    def listener(event):
        events.append(event)
        if event.type == "node_finished" and event.node_id == "2":
            cancel.set()

    result = Executor(registry).run(validated(chain_document(6), registry), on_event=listener, cancel=cancel)
    assert result.status == "cancelled" and result.executed == ("1", "2")
    assert events[-1].type == "run_cancelled" and events[-1].node_id == "3"


def test_lru_bound_by_entries_and_bytes():
    cache = ResultCache(max_entries=2)
    cache.put("a", (1,))
    cache.put("b", (2,))
    cache.get("a")  # a becomes most recent
    cache.put("c", (3,))
    assert list(cache) == ["a", "c"] and cache.evictions == 1

    sized = ResultCache(max_entries=100, max_bytes=10, size_of=lambda v: len(v))
    sized.put("x", ("aaaa",))
    sized.put("y", ("bbbb",))
    sized.put("z", ("cccc",))
    assert list(sized) == ["y", "z"] and sized.bytes == 8
    sized.put("big", ("b" * 50,))  # larger than the bound: kept alone, not dropped
    assert list(sized) == ["big"]


def test_evicted_upstream_is_recomputed():
    registry, calls = make_registry()
    executor = Executor(registry, cache=ResultCache(max_entries=1))
    document = chain_document(4)
    executor.run(validated(document, registry))
    document["nodes"]["3"]["inputs"]["factor"] = 4.0
    result = executor.run(validated(document, registry))
    assert result.status == "success" and result.executed == ("1", "2", "3", "4")


def test_wrong_number_of_outputs_is_a_clear_failure():
    @node("Two")
    def two() -> Out(a="INT", b="INT"):
        return 1

    @node("Sink", output=True)
    def sink(v: "INT") -> None:
        return None

    registry = NodeRegistry()
    registry.register_pack([two, sink], "t")
    document = {"version": 1, "nodes": {"1": {"type": "Two"}, "2": {"type": "Sink", "inputs": {"v": ["1", "b"]}}}}
    result = Executor(registry).run(validated(document, registry))
    assert result.status == "failed" and "declares 2 outputs (a, b) but returned int" in result.failure.message


def test_deep_chain_has_no_recursion_limit():
    from engine.validation import validate_workflow
    from engine.workflow import document_to_workflow

    registry, _ = make_registry()
    workflow = document_to_workflow(chain_document(3000))  # 3x Python's recursion limit
    assert validate_workflow(workflow, registry).errors == []
    executor = Executor(registry, cache=ResultCache(max_entries=10000))
    assert executor.run(workflow).status == "success"
    assert executor.run(workflow).executed == ()
