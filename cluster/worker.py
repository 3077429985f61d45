"""A worker: one registry, one model cache, one executor, one prompt at a time.

Local worker processes (:mod:`cluster.local`) and Ray actors (:mod:`cluster.ray_backend`)
both build a :class:`WorkerRuntime` from a picklable :class:`WorkerSetup`. What crosses the
process boundary is plain data: the validated workflow, the per-prompt services
(:data:`engine.backends.PROMPT_SERVICE_KEYS`), events and the run's result.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from cluster.files import DEFAULT_LIMIT_BYTES, FilePart, WorkerFiles, changed_files, file_parts, \
    leave_placeholders, remove_folder, remove_stale_scratch, scratch_folder, scratch_services, written_files
from engine.backends import PROMPT_SERVICE_KEYS
from engine.cache import ResultCache
from engine.registry import NodeRegistry
from engine.scheduler import Event, Executor, RunResult
from engine.settings import Settings
from engine.workflow import Workflow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSetup:
    """How a worker builds its registry and executor; pickled into each worker.

    ``build_registry(custom_nodes=..., settings=...)`` is ``main.build_registry`` for the
    server and the CLI (a module-level function, so it pickles by name). ``threads`` bounds
    the torch/OpenMP threads of each worker (None: leave the default). ``files``: where
    the worker's output files go (:mod:`cluster.files`): ``shared``, straight into
    ``settings.output_dir``; ``send``, into a folder of the worker's under ``scratch``
    (default: the system's temp folder), then back to the server, at most ``files_limit``
    bytes a run."""

    build_registry: Callable[..., NodeRegistry]
    settings: Settings
    custom_nodes: Path | None = None
    threads: int | None = None
    files: WorkerFiles = "shared"
    scratch: Path | None = None
    files_limit: int = DEFAULT_LIMIT_BYTES

    def build_executor(self) -> Executor:
        registry = self.build_registry(custom_nodes=self.custom_nodes, settings=self.settings)
        return Executor(registry, ResultCache.for_registry(registry, self.settings),
                        services={"settings": self.settings, "output_dir": self.settings.output_dir})


def limit_threads(threads: int | None) -> None:
    """Bound the OpenMP/MKL (and torch, when already imported) threads of this process: N
    workers on N cores each take one, instead of all of them fighting over every core."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as main.py: see the note there
    if threads is None:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


class WorkerRuntime:
    """The worker's state: its executor (with its own model cache) and what it runs."""

    def __init__(self, setup: WorkerSetup, worker_id: str = "worker", folder: Path | None = None) -> None:
        """``folder``: the scratch folder (``files="send"``) when the caller made it (a local
        server makes each worker's, and removes it when the worker dies); else the worker
        makes its own, after removing those that stopped workers on this host left."""
        limit_threads(setup.threads)
        self.setup = setup
        self.worker_id = worker_id
        self.executor = setup.build_executor()
        limit_threads(setup.threads)  # torch is imported by now when the nodes use it
        self.folder: Path | None = None
        if setup.files == "send":
            if folder is None:
                remove_stale_scratch(setup.scratch)
                folder = scratch_folder(setup.scratch, worker_id)
            self.folder = folder
            atexit.register(remove_folder, self.folder)  # a killed worker's: see cluster.files

    def run(self, prompt_id: str, workflow: Workflow, services: Mapping[str, Any],
            emit: Callable[[Event], None], cancel: threading.Event,
            send_file: Callable[[FilePart], None] | None = None) -> RunResult:
        """Run one prompt. With ``files="send"`` it writes into the worker's scratch folder,
        and every file it added there reaches ``send_file`` (in chunks) before this returns
        (then only an empty placeholder stays)."""
        own = dict(services)
        wanted = bool(own.pop("preview_wanted", False))
        own["preview_wanted"] = lambda: wanted
        folder = self.folder
        if folder is None:
            return self.executor.run(workflow, on_event=emit, cancel=cancel, run_id=prompt_id, services=own)
        if send_file is None:
            raise ValueError("a worker with files='send' needs somewhere to send its files")
        before = written_files(folder)
        try:
            result = self.executor.run(workflow, on_event=emit, cancel=cancel, run_id=prompt_id,
                                       services=scratch_services(own, self.setup.settings, folder))
            for part in file_parts(folder, self.setup.files_limit, worker=f"worker {self.worker_id}", before=before):
                send_file(part)
            return result
        finally:
            leave_placeholders(folder, changed_files(folder, before))

    def free(self, unload_models: bool, free_memory: bool) -> None:
        self.executor.free(unload_models=unload_models, free_memory=free_memory)


def portable_services(services: Mapping[str, Any]) -> dict[str, Any]:
    """What a remote worker gets of a prompt's services: the per-prompt data, and whether a
    client watches previews now (a flag; the server's callable cannot cross processes)."""
    out = {key: services.get(key) for key in PROMPT_SERVICE_KEYS}
    wanted = services.get("preview_wanted")
    out["preview_wanted"] = bool(wanted()) if callable(wanted) else bool(wanted)
    return out


def portable_event(event: Event) -> Event:
    """``event`` if it pickles; else the same event with only its JSON data and a preview as
    PNG bytes (a node may put anything in its event data)."""
    try:
        pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL)
        return event
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):
        data = dict(event.to_json().get("data", {}))
        preview = event.data.get("preview")
        if preview is not None and hasattr(preview, "save"):
            import io

            buffer = io.BytesIO()
            preview.save(buffer, format="PNG")
            data["preview"] = buffer.getvalue()
        return replace(event, data=data)


