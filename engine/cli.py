"""``main.py run | validate | nodes``: headless use of the engine.

``main.py`` wires in the registry factory (``args.build_registry``), so the engine never
imports the node packs itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from engine.comfyui_graph import GraphProblem, is_ui_graph, ui_graph_to_document
from engine.registry import NodeRegistry
from engine.runner import (
    JsonlEventWriter, OverrideError, apply_overrides, combinations, parse_set, parse_sweep,
)
from engine.scheduler import Event, Executor, RunResult
from engine.validation import ValidationError, ValidationReport, validate_document
from engine.workflow import read_workflow_file


def configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", help="workflow .json (ours, a ComfyUI API prompt or a ComfyUI UI-format "
                        "workflow), or a PNG saved by SaveImage (ours or ComfyUI's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                        help="override an input (repeatable); VALUE is JSON or plain text")
    parser.add_argument("--sweep", dest="sweeps", action="append", default=[], metavar="NODE.INPUT=V1,V2,...",
                        help="run every combination of these values in one process, sharing the cache")
    parser.add_argument("--events", metavar="FILE.jsonl", help="write one JSON object per event")
    parser.add_argument("--output-dir", help="where output nodes write files (default: output/ in the base directory)")
    parser.add_argument("--custom-nodes", help="plugin folder (default: custom_nodes/ in the base directory)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="spread the runs (a --sweep) over N worker processes, each with its own cache")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="spread the runs over the workers of a Ray cluster (auto, ray://head:10001, or "
                             "'local'); pip install -e '.[ray]'")


def configure_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", help="workflow .json (ours, a ComfyUI API prompt or UI-format workflow) "
                                         "or a PNG saved by SaveImage (ours or ComfyUI's)")
    parser.add_argument("--custom-nodes", help="plugin folder (default: custom_nodes/ in the base directory)")
    parser.add_argument("--json", action="store_true", help="print the problems as JSON")


def configure_nodes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--custom-nodes", help="plugin folder (default: custom_nodes/ in the base directory)")
    parser.add_argument("--json", action="store_true", help="print the catalogue in /object_info shape")


def configure(parser: argparse.ArgumentParser) -> None:  # pragma: no cover - main.py uses the specific ones
    configure_run(parser)


def _registry(args: argparse.Namespace) -> NodeRegistry:
    factory: Callable[..., NodeRegistry] | None = getattr(args, "build_registry", None)
    if factory is None:
        raise SystemExit("internal error: main.py did not provide build_registry")
    settings = args.build_settings(output_dir=Path(args.output_dir)) if getattr(args, "output_dir", None) \
        else args.build_settings()
    custom_nodes = Path(args.custom_nodes) if args.custom_nodes else settings.custom_nodes_dir
    registry = factory(custom_nodes=custom_nodes, settings=settings)
    registry.settings = settings  # type: ignore[attr-defined]
    # A plugin that failed to load is reported once, by the registry's log (stderr).
    return registry


def _load(path: str, registry: NodeRegistry) -> tuple[Any, list[GraphProblem]]:
    """The workflow in ``path`` as our document (or an API prompt), and what its conversion
    from ComfyUI's UI format could not map (empty for other formats)."""
    try:
        document = read_workflow_file(path)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if is_ui_graph(document):
        return ui_graph_to_document(document, registry.object_info())
    return document, []


def with_conversion_problems(report: ValidationReport, problems: list[GraphProblem]) -> ValidationReport:
    """``report`` with the UI-graph conversion's problems first. An unknown node type is
    reported once: validation's error (with its suggestions) gains what the conversion lost."""
    lost = {p.node_id: p.details for p in problems if p.code == "unknown_type" and p.details}
    validated_unknown = {v.node_id for v in report.problems if v.code == "unknown_type"}
    merged = [replace(v, message=f"{v.message}; {lost[v.node_id]}") if v.code == "unknown_type" and v.node_id in lost
              else v for v in report.problems]
    converted = [ValidationError(p.code, p.message, p.node_id, p.node_type, p.input, hint=p.hint,
                                 severity=p.severity)
                 for p in problems if not (p.code == "unknown_type" and p.node_id in validated_unknown)]
    return ValidationReport(report.workflow, tuple(converted + merged))


def run_validate(args: argparse.Namespace) -> int:
    registry = _registry(args)
    document, conversion_problems = _load(args.workflow, registry)
    report = with_conversion_problems(validate_document(document, registry), conversion_problems)
    if args.json:
        print(json.dumps([p.to_dict() for p in report.problems], indent=2))
    else:
        if report.problems:
            print(report.format())
        errors, warnings = len(report.errors), len(report.warnings)
        print(f"{args.workflow}: {'OK' if report.ok else 'INVALID'} "
              f"({errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)})")
    return 0 if report.ok else 1


