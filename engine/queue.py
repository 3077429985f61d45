"""The prompt queue: validated workflows wait here and run one at a time in a worker thread.

The server submits work and returns at once; the worker runs each item through
:class:`engine.scheduler.Executor` and records the outcome in a bounded history. Every
engine event reaches the listener tagged with its queue item, so a front end can route
it to the client that submitted the work. Nothing here knows about HTTP or websockets.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Protocol

from engine.scheduler import Event, RunResult
from engine.workflow import Workflow

log = logging.getLogger(__name__)


class RunsWorkflows(Protocol):
    """What the queue needs of an executor (``engine.scheduler.Executor`` fits)."""

    def run(self, workflow: Workflow, *, on_event: Callable[[Event], None] | None = ...,
            cancel: threading.Event | None = ..., run_id: str | None = ...,
            services: Mapping[str, Any] | None = ...) -> RunResult: ...


HistoryStatus = Literal["success", "error", "interrupted"]


@dataclass(frozen=True)
class QueueItem:
    """One submitted prompt. ``document`` is what the client sent (kept for SaveImage)."""

    prompt_id: str
    number: int
    workflow: Workflow
    document: Mapping[str, Any]
    client_id: str | None = None
    extra_data: Mapping[str, Any] = field(default_factory=dict)
    submitted_at: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    def to_json(self) -> list[Any]:
        """ComfyUI's queue entry: ``[number, prompt_id, prompt, extra_data, outputs]``."""
        return [self.number, self.prompt_id, dict(self.document), dict(self.extra_data), []]


@dataclass(frozen=True)
class HistoryEntry:
    item: QueueItem
    status: HistoryStatus
    outputs: Mapping[str, Mapping[str, Any]]
    messages: tuple[tuple[str, Mapping[str, Any]], ...]
    started_at: float
    finished_at: float
    executed: tuple[str, ...] = ()
    cached: tuple[str, ...] = ()
    error: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """ComfyUI's history entry shape, plus timings and the executed/cached sets."""
        return {
            "prompt": self.item.to_json(),
            "outputs": {node_id: dict(ui) for node_id, ui in self.outputs.items()},
            "status": {
                "status_str": "success" if self.status == "success" else "error",
                "completed": self.status == "success",
                "interrupted": self.status == "interrupted",
                "messages": [[kind, dict(data)] for kind, data in self.messages],
            },
            "meta": {
                "number": self.item.number,
                "client_id": self.item.client_id,
                "submitted_at": self.item.submitted_at,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "executed": list(self.executed),
                "cached": list(self.cached),
            },
            "error": dict(self.error) if self.error else None,
        }


class QueueListener(Protocol):
    def __call__(self, item: QueueItem | None, event: Event | None) -> None:
        """Called from the worker thread: ``event`` is an engine event of ``item``'s run;
        ``event=None`` means the queue changed (size, running item) and status should be sent."""


class QueueClosedError(RuntimeError):
    """The queue was stopped; no more work is accepted."""