def describe_exit(code: int | None) -> str:
    """A process's exit code in words."""
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"it exited with status {code}"


# ---------------------------------------------------------------------- worker process


def process_main(conn: Any, worker_id: str, setup: WorkerSetup, folder: Path | None = None) -> None:
    """A local worker process (multiprocessing spawn): build the runtime, then serve ``conn``.
    ``folder``: its scratch folder, made by the server (``files="send"``).

    In: ``("run", prompt_id, workflow, services)``, ``("cancel", prompt_id)``,
    ``("free", unload_models, free_memory)``, ``("stop",)``. Out: ``("ready", pid, host)`` or
    ``("failed", message, traceback)``, then per run ``("event", prompt_id, event)``..., with
    ``files="send"`` ``("file", prompt_id, FilePart)``..., and one
    ``("result", prompt_id, RunResult)`` or ``("error", prompt_id, message, traceback)``.
    A reader thread takes cancels while the main thread runs a prompt.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's: it stops us in order
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s {worker_id} %(name)s: %(message)s")
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    try:
        runtime = WorkerRuntime(setup, worker_id, folder)
    except BaseException as error:  # reported to the server, which does not restart us
        send(("failed", f"{type(error).__name__}: {error}",
              "".join(traceback.format_exception(type(error), error, error.__traceback__))))
        return
    send(("ready", os.getpid(), socket.gethostname()))

    inbox: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
    state_lock = threading.Lock()
    current: dict[str, Any] = {"prompt_id": None, "cancel": None}
    cancelled: set[str] = set()  # cancels that came before their run started

    def read() -> None:
        try:
            while True:
                message = conn.recv()
                if message[0] == "cancel":
                    with state_lock:
                        if current["prompt_id"] == message[1]:
                            current["cancel"].set()
                        else:
                            cancelled.add(message[1])
                elif message[0] == "stop":
                    break
                else:
                    inbox.put(message)
        except (EOFError, OSError):
            pass  # the server is gone: finish the running prompt, then stop
        inbox.put(None)

    threading.Thread(target=read, name="worker-inbox", daemon=True).start()
    try:
        while (message := inbox.get()) is not None:
            if message[0] == "run":
                _, prompt_id, workflow, services = message
                cancel = threading.Event()
                with state_lock:
                    current.update(prompt_id=prompt_id, cancel=cancel)
                    if prompt_id in cancelled:
                        cancelled.discard(prompt_id)
                        cancel.set()
                try:
                    result = runtime.run(prompt_id, workflow, services,
                                         lambda event: send(("event", prompt_id, portable_event(event))), cancel,
                                         lambda part: send(("file", prompt_id, part)))
                    send(("result", prompt_id, result))
                except (BrokenPipeError, EOFError):
                    raise
                except BaseException as error:  # the engine failed, not a node: reported, we go on
                    send(("error", prompt_id, f"{type(error).__name__}: {error}",
                          "".join(traceback.format_exception(type(error), error, error.__traceback__))))
                with state_lock:
                    current.update(prompt_id=None, cancel=None)
            elif message[0] == "free":
                runtime.free(bool(message[1]), bool(message[2]))
    except (BrokenPipeError, EOFError, OSError):
        pass  # the server went away mid-run
