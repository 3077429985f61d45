"""Pure-Python test nodes (no torch) and helpers to build registries and workflows."""

from __future__ import annotations

from collections import Counter
from typing import Any

from engine.api import ANY, Bool, Choice, Context, Float, Int, NodeContext, Out, Result, Text, node
from engine.registry import NodeRegistry
from engine.validation import validate_document


def make_registry(calls: Counter | None = None) -> tuple[NodeRegistry, Counter]:
    """A registry of arithmetic test nodes; ``calls`` counts executions per node type."""
    calls = calls if calls is not None else Counter()

    @node("Const", category="test")
    def const(value: Float(min=-1e9, max=1e9) = 0.0) -> Out(value="FLOAT"):
        """A number."""
        calls["Const"] += 1
        return float(value)

    @node("Add", category="test")
    def add(a: "FLOAT", b: "FLOAT") -> Out(sum="FLOAT"):
        calls["Add"] += 1
        return a + b

    @node("Scale", category="test", version=2)
    def scale(x: "FLOAT", factor: Float(min=0, max=10) = 1.0) -> Out(x="FLOAT"):
        calls["Scale"] += 1
        return x * factor

    @node("Split", category="test")
    def split(x: "FLOAT") -> Out(("low", "FLOAT"), ("high", "INT")):
        calls["Split"] += 1
        return x - 1, int(x + 1)

    @node("Label", category="test")
    def label(x: "FLOAT", style: Choice(choices=("plain", "fancy")) = "plain",
              prefix: Text(multiline=True) = "", loud: Bool() = False) -> Out(text="STRING"):
        calls["Label"] += 1
        text = f"{prefix}{x}" if style == "plain" else f"*{prefix}{x}*"
        return text.upper() if loud else text

    @node("Random", category="test", pure=False)
    def random_node(seed: Int(min=0) = 0) -> Out(value="FLOAT"):
        """Impure: always re-runs."""
        calls["Random"] += 1
        return float(calls["Random"])

    state = {"version": "a"}

    @node("FileValue", category="test", fingerprint=lambda path: state["version"])
    def file_value(path: Text() = "x") -> Out(value="FLOAT"):
        calls["FileValue"] += 1
        return float(len(state["version"]))

    @node("Steps", category="test")
    def steps(x: "FLOAT", n: Int(min=1, max=1000) = 3, ctx: Context = None) -> Out(x="FLOAT"):
        calls["Steps"] += 1
        for i in range(n):
            ctx.progress(i + 1, n)
        return x

    @node("Fail", category="test")
    def fail(x: "FLOAT", message: Text() = "boom") -> Out(x="FLOAT"):
        calls["Fail"] += 1
        raise RuntimeError(message)

    @node("Output", category="test", output=True)
    def output(value: ANY) -> None:
        calls["Output"] += 1
        return Result(ui={"text": [str(value)]})

    registry = NodeRegistry()
    registry.register_pack([const, add, scale, split, label, random_node, file_value, steps, fail, output],
                           "tests.engine.graph_nodes")
    registry.state = state  # type: ignore[attr-defined]  # lets tests change FileValue's fingerprint
    return registry, calls


def chain_document(length: int, start: float = 1.0) -> dict[str, Any]:
    """Const -> Scale -> Scale -> ... -> Output, ``length`` nodes in all."""
    nodes: dict[str, Any] = {"1": {"type": "Const", "inputs": {"value": start}}}
    for i in range(2, length):
        nodes[str(i)] = {"type": "Scale", "inputs": {"x": [str(i - 1), "x" if i > 2 else "value"], "factor": 1.0}}
    nodes[str(length)] = {"type": "Output", "inputs": {"value": [str(length - 1), 0]}}
    return {"version": 1, "nodes": nodes}


def validated(document: dict[str, Any], registry: NodeRegistry):
    report = validate_document(document, registry)
    assert report.ok, report.format()
    return report.workflow
