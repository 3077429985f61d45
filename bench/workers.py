"""Benchmark: images per second with 1 and 2 workers, and what the queue adds to a prompt.

    python bench/workers.py                       # embedded model, 64x64 px, 20 steps, 8 prompts
    python bench/workers.py --prompts 12 --steps 10 --workers 1 2 --latency-runs 20

Throughput: ``--workers N`` local worker processes (``cluster.local.LocalWorkers``, the
backend ``serve --workers N`` uses; the cores are split between them) behind the real
``PromptQueue``. Each worker first runs one prompt (model load, prompt encode), then
``--prompts`` prompts with distinct seeds are queued at once and timed from the first
submit to the last history entry. The ratio column is against the 1-worker row of the
same run (target on a 2-core machine: >= 1.7x for 2 workers).

Queue latency: one prompt at a time on an idle queue, submit -> history entry visible,
minus the executor's own time for the run (the entry's ``finished_at - started_at``);
the median over ``--latency-runs`` (target <= 20 ms), for the in-process backend and for
worker processes (events and results cross a process boundary).
Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import main  # noqa: E402
from engine.backends import Backend  # noqa: E402
from engine.queue import PromptQueue, QueueItem  # noqa: E402
from engine.validation import validate_document  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_overhead import workflow  # noqa: E402


def wait_for(queue: PromptQueue, items: list[QueueItem], timeout: float = 600.0) -> float:
    """Poll until every item has a history entry; returns the time they were all seen."""
    deadline = time.monotonic() + timeout
    while True:
        entries = [queue.history_entry(item.prompt_id) for item in items]
        if all(entries):
            seen = time.perf_counter()
            failed = [e for e in entries if e.status != "success"]
            assert not failed, failed[0].error
            return seen
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(e is None for e in entries)} prompt(s) unfinished after {timeout}s")
        time.sleep(0.0005)


def submit(queue: PromptQueue, registry, steps: int, size: int, seed: int) -> QueueItem:
    document = workflow(steps, size, seed)
    report = validate_document(document, registry)
    assert report.ok, report.format()
    return queue.submit(report.workflow, document)


def started_queue(backend: Backend | None, registry, settings) -> PromptQueue:
    if backend is None:  # the in-process default: one executor in a thread of this process
        from engine.cache import ResultCache
        from engine.scheduler import Executor

        executor = Executor(registry, ResultCache.for_registry(registry, settings),
                            services={"settings": settings, "output_dir": settings.output_dir})
        queue = PromptQueue(executor)
    else:
        queue = PromptQueue(None, backend=backend)
    queue.start()
    if backend is not None:
        backend.wait_ready(300)
    return queue


def throughput(workers: int, args: argparse.Namespace, registry, settings) -> float:
    queue = started_queue(main.build_backend(settings, None, workers=workers), registry, settings)
    try:
        wait_for(queue, [submit(queue, registry, args.steps, args.size, 10_000 + w) for w in range(workers)])
        start = time.perf_counter()
        items = [submit(queue, registry, args.steps, args.size, seed) for seed in range(args.prompts)]
        return args.prompts / (wait_for(queue, items) - start)
    finally:
        queue.stop(30)


def queue_latency(backend: Backend | None, args: argparse.Namespace, registry, settings) -> float:
    queue = started_queue(backend, registry, settings)
    try:
        wait_for(queue, [submit(queue, registry, args.steps, args.size, 20_000)])  # load, encode
        added = []
        for run in range(args.latency_runs):
            start = time.perf_counter()
            item = submit(queue, registry, 1, args.size, 30_000 + run)  # 1 step: the run is short
            seen = wait_for(queue, [item])
            entry = queue.history_entry(item.prompt_id)
            added.append((seen - start) - (entry.finished_at - entry.started_at))
        return statistics.median(added)
    finally:
        queue.stop(30)


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--latency-runs", type=int, default=15)
    args = parser.parse_args(argv)

    settings = main.build_settings(extra={"threads": "auto"})  # as serve: the small-model thread policy
    registry = main.build_registry(None, entry_points=False, settings=settings)
    rates = {n: throughput(n, args, registry, settings) for n in args.workers}
    base = rates[min(rates)]
    print(f"embedded model, {args.size}x{args.size} px, {args.steps} euler steps, cfg 4, {args.prompts} prompts; "
          f"cores: {main.os.cpu_count()}")
    print(f"{'backend':<34} {'images / s':>11} {'ratio':>7}")
    for n, rate in rates.items():
        print(f"{f'--workers {n} (local processes)':<34} {rate:>11.3f} {rate / base:>7.2f}")
    print()
    print(f"{'queue latency (median of ' + str(args.latency_runs) + ')':<34} {'ms added':>11}")
    print(f"{'in-process executor':<34} {queue_latency(None, args, registry, settings) * 1e3:>11.2f}")
    two = main.build_backend(settings, None, workers=2)
    print(f"{'--workers 2 (local processes)':<34} {queue_latency(two, args, registry, settings) * 1e3:>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
