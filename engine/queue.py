"""The prompt queue: validated workflows wait here and run on an execution backend's workers.

The server submits work and returns at once; a dispatch thread hands each item to a free
worker of the backend (:mod:`engine.backends`: by default one in-process worker running
:class:`engine.scheduler.Executor`, so one prompt at a time; N workers run N prompts at
once) and records the outcome in a bounded history, each entry naming its worker. Every
engine event reaches the listener tagged with its queue item, so a front end can route
it to the client that submitted the work. Nothing here knows about HTTP or websockets.
"""

from __future__ import annotations

import bisect
import logging
import sqlite3
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Protocol

from engine.backends import (
    PROMPT_SERVICE_KEYS, Backend, InProcessBackend, RunRequest, WorkerLost, WorkerRunError, model_files, place,
)
from engine.scheduler import Event, RunResult
from engine.store import PromptStore, StoredPrompt
from engine.workflow import Workflow

log = logging.getLogger(__name__)


class RunsWorkflows(Protocol):
    """What the queue needs of an executor (``engine.scheduler.Executor`` fits)."""

    def run(self, workflow: Workflow, *, on_event: Callable[[Event], None] | None = ...,
            cancel: threading.Event | None = ..., run_id: str | None = ...,
            services: Mapping[str, Any] | None = ...) -> RunResult: ...


HistoryStatus = Literal["success", "error", "interrupted"]


# extra_data keys that hold credentials: never listed in /queue or kept in history (as ComfyUI).
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


@dataclass(frozen=True)
class QueueItem:
    """One submitted prompt.

    ``prompt`` is what the client sent, kept as sent (history and /queue show it);
    ``document`` is the same workflow in our format (SaveImage embeds it), ``prompt`` when
    omitted. ``number`` orders the queue: lower runs first, ties in submission order.
    ``extra_data`` is the client's ``extra_data`` plus ``client_id`` (ComfyUI keeps it there).
    """

    prompt_id: str
    number: float
    workflow: Workflow | None  # None only for history entries restored from the store
    prompt: Mapping[str, Any]
    client_id: str | None = None
    extra_data: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()  # the output node ids this run executes
    document: Mapping[str, Any] | None = None
    submitted_at: float = 0.0
    sequence: int = 0
    cancel: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    size_bytes: int = field(default=0, compare=False)  # the request's size (the pending byte bound); 0: unknown

    @property
    def workflow_document(self) -> Mapping[str, Any]:
        return self.document if self.document is not None else self.prompt

    def public_extra_data(self) -> dict[str, Any]:
        return {k: v for k, v in self.extra_data.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}

    def to_json(self) -> list[Any]:
        """ComfyUI's queue entry: ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``."""
        return [self.number, self.prompt_id, dict(self.prompt), self.public_extra_data(), list(self.outputs)]


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
    worker: str | None = None  # the worker that ran it (None: restored from an older store)

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
                "worker": self.worker,
            },
            "error": dict(self.error) if self.error else None,
        }


class QueueListener(Protocol):
    def __call__(self, item: QueueItem | None, event: Event | None) -> None:
        """Called from the worker thread, three kinds of call:

        - ``(item, event)``: an engine event of ``item``'s run;
        - ``(None, None)``: the queue changed (size, running item): send the status;
        - ``(item, None)``: ``item`` is done and its history entry is recorded (a client
          told now finds it in the history)."""


class QueueClosedError(RuntimeError):
    """The queue was stopped; no more work is accepted."""


class QueueStoreError(RuntimeError):
    """The prompt could not be written to the queue's store (disk full, unwritable file)."""


class DuplicatePromptIdError(ValueError):
    """A client-chosen prompt id names a prompt that is still pending or running."""


class FreesMemory(Protocol):
    """Optional on an executor: drop cached results and models (``POST /free``)."""

    def free(self, *, unload_models: bool, free_memory: bool) -> None: ...


