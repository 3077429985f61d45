"""``--ray ADDRESS``: one Ray actor per worker, each with its own model cache and executor.

``ray`` is imported here only (``pip install -e '.[ray]'``). ``ADDRESS`` is what
``ray.init(address=...)`` takes (``auto``, ``ray://head:10001``...); ``local`` starts a Ray
instance in this process. Ray's token authentication (on by default since 2.52) is left
as Ray configures it: clients of the cluster need its token (``RAY_AUTH_TOKEN`` or
``~/.ray/auth_token``), while our ``--auth-token`` guards the HTTP side.

A run is an actor method that yields its events and then its result (a Ray streaming
generator): they reach the queue in order. Interrupts call the actor's ``cancel`` (the
actor runs two methods at once: a run and a cancel). An actor that dies mid-run raises
``RayActorError`` here: the prompt is reported lost (the queue runs it again on another
worker) and a new actor takes the dead one's place. Without a fixed ``count`` the backend
sizes itself by the cluster: one actor per ``num_gpus`` GPUs (or ``num_cpus`` CPUs), and a
watcher looks at the cluster's resources every ``poll_s`` seconds, so that a machine that
joins later (``ray start --address=HEAD``) gets actors and work.

Output files (:mod:`cluster.files`): with ``setup.files="send"`` (``serve --ray``'s
default) an actor writes each run into a scratch folder of its machine and yields the
files it wrote, in chunks, after the run's events; the server lands them in
``server_settings``' folders. With ``"shared"`` actors write into the server's output
folder, which must then be storage every machine shares.

Start-up does not hold the server: ``ray.init`` (about 2-10 s) and the actors' start run in
a thread of their own. Ray 2.60 allows ``ray.init`` off the main thread (it then only skips
its SIGTERM handler, with a warning; the server handles SIGTERM itself), but that thread
must live on: once the thread that called ``ray.init`` has ended, new actors of the driver
are never placed (seen with 2.60: ``ray.get`` of their first call times out). So the
thread stays, as the watcher of the cluster's size (or idle) until :meth:`stop`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from cluster.files import FilePart, Landing, remove_folder
from cluster.worker import WorkerRuntime, WorkerSetup, portable_event, portable_services
from engine.backends import RunRequest, WorkerInfo, WorkerLost, WorkerRunError
from engine.scheduler import Event, RunResult
from engine.settings import Settings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class RayWorker:
    """The actor: a :class:`WorkerRuntime` plus the cancel event of the prompt it runs."""

    def __init__(self, setup: WorkerSetup, worker_id: str = "ray") -> None:
        self.runtime = WorkerRuntime(setup, worker_id)
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def info(self) -> tuple[int, str]:
        return os.getpid(), socket.gethostname()

    def run(self, prompt_id: str, workflow: Any, services: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        """Yields ``("event", Event)``... (``("file", FilePart)``... after them with
        ``files="send"``) then ``("result", RunResult)``."""
        with self._lock:
            cancel = self._cancels.setdefault(prompt_id, threading.Event())
        events: list[tuple[str, Any]] = []
        done = threading.Event()
        outcome: dict[str, Any] = {}
        wake = threading.Condition()

        def emit(event: Event) -> None:
            with wake:
                events.append(("event", portable_event(event)))
                wake.notify()

        def send_file(part: FilePart) -> None:
            with wake:
                events.append(("file", part))
                wake.notify()

        def work() -> None:
            try:
                outcome["result"] = self.runtime.run(prompt_id, workflow, services, emit, cancel, send_file)
            except BaseException as error:  # reported to the server as an engine failure
                outcome["error"] = error
            with wake:
                done.set()
                wake.notify()

        # The executor runs in a thread so that events can be yielded while it works.
        threading.Thread(target=work, name=f"run-{prompt_id[:8]}", daemon=True).start()
        try:
            while True:
                with wake:
                    while not events and not done.is_set():
                        wake.wait()
                    batch, events[:] = list(events), []
                    finished = done.is_set()
                for item in batch:
                    yield item
                if finished:
                    break
        finally:
            with self._lock:
                self._cancels.pop(prompt_id, None)
        if "error" in outcome:
            raise outcome["error"]
        yield "result", outcome["result"]

    def cancel(self, prompt_id: str) -> None:
        with self._lock:
            self._cancels.setdefault(prompt_id, threading.Event()).set()

    def free(self, unload_models: bool, free_memory: bool) -> None:
        self.runtime.free(unload_models, free_memory)

    def close(self) -> None:
        """Remove the scratch folder (``files="send"``) before the actor is killed."""
        if self.runtime.folder is not None:
            remove_folder(self.runtime.folder)


class RayWorkers:
    """An execution backend (``engine.backends.Backend``) of Ray actors."""

    def __init__(self, setup: WorkerSetup, address: str, count: int | None = None, max_restarts: int | None = None,
                 num_cpus: float = 1.0, num_gpus: float = 0.0, poll_s: float = 5.0,
                 server_settings: Settings | None = None) -> None:
        import ray  # noqa: F401  (fail at start-up, with pip's hint, when the extra is missing)

        if count is not None and count < 1:
            raise ValueError(f"--workers must be at least 1, got {count}")
        self.setup, self.address, self.count = setup, address, count
        self.server_settings = server_settings or setup.settings
        # files="send": per worker, the names its files got here (its cached UI names them again)
        self._known: dict[str, dict[tuple[str, str], Path]] = {}
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self._actors: dict[str, Any] = {}  # worker id -> actor handle (ready or starting)
        self._ready: dict[str, WorkerInfo] = {}
        self._lock = threading.Condition()
        self._numbered = 0
        self._restarts_left = max_restarts
        self._on_change: Callable[[], None] = lambda: None
        self._stopping = False
        self._owns_ray = False
        self._starter: threading.Thread | None = None
        self._started = threading.Event()  # connected and the first actors asked for (or failed)
        self._poll_s = poll_s
        self._stopped = threading.Event()
        self.start_errors: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self, on_change: Callable[[], None]) -> None:
        """Connect (or start Ray for ``local``) and start the actors, in a thread: a server
        answers while Ray connects and the actors load (:meth:`wait_ready` waits for them)."""
        self._on_change = on_change
        self._starter = threading.Thread(target=self._connect_and_start, name="ray-start", daemon=True)
        self._starter.start()

    def _connect_and_start(self) -> None:
        """The thread that calls ``ray.init``; it lives until :meth:`stop` (see above)."""
        began = time.perf_counter()
        try:
            if not self._connect() or self._stopped.is_set():
                return
            log.info("connected to the Ray cluster at %s in %.1fs", self.address, time.perf_counter() - began)
            started = self._start()
        finally:
            self._started.set()
        if started and self.count is None:
            self._watch_capacity()
        else:
            self._stopped.wait()

    def _connect(self) -> bool:
        import ray

        try:
            if not ray.is_initialized():
                env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                                                os.environ.get("PYTHONPATH")]))}}
                if self.address == "local":
                    ray.init(num_cpus=self.count or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                             runtime_env=env)
                    self._owns_ray = True
                else:
                    ray.init(address=self.address, log_to_driver=False, runtime_env=env)
            return True
        except Exception as error:  # reported by wait_ready and the log; the server keeps answering
            log.exception("could not connect to the Ray cluster at %s", self.address)
            with self._lock:
                self.start_errors.append(f"{type(error).__name__}: {error}")
                self._lock.notify_all()
            return False

    def capacity(self) -> int:
        """How many actors the cluster's resources hold now (GPUs when a worker takes GPUs)."""
        import ray

        resources = ray.cluster_resources()
        if self.num_gpus > 0:
            return int(resources.get("GPU", 0) // self.num_gpus)
        return max(1, int(resources.get("CPU", 1) // self.num_cpus))

    def _start(self) -> bool:
        try:
            count = self.count or self.capacity()
            if self._restarts_left is None:
                self._restarts_left = 2 * count
            for _ in range(count):
                self._spawn()
        except Exception as error:  # reported by wait_ready and the log; the server keeps answering
            log.exception("could not start the Ray workers at %s", self.address)
            with self._lock:
                self.start_errors.append(f"{type(error).__name__}: {error}")
                self._lock.notify_all()
            return False
        return True

    def _watch_capacity(self) -> None:
        """Start actors for machines that join the cluster later (on the starter thread)."""
        while not self._stopped.wait(self._poll_s):
            try:
                missing = self.capacity() - len(self._actors)
            except Exception:  # the cluster is unreachable for a moment: look again later
                log.debug("reading the Ray cluster's resources failed", exc_info=True)
                continue
            if missing > 0:
                log.info("the Ray cluster grew: starting %d more worker(s)", missing)
            for _ in range(max(0, missing)):
                if self._stopped.is_set():
                    return
                self._spawn()

    def _spawn(self) -> None:
        import ray

        with self._lock:
            self._numbered += 1
            worker_id = f"ray-{self._numbered}"
        actor_class = ray.remote(RayWorker).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                    max_concurrency=2, max_restarts=0,
                                                    name=None, lifetime=None)
        actor = actor_class.remote(self.setup, worker_id)
        with self._lock:
            self._actors[worker_id] = actor
        threading.Thread(target=self._await_ready, args=(worker_id, actor), name=f"ready-{worker_id}",
                         daemon=True).start()

    def _await_ready(self, worker_id: str, actor: Any) -> None:
        import ray

        try:
            pid, host = ray.get(actor.info.remote())
        except Exception as error:  # the actor could not build its registry, or died
            with self._lock:
                self._actors.pop(worker_id, None)
                self.start_errors.append(f"worker {worker_id}: {error}")
                self._lock.notify_all()
            log.error("Ray worker %s could not start: %s", worker_id, error)
            return
        with self._lock:
            if worker_id in self._actors:
                self._ready[worker_id] = WorkerInfo(worker_id, "ray", host, pid)
            self._lock.notify_all()
        log.info("Ray worker %s ready (pid %s on %s)", worker_id, pid, host)
        self._on_change()

    def wait_ready(self, timeout: float = 120.0) -> list[WorkerInfo]:
        deadline = time.monotonic() + timeout
        if self._starter is not None:
            self._started.wait(timeout)
        with self._lock:
            while set(self._actors) - set(self._ready) and time.monotonic() < deadline:
                self._lock.wait(max(0.0, min(0.5, deadline - time.monotonic())))
            ready = list(self._ready.values())
            if not ready and self.start_errors:
                raise RuntimeError(f"no Ray worker could start: {self.start_errors[0]}")
            return ready

    def stop(self, timeout: float = 10.0) -> None:
        import ray

        self._stopped.set()
        with self._lock:
            self._stopping = True
            actors = list(self._actors.values())
            self._actors.clear()
            self._ready.clear()
        if self._starter is not None:
            self._starter.join(timeout)
        with self._lock:  # actors the starter made while we waited for it
            actors += list(self._actors.values())
            self._actors.clear()
            self._ready.clear()
        if not ray.is_initialized():
            return
        if self.setup.files == "send" and actors:
            try:  # the scratch folders: ray.kill gives the actors no exit of their own
                ray.get([actor.close.remote() for actor in actors], timeout=5)
            except Exception:
                log.debug("a Ray worker did not remove its scratch folder", exc_info=True)
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already dead
                log.debug("killing a Ray worker failed", exc_info=True)
        if self._owns_ray:
            ray.shutdown()

    # ------------------------------------------------------------------ Backend

    def workers(self) -> list[WorkerInfo]:
        with self._lock:
            return list(self._ready.values())

    def status(self) -> dict[str, Any]:
        """Where start-up is, for a status display: ``state`` (connecting, starting, ready,
        failed), the ready and starting worker ids and the last start errors."""
        with self._lock:
            starting = sorted(set(self._actors) - set(self._ready))
            if not self._started.is_set():
                state = "connecting"
            elif self._ready:
                state = "ready"
            else:
                state = "starting" if starting else "failed"
            return {"state": state, "ready": sorted(self._ready), "starting": starting,
                    "errors": list(self.start_errors[-5:])}

    def actor(self, worker_id: str) -> Any:
        """The actor handle of a worker (tests kill it with ``ray.kill``)."""
        with self._lock:
            return self._actors[worker_id]

    def run(self, worker_id: str, request: RunRequest, on_event: Callable[[Event], None]) -> RunResult:
        import ray

        with self._lock:
            actor = self._actors.get(worker_id)
        if actor is None:
            raise WorkerLost(worker_id, "it was gone before the prompt reached it")
        stream = actor.run.options(num_returns="streaming").remote(
            request.prompt_id, request.workflow, portable_services(request.services))
        finished = threading.Event()
        landing = None
        if self.setup.files == "send":
            landing = Landing.for_settings(self.server_settings, self.setup.files_limit,
                                           self._known.setdefault(worker_id, {}))
        landed = False

        def pass_on_interrupt() -> None:  # only this prompt's actor hears it
            while not finished.is_set():
                if request.cancel.wait(0.05):
                    try:
                        actor.cancel.remote(request.prompt_id)
                    except Exception:
                        log.debug("cancel did not reach %s", worker_id, exc_info=True)
                    return

        threading.Thread(target=pass_on_interrupt, name=f"cancel-{worker_id}", daemon=True).start()
        try:
            for reference in stream:
                kind, value = ray.get(reference)
                if kind == "event":
                    on_event(value)
                elif kind == "file":
                    if landing is None:
                        raise WorkerRunError(f"worker {worker_id} sent a file, but files are shared")
                    try:
                        landing.add(value)
                    except (OSError, ValueError, RuntimeError) as error:
                        raise WorkerRunError(f"the files worker {worker_id} sent back could not be stored: "
                                             f"{type(error).__name__}: {error}") from None
                else:
                    landed = True
                    if landing is None:
                        return value
                    return dataclasses.replace(value, outputs=landing.rewrite(value.outputs))
            raise WorkerRunError(f"worker {worker_id} ended the run without a result")
        except ray.exceptions.RayActorError as error:
            self._lost(worker_id, actor)
            raise WorkerLost(worker_id, f"the Ray actor died: {type(error).__name__}") from None
        except ray.exceptions.RayTaskError as error:
            raise WorkerRunError(f"{type(error.cause).__name__}: {error.cause}" if error.cause else str(error),
                                 str(error)) from None
        finally:
            finished.set()
            if landing is not None and not landed:
                landing.abort()

    def free(self, *, unload_models: bool, free_memory: bool) -> None:
        with self._lock:
            actors = [self._actors[w] for w in self._ready]
        for actor in actors:
            actor.free.remote(unload_models, free_memory)

    def _lost(self, worker_id: str, actor: Any) -> None:
        with self._lock:
            if self._actors.get(worker_id) is not actor:
                return
            self._actors.pop(worker_id, None)
            self._ready.pop(worker_id, None)
            replace = not self._stopping and (self._restarts_left or 0) > 0
            if replace:
                self._restarts_left = (self._restarts_left or 0) - 1
        log.warning("Ray worker %s died%s", worker_id, "; starting another in its place" if replace else "")
        if replace:
            self._spawn()
        self._on_change()
