"""ComfyUI's dynamic semantics in our scheduler: lazy inputs, graph expansion, blocked
outputs and list mapping (pure-Python nodes, no torch)."""

from __future__ import annotations

from collections import Counter

from engine.api import ANY, Blocked, Bool, Context, Expand, Float, Int, ItemList, Out, Result, node
from engine.registry import NodeRegistry
from engine.scheduler import Executor
from engine.workflow import Link
from tests.engine.graph_nodes import make_registry, validated


def dynamic_registry() -> tuple[NodeRegistry, Counter, list]:
    registry, calls = make_registry()
    asked: list = []

    def pick(first, a=None, b=None):
        asked.append((first, a, b))
        return ["a"] if first else ["b"]

    @node("Switch", category="test", lazy=("a", "b"), check_lazy=pick)
    def switch(first: Bool() = True, a: "FLOAT" = None, b: "FLOAT" = None) -> Out(value="FLOAT"):
        calls["Switch"] += 1
        return a if first else b

    def needs(x, a=None, b=None):
        asked.append(("Chain", a, b))
        if a is None:
            return ["a"]
        return ["b"] if a < x else []

    @node("Threshold", category="test", lazy=("a", "b"), check_lazy=needs)
    def threshold(x: Float() = 0.0, a: "FLOAT" = None, b: "FLOAT" = None) -> Out(value="FLOAT"):
        """a when it reaches x, else a + b: b is evaluated only when a is below x."""
        calls["Threshold"] += 1
        return a if b is None else a + b

    @node("Repeat", category="test")
    def repeat(x: "FLOAT", times: Int(min=0, max=100) = 3, show: Bool() = False) -> Out(value="FLOAT"):
        """x doubled ``times`` times, by expanding into a chain of Scale nodes."""
        calls["Repeat"] += 1
        graph, previous = {}, None
        for i in range(times):
            source = Link("x-src", 0) if previous is None else Link(previous, 0)
            graph[f"r{i}"] = {"type": "Scale", "inputs": {"x": source, "factor": 2.0}}
            previous = f"r{i}"
        graph["x-src"] = {"type": "Const", "inputs": {"value": x}}
        if show:
            graph["show"] = {"type": "Output", "inputs": {"value": Link(previous, 0)}}
        return Expand(graph, (Link(previous, 0),))

    @node("BadExpand", category="test")
    def bad_expand(x: "FLOAT", mode: Int(min=0, max=3) = 0, ctx: Context = None) -> Out(value="FLOAT"):
        if mode == 3:  # a new node reading the expanding node itself: they would wait on each other
            return Expand({"n": {"type": "Scale", "inputs": {"x": Link(ctx.node_id, 0)}}}, (Link("n", 0),))
        if mode == 0:
            return Expand({"1": {"type": "Const", "inputs": {}}}, (Link("1", 0),))  # "1" is taken
        if mode == 1:
            return Expand({"n": {"type": "NoSuchNode", "inputs": {}}}, (Link("n", 0),))
        return Expand({"n": {"type": "Fail", "inputs": {"x": x}}}, (Link("n", 0),))

    @node("Gate", category="test")
    def gate(x: "FLOAT", open: Bool() = True, message: Int(min=0, max=1) = 1) -> Out(value="FLOAT"):
        calls["Gate"] += 1
        return x if open else Blocked("gate closed" if message else None)

    @node("Range", category="test", output_is_list=(True,))
    def range_node(count: Int(min=0, max=10) = 3) -> Out(values="FLOAT"):
        calls["Range"] += 1
        return [float(i) for i in range(count)]

    @node("Sum", category="test", input_is_list=True)
    def sum_node(values: "FLOAT", scale: Float() = 1.0) -> Out(total="FLOAT"):
        """Every input comes as a list, widgets too (ComfyUI's INPUT_IS_LIST)."""
        calls["Sum"] += 1
        assert isinstance(values, list) and isinstance(scale, list)
        return float(sum(values)) * scale[0]

    @node("Show", category="test", output=True)
    def show(value: ANY) -> None:
        calls["Show"] += 1
        return Result(ui={"text": [repr(value)]})

    registry.register_pack([switch, threshold, repeat, bad_expand, gate, range_node, sum_node, show], "tests.dynamic")
    return registry, calls, asked


def switch_graph(first: bool, poison: float = 1.0) -> dict:
    """Const 1 -> Scale 2 -> Switch.a; Const 3 -> Fail 4 -> Switch.b; Switch -> Output."""
    return {"version": 1, "nodes": {
        "1": {"type": "Const", "inputs": {"value": 2.0}},
        "2": {"type": "Scale", "inputs": {"x": ["1", 0], "factor": 5.0}},
        "3": {"type": "Const", "inputs": {"value": poison}},
        "4": {"type": "Fail", "inputs": {"x": ["3", 0], "message": "the unused branch ran"}},
        "5": {"type": "Switch", "inputs": {"first": first, "a": ["2", 0], "b": ["4", 0]}},
        "6": {"type": "Output", "inputs": {"value": ["5", 0]}},
    }}