class PromptQueue:
    """A FIFO of :class:`QueueItem` run on a backend's workers, interrupt and a bounded history.

    ``backend`` defaults to :class:`engine.backends.InProcessBackend` over ``executor`` (one
    prompt at a time in a thread of this process); with a backend of N workers, N prompts run
    at once. A prompt whose worker dies mid-run is queued again once (see :meth:`_lost`)."""

    def __init__(self, executor: RunsWorkflows | None, *, services: Mapping[str, Any] | None = None,
                 listener: QueueListener | None = None, history_limit: int = 1000,
                 store: PromptStore | None = None, backend: Backend | None = None) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be >= 1, got {history_limit}")
        if executor is None and backend is None:
            raise ValueError("give the queue an executor or an execution backend")
        self.executor = executor
        self.backend: Backend = backend if backend is not None else InProcessBackend(executor)  # type: ignore[arg-type]
        self.services = dict(services or {})
        self.listener: QueueListener = listener or (lambda item, event: None)
        self.history_limit = history_limit
        self._pending: list[QueueItem] = []  # sorted by (number, sequence)
        self._running: dict[str, QueueItem] = {}  # prompt id -> item, in start order
        self._worker_of: dict[str, str] = {}  # running prompt id -> worker id
        self._held: dict[str, frozenset[str]] = {}  # worker id -> model files it has loaded (affinity)
        self._requeued: dict[str, tuple[str, Mapping[str, Any]]] = {}  # prompt id -> why (lost worker)
        self._slots: list[threading.Thread] = []
        self._history: OrderedDict[str, HistoryEntry] = OrderedDict()
        self._number = 0  # the next automatic number (ComfyUI counts from 0)
        self._sequence = 0
        self._free_requested: dict[str, bool] = {}
        self._condition = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.store = store  # None: in memory only (tests); see restore()

    # ------------------------------------------------------------------ lifecycle

    def restore(self, parse: Callable[[StoredPrompt], Workflow]) -> tuple[int, int]:
        """Load the store's history and queue again what was pending or running at the last stop.

        ``parse`` validates a stored prompt against today's nodes and returns its workflow,
        or raises ``ValueError`` saying why it cannot run any more (that prompt is then
        recorded in the history as an error, not lost). Call before :meth:`start`.
        Returns (history entries, prompts queued again).
        """
        if self.store is None:
            return 0, 0
        history = [(stored, record) for stored, record in self.store.history()]
        unfinished = self.store.unfinished()
        number, sequence = self.store.counters()
        refused: list[HistoryEntry] = []
        with self._condition:
            for stored, record in history[-self.history_limit:]:
                self._history[stored.prompt_id] = _entry_from_record(_item_from_stored(stored, None), record)
            self._number, self._sequence = max(self._number, number), max(self._sequence, sequence)
            for stored in unfinished:
                try:
                    workflow = parse(stored)
                except ValueError as error:
                    now = time.time()
                    message = f"not queued again after a restart: {error}"
                    refused.append(HistoryEntry(_item_from_stored(stored, None), "error", {}, (
                        ("execution_error", {"message": message, "timestamp": now}),), now, now,
                        error={"message": message}))
                    continue
                bisect.insort(self._pending, _item_from_stored(stored, workflow), key=_queue_order)
        for entry in refused:
            self._record(entry)
        if unfinished:
            log.info("queued again %d prompt(s) left from the last run (%d could not be)",
                     len(unfinished) - len(refused), len(refused))
        return len(history), len(unfinished) - len(refused)

    def start(self) -> None:
        with self._condition:
            if self._thread is not None:
                return
            self._closed = False
            self._thread = threading.Thread(target=self._work, name="prompt-queue", daemon=True)
            self._thread.start()
        self.backend.start(self._wake)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop accepting work, interrupt the running item, drop pending ones, join the worker.

        With a store, pending items and the interrupted running one stay there and are
        queued again by the next :meth:`restore`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            self._closed = True
            self._pending.clear()
            for running in self._running.values():
                running.cancel.set()
            self._condition.notify_all()
            thread, self._thread = self._thread, None
            slots, self._slots = self._slots, []
        for joined in ([thread] if thread is not None else []) + slots:
            joined.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if thread is not None:
            self.backend.stop(timeout if timeout is not None else 10.0)

    # ------------------------------------------------------------------ submit / inspect

    def submit(self, workflow: Workflow, prompt: Mapping[str, Any], *, document: Mapping[str, Any] | None = None,
               client_id: str | None = None, extra_data: Mapping[str, Any] | None = None,
               prompt_id: str | None = None, number: float | None = None, front: bool = False,
               outputs: tuple[str, ...] = (), size_bytes: int = 0) -> QueueItem:
        """Queue a validated workflow; returns at once with its id and queue number.

        Numbers follow ComfyUI: without ``number`` the item gets the next count (from 0),
        negated when ``front`` so it runs before everything numbered automatically; an
        explicit ``number`` is used as given and does not advance the count. A
        ``prompt_id`` still pending or running is refused; one in the history is reused
        (its entry is replaced when the new run finishes).
        """
        with self._condition:
            if self._closed:
                raise QueueClosedError("the queue is stopped and accepts no more work")
            if prompt_id is not None and self._find(prompt_id) is not None:
                raise DuplicatePromptIdError(
                    f"prompt id {prompt_id!r} is already queued or running; send a fresh id or omit it")
            if number is None:
                number = -self._number if front else self._number
                self._number += 1
            self._sequence += 1
            extra = dict(extra_data or {})
            if client_id is not None:
                extra["client_id"] = client_id
            item = QueueItem(prompt_id or str(uuid.uuid4()), number, workflow, prompt, client_id, extra,
                             tuple(outputs), document, time.time(), self._sequence, size_bytes=size_bytes)
            if self.store is not None:  # stored before the client is answered: a crash loses nothing
                try:
                    self.store.add(_stored_from_item(item), next_number=self._number, next_sequence=self._sequence)
                except (OSError, ValueError, sqlite3.Error) as error:
                    raise QueueStoreError(f"the prompt could not be stored ({error}); nothing was queued") from error
            bisect.insort(self._pending, item, key=_queue_order)
            self._condition.notify_all()
        self._notify(None, None)
        return item

    def _find(self, prompt_id: str) -> QueueItem | None:
        if prompt_id in self._running:
            return self._running[prompt_id]
        return next((i for i in self._pending if i.prompt_id == prompt_id), None)

    def pending(self) -> list[QueueItem]:
        with self._condition:
            return list(self._pending)

    def pending_bytes(self) -> int:
        """The summed ``size_bytes`` of the pending items (the server bounds it, see web.security.Limits)."""
        with self._condition:
            return sum(item.size_bytes for item in self._pending)

    def running(self) -> QueueItem | None:
        """The running item that started first (None when nothing runs); see :meth:`running_items`."""
        with self._condition:
            return next(iter(self._running.values()), None)

    def running_items(self) -> list[QueueItem]:
        """Every running item, in the order they started (one per busy worker)."""
        with self._condition:
            return list(self._running.values())

    def worker_of(self, prompt_id: str) -> str | None:
        """The id of the worker running ``prompt_id`` (None when it is not running)."""
        with self._condition:
            return self._worker_of.get(prompt_id)

    def remaining(self) -> int:
        """Items not finished yet: pending plus running ones (ComfyUI's queue_remaining)."""
        with self._condition:
            return len(self._pending) + len(self._running)

    def delete(self, prompt_ids: list[str]) -> list[str]:
        """Remove pending items; returns the ids that were removed (running ones are not:
        interrupt those)."""
        wanted = set(prompt_ids)
        with self._condition:
            removed = [i.prompt_id for i in self._pending if i.prompt_id in wanted]
            self._pending = [i for i in self._pending if i.prompt_id not in wanted]
            self._stored("remove", removed)
        if removed:
            self._notify(None, None)
        return removed

    def clear(self) -> int:
        """Remove every pending item; returns how many were removed."""
        with self._condition:
            count = len(self._pending)
            self._pending.clear()
            self._stored("clear_pending")
        if count:
            self._notify(None, None)
        return count

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Cancel the running item (only if its id is ``prompt_id``, when given).

        A pending item named by ``prompt_id`` is removed instead. Returns whether
        anything was interrupted or removed.
        """
        with self._condition:
            targets = list(self._running.values()) if prompt_id is None else \
                [self._running[prompt_id]] if prompt_id in self._running else []
            for running in targets:  # the backend passes it on to the worker running it
                running.cancel.set()
            if targets:
                return True
        if prompt_id is not None:
            return bool(self.delete([prompt_id]))
        return False

    def request_free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        """Ask the worker to drop cached results/models once the running prompt (if any) is
        done (ComfyUI's ``POST /free``); the executor must have a ``free`` method."""
        if not (unload_models or free_memory):
            return
        with self._condition:
            self._free_requested["unload_models"] = self._free_requested.get("unload_models", False) or unload_models
            self._free_requested["free_memory"] = self._free_requested.get("free_memory", False) or free_memory
            self._condition.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is pending or running (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._pending or self._running:
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
            deleted = [i for i in prompt_ids if self._history.pop(i, None) is not None]
            self._stored("delete_history", deleted)
            return deleted

    def clear_history(self) -> None:
        with self._condition:
            self._history.clear()
            self._stored("clear_history")

    def _stored(self, method: str, *args: Any) -> None:
        """Mirror a change in the store; a store failure is logged, never stops the queue."""
        if self.store is None:
            return
        try:
            getattr(self.store, method)(*args)
        except (OSError, TypeError, ValueError, sqlite3.Error):
            log.exception("queue store: %s failed", method)

    # ------------------------------------------------------------------ dispatch

    def _wake(self) -> None:
        """The backend's workers changed (one joined or died): look again for work to place."""
        with self._condition:
            self._condition.notify_all()

    def _work(self) -> None:
        """The dispatch loop: hand pending items to idle workers, each run in a slot thread."""
        while True:
            with self._condition:
                while True:
                    if self._closed:
                        return
                    if self._free_requested:
                        break
                    placed = self._place()
                    if placed is not None:
                        break
                    # Woken by submit, a finished run and the backend's on_change; the timeout
                    # only bounds the cost of a missed wake-up.
                    self._condition.wait(1.0 if self._pending else None)
                free, self._free_requested = self._free_requested, {}
                if not free:
                    item, worker = placed  # type: ignore[misc]
                    self._pending.remove(item)
                    self._running[item.prompt_id] = item
                    self._worker_of[item.prompt_id] = worker
                    self._held[worker] = self._held.get(worker, frozenset()) | model_files(item.workflow)
                    slot = threading.Thread(target=self._run_slot, args=(item, worker), name=f"prompt-{worker}",
                                            daemon=True)
                    self._slots = [s for s in self._slots if s.is_alive()] + [slot]
                    slot.start()
            if free:
                self._free(free)

    def _place(self) -> tuple[QueueItem, str] | None:
        """The next (item, worker id) to start, or None (call with the lock held)."""
        if not self._pending:
            return None
        workers = self.backend.workers()
        busy = set(self._worker_of.values())
        for gone in set(self._held) - {w.worker_id for w in workers} - busy:
            del self._held[gone]  # a worker that left takes its loaded models with it
        idle = [w for w in workers if w.worker_id not in busy]
        placed = place(self._pending, idle, self._held)
        return None if placed is None else (placed[0], placed[1].worker_id)

    def _run_slot(self, item: QueueItem, worker: str) -> None:
        self._stored("mark_running", item.prompt_id)
        self._notify(None, None)
        try:
            entry = self._execute(item, worker)
        except WorkerLost as lost:
            lost_entry = self._lost(item, worker, lost)
            if lost_entry is None:
                return  # queued again (or left running in the store at shutdown)
            entry = lost_entry
        with self._condition:
            # Stopped mid-run (server shutdown): the store keeps it running, so the next
            # start queues it again instead of recording an interruption nobody asked for.
            shutdown = self._closed and entry.status == "interrupted"
        if not shutdown:
            self._record(entry)
        with self._condition:
            self._running.pop(item.prompt_id, None)
            self._worker_of.pop(item.prompt_id, None)
            self._requeued.pop(item.prompt_id, None)
            self._condition.notify_all()
        self._notify(None, None)
        self._notify(item, None)

    def _lost(self, item: QueueItem, worker: str, lost: WorkerLost) -> HistoryEntry | None:
        """``item``'s worker went away mid-run. The first time, the item is queued again (it
        keeps its place) and runs on another worker; the client is told by an error event. A
        second loss is recorded as an error; an interrupted item as interrupted. Returns the
        entry to record, or None when the item was queued again or the queue is stopping."""
        now = time.time()
        with self._condition:
            self._held.pop(worker, None)
            if self._closed and not item.cancel.is_set():
                self._running.pop(item.prompt_id, None)
                self._worker_of.pop(item.prompt_id, None)
                self._condition.notify_all()
                return None  # shutdown: the store keeps it running; the next start runs it
            again = item.prompt_id not in self._requeued and not item.cancel.is_set()
            if again:
                note = f"{lost}; queued again to run on another worker"
                self._running.pop(item.prompt_id, None)
                self._worker_of.pop(item.prompt_id, None)
                self._requeued[item.prompt_id] = (worker, {"message": note, "worker": worker, "timestamp": now})
                bisect.insort(self._pending, item, key=_queue_order)
                self._condition.notify_all()
            elif item.cancel.is_set():
                note = f"{lost} after it was interrupted"
            else:
                note = f"{lost}; not queued again: it had already been queued again once after losing a worker"
        log.warning("prompt %s: %s", item.prompt_id[:8], note)
        event = Event("run_failed", item.prompt_id, data={"message": f"WorkerLost: {note}", "worker": worker,
                                                           "requeued": again})
        self._notify(item, event)
        if again:
            self._notify(None, None)
            return None
        status: HistoryStatus = "interrupted" if item.cancel.is_set() else "error"
        messages = self._lost_messages(item) + (("run_failed", {**event.to_json(), "timestamp": now}),)
        return HistoryEntry(item, status, {}, messages, now, now, error={"message": note}, worker=worker)

    def _lost_messages(self, item: QueueItem) -> tuple[tuple[str, Mapping[str, Any]], ...]:
        with self._condition:
            requeued = self._requeued.get(item.prompt_id)
        return (("worker_lost", requeued[1]),) if requeued is not None else ()

    def _record(self, entry: HistoryEntry) -> None:
        with self._condition:
            self._history.pop(entry.item.prompt_id, None)  # a reused id: the new run is the newest
            self._history[entry.item.prompt_id] = entry
            while len(self._history) > self.history_limit:
                self._history.popitem(last=False)
            self._stored("finish", entry.item.prompt_id, _entry_record(entry))

    def _free(self, flags: Mapping[str, bool]) -> None:
        with self._condition:
            self._held.clear()  # the workers drop their loaded models
        try:
            self.backend.free(unload_models=flags.get("unload_models", False),
                              free_memory=flags.get("free_memory", False))
        except Exception:  # freeing memory must not stop the queue; it is logged
            log.exception("freeing memory failed")

    def _execute(self, item: QueueItem, worker: str) -> HistoryEntry:
        messages: list[tuple[str, Mapping[str, Any]]] = list(self._lost_messages(item))
        started = time.time()

        def on_event(event: Event) -> None:
            if event.type in ("run_started", "run_finished", "run_failed", "run_cancelled", "node_failed"):
                messages.append((event.type, {**event.to_json(), "timestamp": time.time()}))
            self._notify(item, event)

        # What nodes see of the submission (ctx.services): SaveImage writes ``prompt`` (the API
        # prompt as sent) and ``extra_pnginfo`` (ComfyUI's frontend puts the UI graph there
        # under "workflow") into its PNGs; ``workflow_document`` is our format.
        per_prompt = {"workflow_document": item.workflow_document, "prompt_id": item.prompt_id,
                      "prompt": item.prompt, "extra_data": item.public_extra_data(),
                      "extra_pnginfo": item.extra_data.get("extra_pnginfo"), "client_id": item.client_id}
        assert set(per_prompt) == set(PROMPT_SERVICE_KEYS)
        request = RunRequest(item.prompt_id, item.workflow, {**self.services, **per_prompt}, item.cancel)  # type: ignore[arg-type]
        try:
            result = self.backend.run(worker, request, on_event)
        except WorkerLost:
            raise
        except BaseException as error:  # the engine itself failed: record it, keep the worker alive
            message = f"{type(error).__name__}: {error}"
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            if isinstance(error, WorkerRunError) and error.remote_traceback:
                message, text = str(error), error.remote_traceback
            event = Event("run_failed", item.prompt_id, data={"message": message, "traceback": text})
            on_event(event)
            return HistoryEntry(item, "error", {}, tuple(messages), started, time.time(),
                                error={"message": message, "traceback": text}, worker=worker)
        status: HistoryStatus = {"success": "success", "failed": "error",
                                 "cancelled": "interrupted"}[result.status]
        error: dict[str, Any] | None = None
        if result.failure is not None:
            failure = result.failure
            error = {"node_id": failure.node_id, "node_type": failure.node_type, "message": failure.message,
                     "traceback": failure.traceback, "inputs": dict(failure.inputs)}
        return HistoryEntry(item, status, dict(result.outputs), tuple(messages), started, time.time(),
                            result.executed, result.cached, error, worker)

    def _notify(self, item: QueueItem | None, event: Event | None) -> None:
        try:
            self.listener(item, event)
        except Exception:  # a broken listener must not stop the queue; it is logged
            log.exception("queue listener failed")


def _queue_order(item: QueueItem) -> tuple[float, int]:
    return (item.number, item.sequence)


# ---------------------------------------------------------------------- store records


def _stored_from_item(item: QueueItem) -> StoredPrompt:
    return StoredPrompt(item.prompt_id, item.number, item.sequence, item.prompt, item.submitted_at, item.client_id,
                        item.document, item.extra_data, item.outputs)


def _item_from_stored(stored: StoredPrompt, workflow: Workflow | None) -> QueueItem:
    return QueueItem(stored.prompt_id, stored.number, workflow, stored.prompt, stored.client_id,
                     dict(stored.extra_data), tuple(stored.outputs), stored.document, stored.submitted_at,
                     stored.sequence)


def _entry_record(entry: HistoryEntry) -> dict[str, Any]:
    """What a history entry holds beyond its prompt, as JSON for the store."""
    return {"status": entry.status, "outputs": {k: dict(v) for k, v in entry.outputs.items()},
            "messages": [[kind, dict(data)] for kind, data in entry.messages], "started_at": entry.started_at,
            "finished_at": entry.finished_at, "executed": list(entry.executed), "cached": list(entry.cached),
            "error": dict(entry.error) if entry.error else None, "worker": entry.worker}


def _entry_from_record(item: QueueItem, record: Mapping[str, Any]) -> HistoryEntry:
    return HistoryEntry(item, record["status"], record["outputs"],
                        tuple((kind, data) for kind, data in record["messages"]), record["started_at"],
                        record["finished_at"], tuple(record["executed"]), tuple(record["cached"]), record["error"],
                        record.get("worker"))
