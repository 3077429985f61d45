"""The caching scheduler: topological execution that re-runs only what changed.

A node's cache key hashes its type, version, literal inputs and the keys of the
upstream outputs it reads (not its id), so identical subgraphs share one result and
a rerun executes only nodes whose key changed. Keys are computed once per node in
topological order: linear in graph size, no recursion.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import json
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from engine.api import Cancelled, NodeContext, NodeSpec, Progress, Result
from engine.cache import ResultCache
from engine.registry import NodeRegistry
from engine.workflow import Link, Workflow

EventType = Literal[
    "run_started", "node_started", "node_cached", "node_progress", "node_finished",
    "node_failed", "run_finished", "run_failed", "run_cancelled",
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

    def cache_keys(self, workflow: Workflow, order: list[str] | None = None) -> dict[str, str]:
        """The cache key of every node, computed in topological order."""
        order = order if order is not None else topological_order(workflow)
        keys: dict[str, str] = {}
        run_nonce = uuid.uuid4().hex
        for node_id in order:
            instance = workflow.nodes[node_id]
            spec = self._spec(instance.type)
            literals: list[tuple[str, Any]] = []
            links: list[tuple[str, str, int]] = []
            for name, value in sorted(instance.inputs.items()):
                if isinstance(value, Link):
                    source_spec = self._spec(workflow.nodes[value.node_id].type)
                    links.append((name, keys[value.node_id], source_spec.output_index(value.output) or 0))
                else:
                    literals.append((name, value))
            token: Any = None
            if not spec.pure:
                token = run_nonce
            elif spec.fingerprint is not None:
                token = repr(spec.fingerprint(**{k: v for k, v in literals}))
            material = json.dumps([spec.id, spec.version, literals, links, token],
                                  sort_keys=True, default=repr, separators=(",", ":"))
            keys[node_id] = hashlib.blake2b(material.encode(), digest_size=16).hexdigest()
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
            return self._run(workflow, on_event or (lambda event: None), cancel or threading.Event(),
                             run_id or uuid.uuid4().hex, {**self.services, **(services or {})})

    def _run(self, workflow: Workflow, emit: EventListener, cancel: threading.Event, run_id: str,
             services: Mapping[str, Any]) -> RunResult:
        started = time.perf_counter()
        order = topological_order(workflow)
        keys = self.cache_keys(workflow, order)
        outputs = [n for n in order if self._spec(workflow.nodes[n].type).output_node]
        emit(Event("run_started", run_id, data={"nodes": len(order), "outputs": outputs}))

        values: dict[str, tuple[Any, ...]] = {}
        ui: dict[str, Mapping[str, Any]] = {}
        to_execute: set[str] = set()
        # Walk back from the outputs: a cached node stops the walk (its value is pinned
        # now so eviction during the run cannot lose it); an uncached one needs its inputs.
        stack = list(outputs)
        seen: set[str] = set()
        while stack:
            node_id = stack.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            entry = self.cache.get(keys[node_id])
            if entry is not None:
                values[node_id] = entry.values
                if entry.ui:
                    ui[node_id] = entry.ui
                continue
            to_execute.add(node_id)
            stack.extend(v.node_id for v in workflow.nodes[node_id].inputs.values() if isinstance(v, Link))

        # Every node feeding an output that does not run this time counts as cached (as a
        # user sees it: unchanged), whether its own result was needed or not.
        reached = workflow.upstream_of(outputs)
        cached_order = [n for n in order if n in reached and n not in to_execute]
        for node_id in cached_order:
            emit(Event("node_cached", run_id, node_id, workflow.nodes[node_id].type,
                       data={"ui": ui[node_id]} if node_id in ui else {}))

        executed: list[str] = []
        timings: dict[str, float] = {}

        def on_progress(node_id: str, progress: Progress) -> None:
            emit(Event("node_progress", run_id, node_id, workflow.nodes[node_id].type,
                       data={"value": progress.value, "max": progress.max, "preview": progress.preview}))

        for node_id in order:
            if node_id not in to_execute:
                continue
            instance = workflow.nodes[node_id]
            spec = self._spec(instance.type)
            if cancel.is_set():
                return self._finish_cancelled(emit, run_id, node_id, executed, cached_order, ui, timings, started)
            entry = self.cache.get(keys[node_id])  # an identical node earlier in this run
            if entry is not None:
                values[node_id] = entry.values
                if entry.ui:
                    ui[node_id] = entry.ui
                cached_order.append(node_id)
                emit(Event("node_cached", run_id, node_id, instance.type,
                           data={"ui": entry.ui} if entry.ui else {}))
                continue
            kwargs = self._arguments(spec, instance.inputs, values, workflow)
            if spec.context_param:
                kwargs[spec.context_param] = NodeContext(node_id, cancel, on_progress, services)
            emit(Event("node_started", run_id, node_id, instance.type))
            node_started = time.perf_counter()
            try:
                node_values, node_ui = _normalize_result(spec, spec.function(**kwargs))
            except Cancelled:
                return self._finish_cancelled(emit, run_id, node_id, executed, cached_order, ui, timings, started)
            # A failing node fails its run, never the process: SystemExit and KeyboardInterrupt
            # raised by node code too (a plugin calling sys.exit() must not end the worker).
            except (Exception, SystemExit, KeyboardInterrupt) as error:
                failure = NodeFailure(
                    node_id, instance.type, f"{type(error).__name__}: {error}",
                    "".join(traceback.format_exception(type(error), error, error.__traceback__)),
                    {name: describe_value(value) for name, value in kwargs.items()
                     if name != spec.context_param},
                )
                seconds = time.perf_counter() - node_started
                emit(Event("node_failed", run_id, node_id, instance.type, seconds,
                           data={"message": failure.message, "traceback": failure.traceback,
                                 "inputs": dict(failure.inputs)}))
                emit(Event("run_failed", run_id, node_id, instance.type, time.perf_counter() - started,
                           data={"message": failure.message}))
                return RunResult(run_id, "failed", tuple(executed), tuple(cached_order), ui, timings,
                                 failure, time.perf_counter() - started)
            seconds = time.perf_counter() - node_started
            values[node_id] = node_values
            self.cache.put(keys[node_id], node_values, node_ui)
            if node_ui:
                ui[node_id] = node_ui
            executed.append(node_id)
            timings[node_id] = seconds
            emit(Event("node_finished", run_id, node_id, instance.type, seconds,
                       data={"ui": node_ui} if node_ui else {}))

        total = time.perf_counter() - started
        emit(Event("run_finished", run_id, seconds=total,
                   data={"executed": len(executed), "cached": len(cached_order)}))
        return RunResult(run_id, "success", tuple(executed), tuple(cached_order), ui, timings, None, total)

    def _finish_cancelled(self, emit: EventListener, run_id: str, node_id: str, executed: list[str],
                          cached: list[str], ui: Mapping[str, Any], timings: Mapping[str, float],
                          started: float) -> RunResult:
        total = time.perf_counter() - started
        emit(Event("run_cancelled", run_id, node_id, seconds=total))
        return RunResult(run_id, "cancelled", tuple(executed), tuple(cached), ui, timings, None, total)

    def _arguments(self, spec: NodeSpec, inputs: Mapping[str, Any], values: Mapping[str, tuple[Any, ...]],
                   workflow: Workflow) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for item in spec.inputs:
            if item.name in inputs:
                value = inputs[item.name]
                if isinstance(value, Link):
                    source_spec = self._spec(workflow.nodes[value.node_id].type)
                    value = values[value.node_id][source_spec.output_index(value.output) or 0]
                kwargs[item.name] = value
            elif item.default is not None or not item.required:
                kwargs[item.name] = item.default
        return kwargs


def _normalize_result(spec: NodeSpec, result: Any) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
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