def test_a_branch_never_asked_for_never_runs():
    registry, calls, asked = dynamic_registry()
    executor = Executor(registry)
    events = []
    result = executor.run(validated(switch_graph(True), registry), on_event=events.append)
    assert result.status == "success", result.failure
    assert result.outputs["6"] == {"text": ["10.0"]}
    assert calls["Fail"] == 0 and calls["Const"] == 1  # node 3 neither: nothing asked for it
    assert result.executed == ("1", "2", "5", "6")
    assert asked == [(True, None, None), (True, 10.0, None)]  # asked again once "a" was there
    started = [e.node_id for e in events if e.type == "node_started"]
    assert started == ["1", "2", "5", "6"]


def test_lazy_nodes_cache_like_the_rest():
    registry, calls, asked = dynamic_registry()
    executor = Executor(registry)
    executor.run(validated(switch_graph(True), registry))
    again = executor.run(validated(switch_graph(True), registry))
    assert again.executed == () and calls["Switch"] == 1 and len(asked) == 2
    assert set(again.cached) == {"1", "2", "3", "4", "5", "6"}  # unchanged, as a user sees it
    # a literal in the unused branch is part of the Switch's key: it runs again, the branch does not
    changed = executor.run(validated(switch_graph(True, poison=7.0), registry))
    assert changed.status == "success" and changed.executed == ("5", "6") and calls["Fail"] == 0
    assert "3" not in changed.cached and "4" not in changed.cached
    # the other branch, asked for now, runs (and fails, as it must)
    other = executor.run(validated(switch_graph(False), registry))
    assert other.status == "failed" and other.failure.node_id == "4"
    assert "the unused branch ran" in other.failure.message


def test_check_lazy_is_asked_until_it_needs_nothing_more_and_reads_cached_values():
    registry, calls, asked = dynamic_registry()
    executor = Executor(registry)

    def document(x: float) -> dict:
        return {"version": 1, "nodes": {
            "1": {"type": "Const", "inputs": {"value": 2.0}},
            "2": {"type": "Const", "inputs": {"value": 30.0}},
            "3": {"type": "Threshold", "inputs": {"x": x, "a": ["1", 0], "b": ["2", 0]}},
            "4": {"type": "Output", "inputs": {"value": ["3", 0]}},
        }}

    high = executor.run(validated(document(1.0), registry))
    assert high.outputs["4"] == {"text": ["2.0"]} and high.executed == ("1", "3", "4")
    asked.clear()
    low = executor.run(validated(document(5.0), registry))
    assert low.outputs["4"] == {"text": ["32.0"]}
    assert asked == [("Chain", None, None), ("Chain", 2.0, None), ("Chain", 2.0, 30.0)]
    assert low.executed == ("2", "3", "4") and low.cached == ("1",)  # node 1 came from the cache


def test_lazy_switch_inside_a_big_chain_keeps_order_and_failures():
    registry, calls, asked = dynamic_registry()
    document = switch_graph(False)
    document["nodes"]["4"] = {"type": "Scale", "inputs": {"x": ["3", 0], "factor": 3.0}}
    result = Executor(registry).run(validated(document, registry))
    assert result.outputs["6"] == {"text": ["3.0"]} and result.executed == ("3", "4", "5", "6")
    assert calls["Scale"] == 1  # only the branch asked for


def expand_graph(times: int, show: bool = False) -> dict:
    return {"version": 1, "nodes": {
        "1": {"type": "Const", "inputs": {"value": 1.5}},
        "2": {"type": "Repeat", "inputs": {"x": ["1", 0], "times": times, "show": show}},
        "3": {"type": "Scale", "inputs": {"x": ["2", 0], "factor": 10.0}},
        "4": {"type": "Output", "inputs": {"value": ["3", 0]}},
    }}


def test_an_expanded_graph_runs_and_its_outputs_replace_the_nodes():
    registry, calls, _ = dynamic_registry()
    executor = Executor(registry)
    events = []
    result = executor.run(validated(expand_graph(3, show=True), registry), on_event=events.append)
    assert result.status == "success", result.failure
    assert result.outputs["4"] == {"text": ["120.0"]}  # 1.5 * 2**3 * 10
    assert result.outputs["show"] == {"text": ["12.0"]}  # an output node inside the expansion ran
    assert result.executed == ("1", "2", "3", "4")
    # x-src is Const(1.5) like node 1: same key, so it came from the cache
    assert set(result.expanded) == {"r0", "r1", "r2", "show"}
    finished = [e.node_id for e in events if e.type == "node_finished"]
    assert finished.index("r2") < finished.index("2") < finished.index("3")
    assert [e.data.get("display_node") for e in events if e.type == "node_started" and e.node_id == "r1"] == ["2"]
    # the expanding node's outputs are cached: a rerun expands nothing
    again = executor.run(validated(expand_graph(3, show=True), registry))
    assert again.executed == () and again.expanded == () and calls["Repeat"] == 1
    # a new expansion reuses the cached results of identical new nodes (keys are by content)
    scale_calls = calls["Scale"]
    longer = executor.run(validated(expand_graph(4), registry))
    assert longer.outputs["4"] == {"text": ["240.0"]}
    assert calls["Scale"] - scale_calls == 2  # r3 and node 3; r0..r2 came from the cache


