"""One run of the caching scheduler (:class:`engine.scheduler.Executor` makes one per run).

Nodes wait on the uncached nodes they read; ready ones run in topological order (a heap on
their position), so a plain workflow runs exactly as a topological walk would. On top of
that, ComfyUI's dynamic semantics:

- lazy inputs (``NodeSpec.lazy``): their sources are not waited on until the node's
  ``check_lazy`` names them; it is asked again each time what it asked for is there, until
  it names nothing new; a branch never asked for never runs;
- graph expansion: a node returning :class:`~engine.api.Expand` adds nodes while the run
  goes on (keyed by content like any other, so they cache) and is parked until what its
  outputs link to has run;
- blocked values (:class:`~engine.api.Blocked`): a node reading one does not run;
- list mapping: a node reading an :class:`~engine.api.ItemList` runs once per item.
"""

from __future__ import annotations

import heapq
import threading
import time
import traceback
import uuid
from typing import Any, Literal, Mapping

from engine.api import Blocked, Cancelled, Expand, ItemList, NodeContext, NodeSpec, Progress
from engine.dynamic import (expansion_instances, first_blocked, item_calls, links_in, merge_calls, merge_ui,
                            resolve_links)
from engine.scheduler import (Event, EventListener, Executor, NodeExecutionError, NodeFailure, RunResult,
                              add_keys, describe_value, normalize_result, topological_order)
from engine.workflow import Link, NodeInstance, Workflow