def run_nodes(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if args.json:
        print(json.dumps(registry.object_info(), indent=2, default=str))
        return 0
    by_category: dict[str, list[Any]] = {}
    for spec in registry.specs():
        by_category.setdefault(spec.category, []).append(spec)
    for category in sorted(by_category):
        print(f"{category}/")
        for spec in by_category[category]:
            ins = ", ".join(f"{i.name}:{i.type}" + ("" if i.required or i.widget else "?") for i in spec.inputs)
            outs = ", ".join(f"{o.name}:{o.type}" for o in spec.outputs) or "-"
            summary = " ".join(spec.description.split("\n\n")[0].split())  # the first paragraph, whole
            print(f"  {spec.id:<28} ({ins}) -> {outs}")
            if summary:
                print(f"      {summary}")
    print(f"{len(registry)} nodes from {len({registry.source(i) for i in registry.ids()})} sources")
    return 0


def run_run(args: argparse.Namespace) -> int:
    registry = _registry(args)
    document, conversion_problems = _load(args.workflow, registry)
    try:
        sets = [parse_set(s) for s in args.sets]
        sweeps = [parse_sweep(s) for s in args.sweeps]
    except OverrideError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = registry.settings  # type: ignore[attr-defined]
    if getattr(args, "workers", None) is not None or getattr(args, "ray", None) is not None:
        return _run_on_workers(args, registry, document, conversion_problems, sets, sweeps)
    output_dir = Path(settings.output_dir)
    from engine.cache import ResultCache

    executor = Executor(registry, ResultCache.for_registry(registry, settings),
                        services={"settings": settings, "output_dir": output_dir})
    events_file = open(args.events, "w", encoding="utf-8") if args.events else None
    writer = JsonlEventWriter(events_file) if events_file else None
    status = 0
    try:
        for index, combo in enumerate(combinations(sweeps)):
            checked = _checked_combination(args, document, [*sets, *combo], registry, conversion_problems)
            if isinstance(checked, int):
                return checked
            concrete, report = checked
            if writer:
                writer.run_index = index
            label = ", ".join(o.label() for o in combo)
            renderer = ProgressRenderer(sys.stderr, enabled=not args.quiet, label=label)

            def listener(event: Event) -> None:
                if writer:
                    writer(event)
                renderer(event)

            result = executor.run(report.workflow, on_event=listener,
                                  services={"workflow_document": concrete, "workflow_path": args.workflow})
            renderer.close()
            summary = format_summary(result, report.workflow)
            if not args.quiet and summary:
                print(summary, file=sys.stderr)
            if result.status == "failed" and result.failure:
                failure = result.failure
                print(f"error: node {failure.node_id} ({failure.node_type}) failed: {failure.message}",
                      file=sys.stderr)
                for name, described in failure.inputs.items():
                    print(f"    {name} = {described}", file=sys.stderr)
                status = 3
            elif result.status == "cancelled":
                return 130
            print_outputs(result.outputs)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if events_file:
            events_file.close()
    return status


def _run_on_workers(args: argparse.Namespace, registry: NodeRegistry, document: Any,
                    conversion_problems: list[GraphProblem], sets: list[Any], sweeps: list[Any]) -> int:
    """``run --workers N`` / ``--ray``: every run of the sweep is validated first, then queued
    at once on the workers; the ``--events`` lines and the printed outputs follow the run
    order, as in a local run (the runs themselves finish in any order)."""
    from engine.queue import PromptQueue, QueueItem

    runs: list[tuple[str, Any, Any]] = []  # (label, concrete document, workflow)
    for combo in combinations(sweeps):
        checked = _checked_combination(args, document, [*sets, *combo], registry, conversion_problems)
        if isinstance(checked, int):
            return checked
        concrete, report = checked
        runs.append((", ".join(o.label() for o in combo), concrete, report.workflow))
    settings = registry.settings  # type: ignore[attr-defined]
    custom_nodes = Path(args.custom_nodes) if args.custom_nodes else settings.custom_nodes_dir
    try:
        backend = args.build_backend(settings, custom_nodes, workers=args.workers, ray_address=args.ray)
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    events: dict[str, list[Event]] = {}
    labels: dict[str, str] = {}

    def listener(item: QueueItem | None, event: Event | None) -> None:
        if item is not None and event is not None:
            events.setdefault(item.prompt_id, []).append(event)
        elif item is not None and not args.quiet:  # done: one line per run, as they finish
            entry = queue.history_entry(item.prompt_id)
            if entry is not None:
                print(f"[{labels[item.prompt_id] or 'run'}] {entry.status} on {entry.worker} in "
                      f"{entry.finished_at - entry.started_at:.2f}s", file=sys.stderr)

    queue = PromptQueue(None, backend=backend, listener=listener)
    queue.start()
    try:
        try:
            backend.wait_ready()
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        items = []
        for index, (label, concrete, workflow) in enumerate(runs):
            items.append(queue.submit(workflow, concrete, prompt_id=f"run-{index}"))
            labels[items[-1].prompt_id] = label
        idle_since = time.monotonic()
        while not queue.wait_idle(0.5):
            if backend.workers():
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 60:  # every worker died and none came back
                print("error: no worker is left to run the remaining prompts", file=sys.stderr)
                return 3
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        queue.stop()
    status = 0
    events_file = open(args.events, "w", encoding="utf-8") if args.events else None
    try:
        writer = JsonlEventWriter(events_file) if events_file else None
        for index, item in enumerate(items):
            if writer:
                writer.run_index = index
                for event in events.get(item.prompt_id, []):
                    writer(event)
            entry = queue.history_entry(item.prompt_id)
            if entry is None or entry.status == "interrupted":
                return 130
            if entry.status == "error":
                error = entry.error or {}
                where = f"node {error['node_id']} ({error['node_type']})" if error.get("node_id") else "the run"
                print(f"error: {where} failed: {error.get('message', '')}", file=sys.stderr)
                for name, described in (error.get("inputs") or {}).items():
                    print(f"    {name} = {described}", file=sys.stderr)
                status = 3
            print_outputs(entry.outputs)
    finally:
        if events_file:
            events_file.close()
    return status


class ProgressRenderer:
    """A one-line progress bar for the current node and its steps (stderr)."""

    def __init__(self, stream: TextIO, enabled: bool = True, label: str = "") -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = getattr(stream, "isatty", lambda: False)()
        self.label = label
        self.total = 0
        self.done = 0
        self._last_draw = 0.0
        self._current = ""

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        if event.type == "run_started":
            self.total = int(event.data.get("nodes", 0))
        elif event.type in ("node_cached", "node_finished") and "parent_node" not in event.data:
            self.done += 1  # the workflow's nodes only: nodes added by graph expansion are not in the total
        if event.type == "node_started":
            self._current = f"{event.node_id} {event.node_type}"
            self._draw(0, 0)
        elif event.type == "node_progress":
            now = time.monotonic()
            value, maximum = float(event.data["value"]), float(event.data["max"])
            if now - self._last_draw > 0.1 or value >= maximum:
                self._last_draw = now
                self._draw(value, maximum)
        elif event.type == "node_finished" and not self.tty:
            print(f"  done {event.node_id} {event.node_type} in {event.seconds:.2f}s", file=self.stream)

    def _draw(self, value: float, maximum: float) -> None:
        if not self.tty:
            return
        width = max(20, min(40, shutil.get_terminal_size((80, 20)).columns - 60))
        fraction = value / maximum if maximum else 0.0
        bar = "#" * int(fraction * width) + "-" * (width - int(fraction * width))
        steps = f" {int(value)}/{int(maximum)}" if maximum else ""
        prefix = f"[{self.label}] " if self.label else ""
        line = f"\r{prefix}[{self.done}/{self.total}] {self._current[:30]:<30} |{bar}|{steps}"
        self.stream.write(line[: shutil.get_terminal_size((120, 20)).columns] + "\033[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def format_summary(result: RunResult, workflow: Any) -> str:
    rows = [(n, workflow.nodes[n].type, "executed", f"{result.timings.get(n, 0.0):.3f}s") for n in result.executed]
    rows += [(n, workflow.nodes[n].type, "cached", "-") for n in result.cached]
    if not rows:  # a failure in the first node: the error that follows says it all
        return "" if result.status == "failed" else f"run {result.status}: nothing to do"
    width = [max(len(r[i]) for r in rows + [("node", "type", "status", "time")]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("node", "type", "status", "time"), width))]
    if len(rows) > 40:  # big graphs: summarise instead of listing every node
        rows = rows[:20] + [("...", f"{len(rows) - 40} more", "", "")] + rows[-20:]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, width)) for row in rows]
    lines.append(f"run {result.status} in {result.seconds:.3f}s: {len(result.executed)} executed, "
                 f"{len(result.cached)} cached")
    return "\n".join(lines)


def _checked_combination(args: argparse.Namespace, document: Any, overrides: list[Any], registry: Any,
                         conversion_problems: Any) -> tuple[Any, Any] | int:
    """``document`` with ``overrides`` applied and validated: (document, report), or the exit
    status after printing why it cannot run (2: a bad override, 1: validation errors)."""
    try:
        concrete = apply_overrides(document, overrides)
    except OverrideError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = with_conversion_problems(validate_document(concrete, registry), conversion_problems)
    for warning in report.warnings:
        if not args.quiet:
            print(warning.format(), file=sys.stderr)
    if not report.ok:
        print(report.format(), file=sys.stderr)
        print(f"{args.workflow}: not run, {len(report.errors)} error(s)", file=sys.stderr)
        return 1
    return concrete, report


def print_outputs(outputs: Mapping[str, Mapping[str, Any]]) -> None:
    """What output nodes showed, on stdout: text lines, then each image's path (scripts read it)."""
    for node_id, ui in outputs.items():
        for text in ui.get("text", []):
            print(f"node {node_id}: {text}")
        for image in ui.get("images", []):
            path = image.get("path") or image.get("filename")
            if path:
                print(path)