def test_expansions_that_cannot_run_fail_with_the_expanding_node_named():
    registry, calls, _ = dynamic_registry()
    executor = Executor(registry)

    def document(mode: int) -> dict:
        return {"version": 1, "nodes": {
            "1": {"type": "Const", "inputs": {"value": 1.0}},
            "2": {"type": "BadExpand", "inputs": {"x": ["1", 0], "mode": mode}},
            "3": {"type": "Output", "inputs": {"value": ["2", 0]}},
        }}

    taken = executor.run(validated(document(0), registry))
    assert taken.status == "failed" and taken.failure.node_id == "2"
    assert "reuses the node id '1'" in taken.failure.message
    unknown = executor.run(validated(document(1), registry))
    assert "unknown node type 'NoSuchNode'" in unknown.failure.message
    inner = executor.run(validated(document(2), registry))
    assert inner.failure.node_id == "2" and inner.failure.node_type == "BadExpand"
    assert "RuntimeError: boom (in node n Fail, which node 2 expanded into)" in inner.failure.message
    circular = executor.run(validated(document(3), registry))
    assert circular.status == "failed" and "wait on each other" in circular.failure.message
    assert executor.run(validated(expand_graph(2), registry)).status == "success"  # the executor is fine


def gate_graph(open_: bool, message: int = 1) -> dict:
    return {"version": 1, "nodes": {
        "1": {"type": "Const", "inputs": {"value": 4.0}},
        "2": {"type": "Gate", "inputs": {"x": ["1", 0], "open": open_, "message": message}},
        "3": {"type": "Scale", "inputs": {"x": ["2", 0], "factor": 2.0}},
        "4": {"type": "Output", "inputs": {"value": ["3", 0]}},
        "5": {"type": "Output", "inputs": {"value": ["1", 0]}},
    }}


def test_blocked_outputs_stop_the_nodes_that_read_them_and_the_run_succeeds():
    registry, calls, _ = dynamic_registry()
    executor = Executor(registry)
    events = []
    result = executor.run(validated(gate_graph(False), registry), on_event=events.append)
    assert result.status == "success"
    assert calls["Scale"] == 0 and "4" not in result.outputs and result.outputs["5"] == {"text": ["4.0"]}
    assert result.blocked == {"3": "gate closed", "4": None}  # reported once, then silent
    blocked_events = [(e.node_id, e.data["message"]) for e in events if e.type == "node_blocked"]
    assert blocked_events == [("3", "Execution blocked: gate closed")]
    silent = executor.run(validated(gate_graph(False, message=0), registry))
    assert silent.blocked == {"3": None, "4": None}
    opened = executor.run(validated(gate_graph(True), registry))
    assert opened.outputs["4"] == {"text": ["8.0"]} and opened.blocked == {}


def test_list_outputs_map_the_nodes_that_take_items():
    registry, calls, _ = dynamic_registry()
    document = {"version": 1, "nodes": {
        "1": {"type": "Range", "inputs": {"count": 3}},
        "2": {"type": "Scale", "inputs": {"x": ["1", 0], "factor": 2.0}},
        "3": {"type": "Sum", "inputs": {"values": ["2", 0]}},
        "4": {"type": "Show", "inputs": {"value": ["3", 0]}},
        "5": {"type": "Show", "inputs": {"value": ["2", 0]}},
    }}
    result = Executor(registry).run(validated(document, registry))
    assert result.status == "success", result.failure
    assert calls["Scale"] == 3 and calls["Sum"] == 1 and calls["Show"] == 4  # Show 5 once per item
    assert result.outputs["4"] == {"text": ["6.0"]}
    assert result.outputs["5"] == {"text": ["0.0", "2.0", "4.0"]}
    one = {"version": 1, "nodes": {"1": {"type": "Range", "inputs": {"count": 1}},
                                   "2": {"type": "Show", "inputs": {"value": ["1", 0]}},
                                   "5": {"type": "Const", "inputs": {"value": 3.0}},
                                   "3": {"type": "Sum", "inputs": {"values": ["5", 0], "scale": 2.0}},
                                   "4": {"type": "Show", "inputs": {"value": ["3", 0]}}}}
    single = Executor(registry).run(validated(one, registry))
    assert single.outputs["2"] == {"text": ["0.0"]}  # a list of one is handed on as its item
    assert single.outputs["4"] == {"text": ["6.0"]}  # a single value comes to Sum as a list of one


def test_object_info_reports_list_flags():
    registry, _, _ = dynamic_registry()
    info = registry.object_info()
    assert info["Range"]["output_is_list"] == [True] and "is_input_list" not in info["Range"]
    assert info["Sum"]["is_input_list"] is True and info["Sum"]["output_is_list"] == [False]
    assert info["Split"]["output_is_list"] == [False, False]


def test_item_list_is_a_plain_list_to_readers_that_take_lists():
    values = ItemList([1.0, 2.0])
    assert isinstance(values, list) and values == [1.0, 2.0]
    assert repr(Blocked("x")) == "Blocked('x')"
