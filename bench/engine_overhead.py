"""Engine overhead: 1000 trivial nodes as a chain and as a wide DAG.

Prints validation time, cold run, fully cached rerun and rerun after one leaf literal
changes, plus the scheduling overhead per executed node. Targets (issue 2): a fully
cached rerun of 1000 nodes <= 20 ms; <= 50 us scheduling overhead per executed node.

    python bench/engine_overhead.py [--nodes 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.cache import ResultCache  # noqa: E402
from engine.scheduler import Executor  # noqa: E402
from engine.validation import validate_document  # noqa: E402
from tests.engine.graph_nodes import chain_document, make_registry  # noqa: E402


def wide_document(count: int) -> dict:
    """Ten Const roots, a layer of Add nodes fanning in pairs, all gathered by Outputs."""
    nodes: dict = {}
    roots = 10
    for i in range(roots):
        nodes[f"c{i}"] = {"type": "Const", "inputs": {"value": float(i)}}
    index = 0
    while len(nodes) < count - 1:
        a, b = f"c{index % roots}", f"c{(index * 7 + 3) % roots}"
        nodes[f"s{index}"] = {"type": "Scale", "inputs": {"x": [a, 0], "factor": 1.0 + (index % 9) / 10}}
        index += 1
        if len(nodes) < count - 1 and index > 1:
            nodes[f"a{index}"] = {"type": "Add", "inputs": {"a": [f"s{index - 1}", 0], "b": [f"s{index - 2}", 0]}}
    adds = [k for k in nodes if k.startswith("a")]
    nodes["out"] = {"type": "Output", "inputs": {"value": [adds[-1] if adds else "c0", 0]}}
    # every Add must feed an output or it would not run: chain them into a final sum
    previous = None
    for key in adds:
        if previous is not None:
            nodes[key]["inputs"]["b"] = [previous, 0]
        previous = key
    return {"version": 1, "nodes": nodes}


def time_ms(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def bench(name: str, document: dict, repeats: int) -> list[tuple[str, str, str]]:
    registry, _ = make_registry()
    # the Scale node nearest the outputs: changing it re-runs only what lies below it
    leaf = [k for k, v in document["nodes"].items() if v["type"] == "Scale"][-1]
    validation_ms = time_ms(lambda: validate_document(document, registry), repeats)
    workflow = validate_document(document, registry).workflow
    count = len(workflow.nodes)

    def cold() -> None:
        Executor(registry, cache=ResultCache(max_entries=10 * count)).run(workflow)

    cold_ms = time_ms(cold, repeats)
    executor = Executor(registry, cache=ResultCache(max_entries=10 * count))
    executor.run(workflow)
    cached_ms = time_ms(lambda: executor.run(workflow), repeats)

    toggle = [1.0]

    def leaf_change() -> None:
        toggle[0] = 2.0 if toggle[0] == 1.0 else 1.0
        executor.run(workflow.with_input(leaf, "factor", toggle[0]))

    leaf_ms = time_ms(leaf_change, repeats)
    executed = len(executor.run(workflow.with_input(leaf, "factor", 3.5)).executed)
    # Node bodies are trivial, so the cold run's time is all scheduling overhead.
    per_node_us = cold_ms * 1000 / count
    return [
        (name, "nodes", f"{count}"),
        (name, "validate", f"{validation_ms:.1f} ms"),
        (name, "cold run", f"{cold_ms:.1f} ms"),
        (name, "cached rerun", f"{cached_ms:.1f} ms  (target <= 20 ms)"),
        (name, f"leaf change ({executed} re-run)", f"{leaf_ms:.1f} ms"),
        (name, "overhead per executed node", f"{per_node_us:.1f} us  (target <= 50 us)"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = bench("chain", chain_document(args.nodes), args.repeats)
    rows += bench("wide", wide_document(args.nodes), args.repeats)
    width = max(len(r[1]) for r in rows)
    print(f"{'graph':<6}  {'measure':<{width}}  value")
    for graph, measure, value in rows:
        print(f"{graph:<6}  {measure:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