class PromptQueue:
    """A FIFO of :class:`QueueItem` with one worker thread, interrupt and a bounded history."""

    def __init__(self, executor: RunsWorkflows, *, services: Mapping[str, Any] | None = None,
                 listener: QueueListener | None = None, history_limit: int = 1000) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be >= 1, got {history_limit}")
        self.executor = executor
        self.services = dict(services or {})
        self.listener: QueueListener = listener or (lambda item, event: None)
        self.history_limit = history_limit
        self._pending: deque[QueueItem] = deque()
        self._running: QueueItem | None = None
        self._history: OrderedDict[str, HistoryEntry] = OrderedDict()
        self._number = 0
        self._condition = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        with self._condition:
            if self._thread is not None:
                return
            self._closed = False
            self._thread = threading.Thread(target=self._work, name="prompt-queue", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop accepting work, interrupt the running item, drop pending ones, join the worker."""
        with self._condition:
            self._closed = True
            self._pending.clear()
            if self._running is not None:
                self._running.cancel.set()
            self._condition.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------ submit / inspect

    def submit(self, workflow: Workflow, document: Mapping[str, Any], *, client_id: str | None = None,
               extra_data: Mapping[str, Any] | None = None, prompt_id: str | None = None,
               front: bool = False) -> QueueItem:
        """Queue a validated workflow; returns at once with its id and queue number."""
        with self._condition:
            if self._closed:
                raise QueueClosedError("the queue is stopped and accepts no more work")
            if prompt_id is not None and (prompt_id in self._history or self._find(prompt_id) is not None):
                raise ValueError(f"prompt id {prompt_id!r} is already in use; omit it to get a fresh one")
            self._number += 1
            item = QueueItem(prompt_id or uuid.uuid4().hex, self._number, workflow, document, client_id,
                             dict(extra_data or {}), time.time())
            if front:
                self._pending.appendleft(item)
            else:
                self._pending.append(item)
            self._condition.notify_all()
        self._notify(None, None)
        return item

    def _find(self, prompt_id: str) -> QueueItem | None:
        if self._running is not None and self._running.prompt_id == prompt_id:
            return self._running
        return next((i for i in self._pending if i.prompt_id == prompt_id), None)

    def pending(self) -> list[QueueItem]:
        with self._condition:
            return list(self._pending)

    def running(self) -> QueueItem | None:
        with self._condition:
            return self._running

    def remaining(self) -> int:
        """Items not finished yet: pending plus the running one (ComfyUI's queue_remaining)."""
        with self._condition:
            return len(self._pending) + (self._running is not None)

    def delete(self, prompt_ids: list[str]) -> list[str]:
        """Remove pending items; returns the ids that were removed (running ones are not:
        interrupt those)."""
        wanted = set(prompt_ids)
        with self._condition:
            removed = [i.prompt_id for i in self._pending if i.prompt_id in wanted]
            self._pending = deque(i for i in self._pending if i.prompt_id not in wanted)
        if removed:
            self._notify(None, None)
        return removed

    def clear(self) -> int:
        """Remove every pending item; returns how many were removed."""
        with self._condition:
            count = len(self._pending)
            self._pending.clear()
        if count:
            self._notify(None, None)
        return count

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Cancel the running item (only if its id is ``prompt_id``, when given).

        A pending item named by ``prompt_id`` is removed instead. Returns whether
        anything was interrupted or removed.
        """
        with self._condition:
            running = self._running
            if running is not None and prompt_id in (None, running.prompt_id):
                running.cancel.set()
                return True
        if prompt_id is not None:
            return bool(self.delete([prompt_id]))
        return False

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is pending or running (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._pending or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._condition.wait(left)
            return True

    # ------------------------------------------------------------------ history

    def history(self, max_items: int | None = None, offset: int = 0) -> list[HistoryEntry]:
        """Finished items, oldest first; ``offset``/``max_items`` page through them."""
        if offset < 0 or (max_items is not None and max_items < 0):
            raise ValueError("offset and max_items must be >= 0")
        with self._condition:
            entries = list(self._history.values())
        end = None if max_items is None else offset + max_items
        return entries[offset:end]

    def history_entry(self, prompt_id: str) -> HistoryEntry | None:
        with self._condition:
            return self._history.get(prompt_id)

    def history_size(self) -> int:
        with self._condition:
            return len(self._history)

    def delete_history(self, prompt_ids: list[str]) -> list[str]:
        with self._condition:
            return [i for i in prompt_ids if self._history.pop(i, None) is not None]

    def clear_history(self) -> None:
        with self._condition:
            self._history.clear()

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                item = self._pending.popleft()
                self._running = item
            self._notify(None, None)
            entry = self._execute(item)
            with self._condition:
                self._history[item.prompt_id] = entry
                while len(self._history) > self.history_limit:
                    self._history.popitem(last=False)
                self._running = None
                self._condition.notify_all()
            self._notify(None, None)

    def _execute(self, item: QueueItem) -> HistoryEntry:
        messages: list[tuple[str, Mapping[str, Any]]] = []
        started = time.time()

        def on_event(event: Event) -> None:
            if event.type in ("run_started", "run_finished", "run_failed", "run_cancelled", "node_failed"):
                messages.append((event.type, {**event.to_json(), "timestamp": time.time()}))
            self._notify(item, event)

        services = {**self.services, "workflow_document": item.document, "prompt_id": item.prompt_id}
        try:
            result = self.executor.run(item.workflow, on_event=on_event, cancel=item.cancel,
                                       run_id=item.prompt_id, services=services)
        except Exception as error:  # the engine itself failed: record it, keep the worker alive
            message = f"{type(error).__name__}: {error}"
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            event = Event("run_failed", item.prompt_id, data={"message": message, "traceback": text})
            on_event(event)
            return HistoryEntry(item, "error", {}, tuple(messages), started, time.time(),
                                error={"message": message, "traceback": text})
        status: HistoryStatus = {"success": "success", "failed": "error",
                                 "cancelled": "interrupted"}[result.status]
        error: dict[str, Any] | None = None
        if result.failure is not None:
            failure = result.failure
            error = {"node_id": failure.node_id, "node_type": failure.node_type, "message": failure.message,
                     "traceback": failure.traceback, "inputs": dict(failure.inputs)}
        return HistoryEntry(item, status, dict(result.outputs), tuple(messages), started, time.time(),
                            result.executed, result.cached, error)

    def _notify(self, item: QueueItem | None, event: Event | None) -> None:
        try:
            self.listener(item, event)
        except Exception:  # a broken listener must not stop the queue; it is logged
            log.exception("queue listener failed")