class RunState:
    """One run: a dependency-counting scheduler over the nodes the outputs need.

    Nodes wait on the uncached nodes they read (``pending``: node -> how many); ready ones
    run in topological order (a heap on their position). A lazy input's source is not
    waited on until the node's ``check_lazy`` names it; an :class:`Expand` result adds
    nodes while the run goes on and parks the expanding node until what it links to ran.
    """

    def __init__(self, executor: Executor, workflow: Workflow, emit: EventListener, cancel: threading.Event,
                 run_id: str, services: Mapping[str, Any]) -> None:
        self.executor, self.cache, self.spec = executor, executor.cache, executor._spec
        self.workflow, self.emit, self.cancel, self.run_id = workflow, emit, cancel, run_id
        self.services = {**services, "run_graph": RunGraph(self)}
        self.nodes: Mapping[str, NodeInstance] = workflow.nodes  # a dict copy once a node expands
        self.started = time.perf_counter()
        self.order = topological_order(workflow)
        self.run_nonce = uuid.uuid4().hex
        self.specs: dict[str, NodeSpec] = {}  # node -> its spec
        self.keys = executor.cache_keys(workflow, self.order, self.run_nonce, self.specs)
        self.links: dict[str, list[str]] = {}  # node -> the nodes it waits on (see sources)
        self.position: dict[str, int] = {}  # node -> its place in the order (built once something runs)
        self.values: dict[str, tuple[Any, ...]] = {}
        self.ui: dict[str, Mapping[str, Any]] = {}
        self.pending: dict[str, int] = {}  # node -> number of pending nodes it waits on
        self.readers: dict[str, list[str]] = {}  # pending node -> the pending nodes waiting on it
        self.ready: list[tuple[int, str]] = []
        self.requested: dict[str, set[str]] = {}  # node -> the lazy inputs it asked for
        self.expansions: dict[str, tuple[Expand, float]] = {}  # parked node -> its result, seconds so far
        self.parent: dict[str, str] = {}  # expanded node -> the node that made it
        self.executed: list[str] = []
        self.expanded: list[str] = []
        self.cached: list[str] = []
        self.reported: set[str] = set()
        self.blocked: dict[str, str | None] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ planning

    def sources(self, node_id: str) -> list[str]:
        """The nodes ``node_id`` waits on: every link but the lazy inputs not asked for."""
        found = self.links.get(node_id)
        if found is None:
            instance = self.nodes[node_id]
            lazy = self.specs[node_id].lazy
            asked = self.requested.get(node_id, ())
            found = self.links[node_id] = [v.node_id for name, v in instance.inputs.items() if isinstance(v, Link)
                                           and (not lazy or name not in lazy or name in asked)]
        return found

    def demand(self, roots: list[str]) -> None:
        """Make ``roots`` and the uncached nodes they need pending; cached ones are read
        (and so pinned: eviction during the run cannot lose them)."""
        new: list[str] = []
        stack = list(roots)
        values, pending, cache, keys, sources = self.values, self.pending, self.cache, self.keys, self.sources
        while stack:
            node_id = stack.pop()
            if node_id in values or node_id in pending:
                continue
            entry = cache.get(keys[node_id])
            if entry is not None:
                values[node_id] = entry.values
                if entry.ui:
                    self.ui[node_id] = entry.ui
                continue
            pending[node_id] = 0
            new.append(node_id)
            stack.extend(sources(node_id))
        if new and not self.position:
            self.position = {node_id: index for index, node_id in enumerate(self.order)}
        links, readers, ready, position = self.links, self.readers, self.ready, self.position
        for node_id in new:  # each waits on its distinct pending sources (as wait() does, inlined)
            count = 0
            sources_of = links[node_id]
            for source in (set(sources_of) if len(sources_of) > 1 else sources_of):
                if source in pending:
                    count += 1
                    readers.setdefault(source, []).append(node_id)
            pending[node_id] = count
            if count == 0:
                heapq.heappush(ready, (position[node_id], node_id))

    def wait(self, node_id: str, sources: set[str]) -> None:
        """``node_id`` (pending) waits on those of ``sources`` still pending; ready if none."""
        count = self.pending[node_id]
        for source in sources:
            if source in self.pending:
                count += 1
                self.readers.setdefault(source, []).append(node_id)
        self.pending[node_id] = count
        if count == 0:
            heapq.heappush(self.ready, (self.position[node_id], node_id))

    def complete(self, node_id: str, node_values: tuple[Any, ...]) -> None:
        self.values[node_id] = node_values
        del self.pending[node_id]
        for reader in self.readers.pop(node_id, ()):
            self.pending[reader] -= 1
            if self.pending[reader] == 0:
                heapq.heappush(self.ready, (self.position[reader], reader))

    def report_cached(self, roots: list[str]) -> None:
        """Every node upstream of ``roots`` that will not run counts as cached (as a user sees
        it: unchanged), whether its own value was read or not; in topological order."""
        found: list[str] = []
        stack = list(roots)
        reported, pending, nodes, parent = self.reported, self.pending, self.nodes, self.parent
        ran = self.timings or self.blocked or parent  # none yet on the first call
        while stack:
            node_id = stack.pop()
            if node_id in reported:
                continue
            reported.add(node_id)
            if node_id in pending:
                stack.extend(self.links.get(node_id) or self.sources(node_id))
                continue
            if ran and (node_id in parent or node_id in self.timings or node_id in self.blocked):
                continue  # expanded nodes are not the workflow's; executed ones are not cached
            found.append(node_id)
            stack.extend(v.node_id for v in nodes[node_id].inputs.values() if isinstance(v, Link))
        if self.position:
            found.sort(key=self.position.__getitem__)
        else:  # nothing runs: the order itself, filtered
            chosen = set(found)
            found = [node_id for node_id in self.order if node_id in chosen]
        for node_id in found:
            self.cached.append(node_id)
            self.emit(Event("node_cached", self.run_id, node_id, nodes[node_id].type,
                            data={"ui": self.ui[node_id]} if node_id in self.ui else {}))

    # ------------------------------------------------------------------ running

    def run(self) -> RunResult:
        outputs = [n for n in self.order if self.specs[n].output_node]
        self.emit(Event("run_started", self.run_id, data={"nodes": len(self.order), "outputs": outputs}))
        self.demand(outputs)
        self.report_cached(outputs)
        while self.ready:
            _, node_id = heapq.heappop(self.ready)
            if self.cancel.is_set():
                return self.finish("cancelled", node_id)
            failure = self.step(node_id)
            if failure is not None:
                return failure
        if self.pending:
            stuck = sorted(self.pending, key=self.position.__getitem__)
            error = NodeExecutionError(f"nodes {', '.join(stuck[:8])} wait on each other: an expanded graph "
                                       f"links back to the node that made it")
            return self.fail(stuck[0], error, {})
        return self.finish("success")

    def step(self, node_id: str) -> RunResult | None:
        """Run (or park, or block) one ready node; a RunResult when the run ends here."""
        instance = self.nodes[node_id]
        spec = self.specs[node_id]
        if node_id in self.expansions:
            return self.finish_expansion(node_id, spec)
        entry = self.cache.get(self.keys[node_id])  # an identical node earlier in this run
        if entry is not None:
            if entry.ui:
                self.ui[node_id] = entry.ui
            self.complete(node_id, entry.values)
            if node_id not in self.parent:
                self.cached.append(node_id)
                self.reported.add(node_id)
                self.emit(Event("node_cached", self.run_id, node_id, instance.type,
                                data={"ui": entry.ui} if entry.ui else {}))
            return None
        kwargs, blocker, has_list = self.arguments(node_id, spec, instance.inputs)
        if blocker is not None:
            self.block(node_id, spec, blocker)
            return None
        if spec.context_param:
            kwargs[spec.context_param] = NodeContext(node_id, self.cancel, self.on_progress, self.services)
        node_started = time.perf_counter()
        try:
            if spec.lazy and spec.check_lazy is not None and self.ask_lazy(node_id, spec, instance, kwargs):
                return None  # parked until the inputs it asked for are there
            self.emit(Event("node_started", self.run_id, node_id, instance.type,
                            data=self.display(node_id) if self.parent else {}))
            node_started = time.perf_counter()
            if has_list and not (spec.input_is_list or spec.maps_lists):
                node_values, node_ui = self.call_per_item(spec, kwargs)
            else:
                if spec.input_is_list and not spec.maps_lists:  # every input as a list, as ComfyUI gives them
                    kwargs = {name: value if type(value) is ItemList or name == spec.context_param
                              else ItemList([value]) for name, value in kwargs.items()}
                result = spec.function(**kwargs)
                if isinstance(result, Expand):
                    self.expand(node_id, result, time.perf_counter() - node_started)
                    return None
                node_values, node_ui = normalize_result(spec, result)
                if spec.output_is_list and not spec.maps_lists:
                    node_values = merge_calls(spec, [node_values])
        except Cancelled:
            return self.finish("cancelled", node_id)
        # A failing node fails its run, never the process: SystemExit and KeyboardInterrupt
        # raised by node code too (a plugin calling sys.exit() must not end the worker).
        except (Exception, SystemExit, KeyboardInterrupt) as error:
            return self.fail(node_id, error, kwargs, time.perf_counter() - node_started)
        self.finish_node(node_id, node_values, node_ui, time.perf_counter() - node_started)
        return None

    def finish_node(self, node_id: str, node_values: tuple[Any, ...], node_ui: dict[str, Any] | None,
                    seconds: float) -> None:
        self.cache.put(self.keys[node_id], node_values, node_ui)
        if node_ui:
            self.ui[node_id] = node_ui
        (self.expanded if node_id in self.parent else self.executed).append(node_id)
        self.timings[node_id] = seconds
        self.values[node_id] = node_values  # complete(), inlined: this is the hot path
        pending = self.pending
        del pending[node_id]
        for reader in self.readers.pop(node_id, ()):
            pending[reader] -= 1
            if pending[reader] == 0:
                heapq.heappush(self.ready, (self.position[reader], reader))
        self.emit(Event("node_finished", self.run_id, node_id, self.nodes[node_id].type, seconds,
                        data={**({"ui": node_ui} if node_ui else {}), **self.display(node_id)} if self.parent
                        else {"ui": node_ui} if node_ui else {}))

    def arguments(self, node_id: str, spec: NodeSpec,
                  inputs: Mapping[str, Any]) -> tuple[dict[str, Any], Blocked | None, bool]:
        """The function's keyword arguments (literals, upstream values, defaults; a lazy input
        not asked for, or not evaluated yet, is None), the first Blocked value among them and
        whether one is an ItemList."""
        kwargs: dict[str, Any] = {}
        values, specs = self.values, self.specs
        lazy = spec.lazy
        blocker: Blocked | None = None
        has_list = False
        for item in spec.inputs:
            name = item.name
            if name in inputs:
                value = inputs[name]
                if isinstance(value, Link):
                    produced = values.get(value.node_id)
                    if spec.raw_links and name in spec.raw_links:
                        value = Link(value.node_id, specs[value.node_id].output_index(value.output) or 0)
                    elif produced is None or (lazy and name in lazy and name not in self.requested.get(node_id, ())):
                        value = None
                    else:
                        value = produced[specs[value.node_id].output_index(value.output) or 0]
                        kind = type(value)
                        if kind is Blocked and blocker is None:
                            blocker = value
                        elif kind is ItemList:
                            has_list = True
                            if spec.input_is_list and blocker is None:
                                blocker = first_blocked({name: value}, whole_lists=True)
                kwargs[name] = value
            elif item.default is not None or not item.required:
                kwargs[name] = item.default
        return kwargs, blocker, has_list

    def ask_lazy(self, node_id: str, spec: NodeSpec, instance: NodeInstance, kwargs: dict[str, Any]) -> bool:
        """Ask the node which lazy inputs it needs; True when it now waits for some."""
        calls = item_calls(kwargs) if not (spec.input_is_list or spec.maps_lists) else [kwargs]
        names: set[str] = set()
        for call in calls:
            if first_blocked(call) is None:
                names.update(_names(spec.check_lazy(**call)))
        asked = self.requested.setdefault(node_id, set())
        wanted = [name for name in sorted(names) if name in spec.lazy and name not in asked
                  and isinstance(instance.inputs.get(name), Link)]
        if not wanted:
            return False
        before = set(self.sources(node_id))
        asked.update(wanted)
        self.links.pop(node_id, None)
        new_sources = [instance.inputs[name].node_id for name in wanted]
        self.demand(new_sources)
        self.report_cached(new_sources)
        self.wait(node_id, set(new_sources) - before)  # pushes it back when nothing is pending
        return True

    def call_per_item(self, spec: NodeSpec, kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        """ComfyUI's list mapping for a node that takes items: one call per item."""
        results, uis = [], []
        for call in item_calls(kwargs):
            blocker = first_blocked(call)
            if blocker is not None:
                results.append(tuple(Blocked(None) for _ in spec.outputs))
                continue
            result = spec.function(**call)
            if isinstance(result, Expand):
                raise NodeExecutionError(f"node {spec.id} expanded into a graph while mapped over a list input; "
                                         "a node that expands must take whole lists (input_is_list)")
            values, ui = normalize_result(spec, result)
            results.append(values)
            uis.append(ui)
        return merge_calls(spec, results), merge_ui(uis)

    def block(self, node_id: str, spec: NodeSpec, blocker: Blocked) -> None:
        """``node_id`` reads a Blocked value: it does not run and passes the block on silently."""
        self.blocked[node_id] = blocker.message
        if blocker.message is not None:
            self.emit(Event("node_blocked", self.run_id, node_id, self.nodes[node_id].type,
                            data={"message": f"Execution blocked: {blocker.message}", **self.display(node_id)}))
        silent = blocker if blocker.message is None else Blocked(None)
        self.complete(node_id, tuple(silent for _ in spec.outputs))

    # ------------------------------------------------------------------ expansion

    def expand(self, node_id: str, expand: Expand, seconds: float) -> None:
        if self.nodes is self.workflow.nodes:
            self.nodes = dict(self.workflow.nodes)
        instances = expansion_instances(expand, node_id, self.nodes, self.executor.registry.get)
        nodes: dict[str, NodeInstance] = self.nodes  # type: ignore[assignment]
        position = self.position[node_id]
        for instance in instances:
            nodes[instance.id] = instance
            self.parent[instance.id] = node_id
            self.position[instance.id] = position  # among themselves: in id order
        add_keys(instances, self.keys, self.specs, self.spec, self.run_nonce)
        self.expansions[node_id] = (expand, seconds)
        linked = [link.node_id for link in links_in(expand.outputs)]
        new_outputs = [i.id for i in instances if self.specs[i.id].output_node]
        self.demand(new_outputs + linked)
        self.wait(node_id, set(linked))

    def finish_expansion(self, node_id: str, spec: NodeSpec) -> RunResult | None:
        expand, seconds = self.expansions.pop(node_id)
        started = time.perf_counter()
        try:
            def lookup(link: Link) -> Any:
                return self.values[link.node_id][self.specs[link.node_id].output_index(link.output) or 0]

            result = resolve_links(tuple(expand.outputs), lookup)
            if expand.finish is not None:
                result = expand.finish(result)
            node_values, node_ui = normalize_result(spec, result)
        except (Exception, SystemExit, KeyboardInterrupt) as error:
            return self.fail(node_id, error, {})
        ui = merge_ui([expand.ui, node_ui])
        self.finish_node(node_id, node_values, ui, seconds + time.perf_counter() - started)
        return None

    def root(self, node_id: str) -> str:
        while node_id in self.parent:
            node_id = self.parent[node_id]
        return node_id

    def display(self, node_id: str) -> dict[str, Any]:
        """Event data naming the workflow node an expanded node belongs to."""
        return {"display_node": self.root(node_id), "parent_node": self.parent[node_id]} \
            if node_id in self.parent else {}

    # ------------------------------------------------------------------ endings

    def on_progress(self, node_id: str, progress: Progress) -> None:
        self.emit(Event("node_progress", self.run_id, node_id, self.nodes[node_id].type,
                        data={"value": progress.value, "max": progress.max, "preview": progress.preview}))

    def fail(self, node_id: str, error: BaseException, kwargs: Mapping[str, Any], seconds: float = 0.0) -> RunResult:
        """The run fails at ``node_id``; an expanded node's failure is its workflow node's."""
        instance = self.nodes[node_id]
        spec = self.specs[node_id]
        message = f"{type(error).__name__}: {error}"
        reported = self.root(node_id)
        if reported != node_id:
            message = f"{message} (in node {node_id} {instance.type}, which node {reported} expanded into)"
        failure = NodeFailure(
            reported, self.nodes[reported].type, message,
            "".join(traceback.format_exception(type(error), error, error.__traceback__)),
            {name: describe_value(value) for name, value in kwargs.items() if name != spec.context_param},
        )
        self.emit(Event("node_failed", self.run_id, reported, failure.node_type, seconds,
                        data={"message": failure.message, "traceback": failure.traceback,
                              "inputs": dict(failure.inputs)}))
        self.emit(Event("run_failed", self.run_id, reported, failure.node_type, time.perf_counter() - self.started,
                        data={"message": failure.message}))
        return self.result("failed", failure)

    def finish(self, status: Literal["success", "cancelled"], node_id: str | None = None) -> RunResult:
        total = time.perf_counter() - self.started
        if status == "cancelled":
            self.emit(Event("run_cancelled", self.run_id, node_id and self.root(node_id), seconds=total))
        else:
            self.emit(Event("run_finished", self.run_id, seconds=total,
                            data={"executed": len(self.executed), "cached": len(self.cached)}))
        return self.result(status, None)

    def result(self, status: Literal["success", "failed", "cancelled"], failure: NodeFailure | None) -> RunResult:
        return RunResult(self.run_id, status, tuple(self.executed), tuple(self.cached), self.ui, self.timings,
                         failure, time.perf_counter() - self.started, self.blocked, tuple(self.expanded))


def _names(value: Any) -> list[str]:
    """check_lazy's answer: a name, a list of names, or None."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [name for name in value if isinstance(name, str)] if isinstance(value, (list, tuple, set)) else []


class RunGraph:
    """What a node may read of the graph it runs in (``ctx.services["run_graph"]``; ComfyUI's
    DYNPROMPT): every node, those added by expansion included, and who expanded them."""

    def __init__(self, run: RunState) -> None:
        self._run = run

    def node(self, node_id: str) -> NodeInstance | None:
        return self._run.nodes.get(node_id)

    def output_index(self, node_id: str, output: str | int) -> int:
        spec = self._run.specs.get(node_id)
        index = spec.output_index(output) if spec is not None else None
        return index if index is not None else 0

    def parent(self, node_id: str) -> str | None:
        return self._run.parent.get(node_id)

    def root(self, node_id: str) -> str:
        """The workflow node ``node_id`` was expanded from (itself for a workflow node)."""
        return self._run.root(node_id)

    def ids(self) -> list[str]:
        return list(self._run.nodes)

