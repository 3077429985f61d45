"""The caching scheduler: topological execution that re-runs only what changed.

A node's cache key hashes its type, version, literal inputs and the keys of the
upstream outputs it reads (not its id), so identical subgraphs share one result and
a rerun executes only nodes whose key changed. Keys are computed once per node in
topological order: linear in graph size, no recursion. A run itself (what waits for what,
lazy inputs, graph expansion, blocked values, list mapping) is :mod:`engine.run_state`.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from engine.api import NodeSpec, Result
from engine.cache import ResultCache
from engine.registry import NodeRegistry
from engine.workflow import Link, NodeInstance, Workflow

EventType = Literal[
    "run_started", "node_started", "node_cached", "node_progress", "node_finished",
    "node_failed", "node_blocked", "run_finished", "run_failed", "run_cancelled",
]


@dataclass(frozen=True)
class Event:
    type: EventType
    run_id: str
    node_id: str | None = None
    node_type: str | None = None
    seconds: float | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (previews and other binary data are left out)."""
        out: dict[str, Any] = {"type": self.type, "run_id": self.run_id}
        for name in ("node_id", "node_type", "seconds"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        data = {k: v for k, v in self.data.items() if k != "preview" and _jsonable(v)}
        if data:
            out["data"] = data
        return out


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class NodeFailure:
    node_id: str
    node_type: str
    message: str
    traceback: str
    inputs: Mapping[str, str]  # input name -> short description of the value


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: Literal["success", "failed", "cancelled"]
    executed: tuple[str, ...]
    cached: tuple[str, ...]
    outputs: Mapping[str, Mapping[str, Any]]  # output node id -> its UI data
    timings: Mapping[str, float]
    failure: NodeFailure | None = None
    seconds: float = 0.0
    blocked: Mapping[str, str | None] = field(default_factory=dict)  # node -> ExecutionBlocker message
    expanded: tuple[str, ...] = ()  # nodes added by graph expansion that ran (not the workflow's)


class NodeExecutionError(RuntimeError):
    """A node returned something that does not match its declared outputs."""


EventListener = Callable[[Event], None]


class Executor:
    """Runs validated workflows against one registry and one process-wide cache."""

    def __init__(self, registry: NodeRegistry, cache: ResultCache | None = None,
                 services: Mapping[str, Any] | None = None) -> None:
        self.registry = registry
        self.cache = cache if cache is not None else ResultCache()
        self.services: dict[str, Any] = dict(services or {})
        self._lock = threading.Lock()  # one run at a time per executor

    # ------------------------------------------------------------------ keys

    def cache_keys(self, workflow: Workflow, order: list[str] | None = None,
                   run_nonce: str | None = None, specs: dict[str, NodeSpec] | None = None) -> dict[str, str]:
        """The cache key of every node, computed in topological order (``specs`` receives
        each node's spec)."""
        order = order if order is not None else topological_order(workflow)
        keys: dict[str, str] = {}
        nodes = workflow.nodes
        add_keys([nodes[node_id] for node_id in order], keys, specs if specs is not None else {}, self._spec,
                 run_nonce or uuid.uuid4().hex)
        return keys

    def free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        """Drop every cached result (``POST /free``). Loaded models live in the cache as the
        loader nodes' outputs, so dropping it is what unloads them; waits for a running run."""
        if not (unload_models or free_memory):
            return
        with self._lock:
            self.cache.clear()
        gc.collect()

    def _spec(self, node_type: str) -> NodeSpec:
        spec = self.registry.get(node_type)
        if spec is None:
            raise KeyError(f"unknown node type {node_type!r}: validate the workflow before running it")
        return spec

    # ------------------------------------------------------------------ run

    def run(self, workflow: Workflow, *, on_event: EventListener | None = None,
            cancel: threading.Event | None = None, run_id: str | None = None,
            services: Mapping[str, Any] | None = None) -> RunResult:
        """Execute what the output nodes need; reuse every cached result.

        The workflow must have passed validation. A failing node fails this run only;
        its exception is reported in the result and in a ``node_failed`` event.
        """
        with self._lock:
            from engine.run_state import RunState  # it builds on this module's types

            return RunState(self, workflow, on_event or (lambda event: None), cancel or threading.Event(),
                            run_id or uuid.uuid4().hex, {**self.services, **(services or {})}).run()


def add_keys(instances: list[NodeInstance], keys: dict[str, str], specs: dict[str, NodeSpec],
             spec_of: Callable[[str], NodeSpec], run_nonce: str) -> None:
    """Key ``instances`` (sources before readers) into ``keys``, their specs into ``specs``.

    A node's key hashes its type, version, literal inputs and the keys of what it reads;
    an impure node's also the run's nonce, a fingerprinted node's its fingerprint.
    """
    dumps, blake2b = json.dumps, hashlib.blake2b
    for instance in instances:
        spec = specs[instance.id] = spec_of(instance.type)
        literals: list[tuple[str, Any]] = []
        links: list[tuple[str, str, int]] = []
        for name, value in sorted(instance.inputs.items()):
            if isinstance(value, Link):
                links.append((name, keys[value.node_id], specs[value.node_id].output_index(value.output) or 0))
            else:
                literals.append((name, value))
        token: Any = None
        if not spec.pure:
            token = run_nonce
        elif spec.fingerprint is not None:
            token = repr(spec.fingerprint(**{k: v for k, v in literals}))
        material = dumps([spec.id, spec.version, literals, links, token],
                         sort_keys=True, default=repr, separators=(",", ":"))
        keys[instance.id] = blake2b(material.encode(), digest_size=16).hexdigest()


def normalize_result(spec: NodeSpec, result: Any) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    ui: dict[str, Any] | None = None
    if isinstance(result, Result):
        ui = dict(result.ui) or None
        result = result.values
    expected = len(spec.outputs)
    if expected == 0:
        if result not in (None, ()):
            raise NodeExecutionError(
                f"node {spec.id} declares no outputs but returned {type(result).__name__}; "
                f"return None or Result(ui=...)")
        return (), ui
    if expected == 1 and not (isinstance(result, tuple) and len(result) == 1):
        return (result,), ui
    if not isinstance(result, tuple) or len(result) != expected:
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise NodeExecutionError(
            f"node {spec.id} declares {expected} outputs "
            f"({', '.join(o.name for o in spec.outputs)}) but returned {got}")
    return result, ui


def topological_order(workflow: Workflow) -> list[str]:
    """Kahn's algorithm, ready nodes taken in natural id order ("2" before "10"): the same
    deterministic order as networkx's lexicographic sort at a third of its cost."""
    indegree: dict[str, int] = {node_id: 0 for node_id in workflow.nodes}
    readers: dict[str, list[str]] = {node_id: [] for node_id in workflow.nodes}
    for node_id, instance in workflow.nodes.items():
        for value in instance.inputs.values():
            if isinstance(value, Link):
                indegree[node_id] += 1
                readers[value.node_id].append(node_id)
    ready = [(_natural_key(n), n) for n, degree in indegree.items() if degree == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        for reader in readers[node_id]:
            indegree[reader] -= 1
            if indegree[reader] == 0:
                heapq.heappush(ready, (_natural_key(reader), reader))
    if len(order) != len(workflow.nodes):
        raise ValueError("the workflow has a cycle: validate it before running it")
    return order


def _natural_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def describe_value(value: Any) -> str:
    """A short description of an input value for error reports (no torch import)."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__}(shape={tuple(shape)}, dtype={dtype})"
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__
