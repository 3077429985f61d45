"""``--workers N``: N worker processes on this machine, behind the queue.

Each worker is a spawned process (:func:`cluster.worker.process_main`) with its own
registry, model cache and executor, talking to the server over a pipe; a reader thread per
worker forwards its events, in order, to the queue. By default (``files="shared"``) the
workers write outputs into the installation's output folder themselves. A worker that dies is noticed by
its pipe closing: the prompt it ran is reported lost (the queue runs it again elsewhere)
and a new worker is started in its place (bounded, so a crash loop ends). With
``setup.files="send"`` the workers write into scratch folders and send their files back
(:mod:`cluster.files`); the server lands them in ``server_settings``' folders. The server
makes each worker's scratch folder (owned by the server and the worker) and removes it when
the worker is gone, however it ended; at start it removes the folders that workers of a
server that was killed left behind (:func:`cluster.files.remove_stale_scratch`).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cluster.files import Landing, remove_folder, remove_stale_scratch, scratch_folder, write_owners
from cluster.worker import WorkerSetup, describe_exit, portable_services, process_main
from engine.backends import RunRequest, WorkerInfo, WorkerLost, WorkerRunError
from engine.scheduler import Event, RunResult
from engine.settings import Settings

log = logging.getLogger(__name__)


class WorkerStartError(RuntimeError):
    """No worker could start (its registry or nodes failed to load)."""


@dataclass
class _Call:
    prompt_id: str
    on_event: Callable[[Event], None]
    done: threading.Event = field(default_factory=threading.Event)
    result: RunResult | None = None
    error: tuple[str, str] | None = None
    lost: str | None = None
    landing: Landing | None = None  # files="send": where the run's files go
    landing_error: str | None = None


@dataclass
class _Worker:
    worker_id: str
    process: Any  # multiprocessing.Process (spawn context)
    conn: Any  # its end of the pipe
    info: WorkerInfo | None = None  # set when the worker said it is ready
    alive: bool = True
    call: _Call | None = None
    folder: Path | None = None  # files="send": its scratch folder, removed when it is gone
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: tuple[Any, ...]) -> None:
        with self.send_lock:
            self.conn.send(message)


class LocalWorkers:
    """An execution backend (``engine.backends.Backend``) of ``count`` local processes."""

    def __init__(self, setup: WorkerSetup, count: int, *, max_restarts: int | None = None,
                 server_settings: Settings | None = None) -> None:
        if count < 1:
            raise ValueError(f"--workers must be at least 1, got {count}")
        self.setup = setup
        self.server_settings = server_settings or setup.settings
        # files="send": per worker, the names its files got here (its cached UI names them again)
        self._known: dict[str, dict[tuple[str, str], Path]] = {}
        self.count = count
        self._context = multiprocessing.get_context("spawn")  # no fork: threads and torch state stay behind
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._numbered = 0
        self._restarts_left = 2 * count if max_restarts is None else max_restarts
        self._on_change: Callable[[], None] = lambda: None
        self._stopping = False
        self.start_errors: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        if self.setup.files == "send":
            remove_stale_scratch(self.setup.scratch)  # a killed server's workers' (never a live one's)
        with self._lock:
            self._stopping = False
            missing = self.count - len(self._workers)
        for _ in range(missing):
            self._spawn()

    def wait_ready(self, timeout: float = 120.0) -> list[WorkerInfo]:
        """Block until every worker is ready (or none can start); the ready ones.

        Raises :class:`WorkerStartError` with the first worker's error when none started."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                ready = [w.info for w in self._workers.values() if w.info is not None and w.alive]
                starting = [w for w in self._workers.values() if w.info is None and w.alive]
                if not starting or time.monotonic() >= deadline:
                    break
                self._changed.wait(max(0.0, min(0.5, deadline - time.monotonic())))
        if not ready and self.start_errors:
            raise WorkerStartError(f"no worker could start: {self.start_errors[0]}")
        return ready

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            workers = list(self._workers.values())
        for worker in workers:
            try:
                worker.send(("stop",))
            except (OSError, ValueError):
                pass  # already gone
        deadline = time.monotonic() + timeout
        for worker in workers:
            # join can return while the process still exits (its sentinel reads ready first):
            # poll until it is gone or the time is up
            while worker.process.is_alive() and time.monotonic() < deadline:
                worker.process.join(min(0.1, max(0.0, deadline - time.monotonic())))
            if worker.process.is_alive():
                log.warning("worker %s did not stop within %.0fs; killing it", worker.worker_id, timeout)
                worker.process.kill()
                worker.process.join(5)
            self._remove_folder(worker)  # its reader does too, maybe later than this returns

    def _spawn(self) -> None:
        with self._lock:
            self._numbered += 1
            worker_id = f"process-{self._numbered}"
        folder = scratch_folder(self.setup.scratch, worker_id) if self.setup.files == "send" else None
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(target=process_main, args=(theirs, worker_id, self.setup, folder),
                                        name=f"latentflow-{worker_id}", daemon=True)
        try:
            process.start()
        except BaseException:
            if folder is not None:
                remove_folder(folder)
            raise
        theirs.close()  # only the child holds it now: its death closes the pipe for our reader
        if folder is not None:  # kept while the worker runs, even should this server be killed
            write_owners(folder, (os.getpid(), process.pid))
        worker = _Worker(worker_id, process, ours, folder=folder)
        with self._lock:
            self._workers[worker_id] = worker
        threading.Thread(target=self._read, args=(worker,), name=f"reader-{worker_id}", daemon=True).start()

    # ------------------------------------------------------------------ Backend

    def workers(self) -> list[WorkerInfo]:
        with self._lock:
            return [w.info for w in self._workers.values() if w.info is not None and w.alive]

    def status(self) -> dict[str, Any]:
        """As ``RayWorkers.status``: ``state`` (starting, ready, failed) and the worker ids."""
        with self._lock:
            ready = sorted(w.worker_id for w in self._workers.values() if w.info is not None and w.alive)
            starting = sorted(w.worker_id for w in self._workers.values() if w.info is None and w.alive)
            state = "ready" if ready else ("starting" if starting else "failed")
            return {"state": state, "ready": ready, "starting": starting, "errors": list(self.start_errors[-5:])}

    def run(self, worker_id: str, request: RunRequest, on_event: Callable[[Event], None]) -> RunResult:
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None or not worker.alive:
                raise WorkerLost(worker_id, "it was gone before the prompt reached it")
            if worker.call is not None:
                raise RuntimeError(f"worker {worker_id} is already running {worker.call.prompt_id}")
            call = worker.call = _Call(request.prompt_id, on_event)
            if self.setup.files == "send":
                call.landing = Landing.for_settings(self.server_settings, self.setup.files_limit,
                                                    self._known.setdefault(worker_id, {}))
        try:
            try:
                worker.send(("run", request.prompt_id, request.workflow, portable_services(request.services)))
            except (OSError, ValueError):
                call.done.wait(5.0)  # its reader sees the pipe close and says why
                raise WorkerLost(worker_id, call.lost or "its pipe is closed") from None
            cancel_sent = False
            while not call.done.wait(0.05):
                if request.cancel.is_set() and not cancel_sent:
                    cancel_sent = True  # an interrupt: only this worker hears it
                    try:
                        worker.send(("cancel", request.prompt_id))
                    except (OSError, ValueError):
                        pass  # it died; the reader reports it
        finally:
            with self._lock:
                worker.call = None
            if call.landing is not None and (call.result is None or call.landing_error):
                call.landing.abort()
        if call.lost is not None:
            raise WorkerLost(worker_id, call.lost)
        if call.error is not None:
            raise WorkerRunError(*call.error)
        if call.landing_error is not None:
            raise WorkerRunError(f"the files worker {worker_id} sent back could not be stored: {call.landing_error}")
        assert call.result is not None
        if call.landing is not None:
            return dataclasses.replace(call.result, outputs=call.landing.rewrite(call.result.outputs))
        return call.result

    def free(self, *, unload_models: bool, free_memory: bool) -> None:
        with self._lock:
            workers = [w for w in self._workers.values() if w.alive and w.info is not None]
        for worker in workers:  # each frees between its prompts
            try:
                worker.send(("free", unload_models, free_memory))
            except (OSError, ValueError):
                pass

    # ------------------------------------------------------------------ reader

    def _read(self, worker: _Worker) -> None:
        try:
            while True:
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    return
                except Exception:  # a message we cannot unpickle: reported, the pipe is still good
                    log.exception("worker %s sent a message that could not be read", worker.worker_id)
                    continue
                self._dispatch(worker, message)
        finally:
            self._gone(worker)

    def _dispatch(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            with self._changed:
                worker.info = WorkerInfo(worker.worker_id, "process", str(message[2]), int(message[1]))
                self._changed.notify_all()
            log.info("worker %s ready (pid %s)", worker.worker_id, message[1])
            self._on_change()
        elif kind == "failed":
            with self._changed:
                self.start_errors.append(str(message[1]))
                self._changed.notify_all()
            log.error("worker %s could not start: %s\n%s", worker.worker_id, message[1], message[2])
        elif kind in ("event", "file", "result", "error"):
            call = worker.call
            if call is None or call.prompt_id != message[1]:
                log.warning("worker %s: a %s for prompt %s, which it is not running", worker.worker_id, kind,
                            message[1])
                return
            if kind == "event":
                try:
                    call.on_event(message[2])
                except Exception:  # the queue's listener failing must not stop this reader
                    log.exception("forwarding an event of worker %s failed", worker.worker_id)
                return
            if kind == "file":
                if call.landing is None or call.landing_error is not None:
                    return
                try:
                    call.landing.add(message[2])
                except (OSError, ValueError, RuntimeError) as error:  # reported with the result
                    call.landing_error = f"{type(error).__name__}: {error}"
                    log.error("storing a file of worker %s failed: %s", worker.worker_id, call.landing_error)
                return
            if kind == "result":
                call.result = message[2]
            else:
                call.error = (str(message[2]), str(message[3]))
            call.done.set()

    def _gone(self, worker: _Worker) -> None:
        """The worker's pipe closed: it exited or was killed."""
        deadline = time.monotonic() + 2.0
        while worker.process.exitcode is None and time.monotonic() < deadline:  # see stop: join may return early
            worker.process.join(0.1)
        worker.conn.close()
        reason = describe_exit(worker.process.exitcode)
        self._remove_folder(worker)
        with self._changed:
            worker.alive = False
            self._workers.pop(worker.worker_id, None)
            call, stopping = worker.call, self._stopping
            replace = not stopping and worker.info is not None and self._restarts_left > 0
            if replace:
                self._restarts_left -= 1
            self._changed.notify_all()
        if call is not None:
            call.lost = reason
            call.done.set()
        if worker.info is None and not stopping:
            with self._changed:
                self.start_errors.append(f"worker {worker.worker_id} stopped while starting ({reason})")
                self._changed.notify_all()
        if not stopping:
            log.warning("worker %s stopped (%s)%s", worker.worker_id, reason,
                        "; starting another in its place" if replace else "")
        if replace:
            self._spawn()
        self._on_change()

    def _remove_folder(self, worker: _Worker) -> None:
        """Remove the scratch folder of ``worker`` once its process has exited; one still
        running keeps it (its owner file names it, so a later start removes it when gone)."""
        if worker.folder is None:
            return
        if worker.process.exitcode is None:
            log.warning("worker %s still runs; its scratch folder %s stays", worker.worker_id, worker.folder)
            return
        remove_folder(worker.folder)
