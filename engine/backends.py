"""Execution backends: where the queue's prompts run.

The queue (:mod:`engine.queue`) keeps the order, the history and the store; a backend owns
the workers that run prompts. A worker holds one model cache and one executor and runs
one prompt at a time, so a backend with N workers gives the queue N slots:

- :class:`InProcessBackend` (the default): one worker, the server's own executor, run in a
  thread of this process. No extra imports; today's behaviour.
- ``cluster.local.LocalWorkers``: N worker processes on this machine.
- ``cluster.ray_backend.RayWorkers``: one Ray actor per worker, on a Ray cluster.

Placement is the engine's (:func:`place`): a prompt goes to an idle worker that already
holds its models (checkpoint and LoRA file names, :func:`model_files`), else to the least
loaded idle worker. Nothing here imports torch, aiohttp or ray.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Protocol, Sequence

from engine.scheduler import Event, RunResult
from engine.workflow import Link, Workflow

if TYPE_CHECKING:  # the queue imports this module; only the type is needed here
    from engine.queue import QueueItem

log = logging.getLogger(__name__)

WorkerKind = Literal["in-process", "process", "ray"]

# Per-prompt entries of ``ctx.services`` (plain data, sent to remote workers as they are);
# the rest (settings, output folder) a worker has of its own.
PROMPT_SERVICE_KEYS = ("workflow_document", "prompt_id", "prompt", "extra_data", "extra_pnginfo", "client_id")

# Inputs that name a model file: what a worker keeps loaded between prompts.
MODEL_INPUT_NAMES = frozenset({"ckpt_name", "lora_name", "vae_name", "unet_name", "clip_name", "clip_name1",
                               "clip_name2", "control_net_name", "model_name", "config_name"})
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


@dataclass(frozen=True)
class WorkerInfo:
    """One worker: its id (shown in history and /queue entries), kind, machine and process."""

    worker_id: str
    kind: WorkerKind
    host: str = ""
    pid: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.worker_id, "kind": self.kind, "host": self.host, "pid": self.pid}


@dataclass(frozen=True)
class RunRequest:
    """One prompt handed to a worker. ``services`` is what its nodes see in ``ctx.services``
    (the queue's shared services plus :data:`PROMPT_SERVICE_KEYS`); ``cancel`` is set by an
    interrupt, and the backend must pass it on to the worker running the prompt."""

    prompt_id: str
    workflow: Workflow
    services: Mapping[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)


class WorkerLost(RuntimeError):
    """The worker running a prompt went away (process killed, actor died) before it finished."""

    def __init__(self, worker_id: str, reason: str) -> None:
        super().__init__(f"worker {worker_id} stopped while running the prompt ({reason})")
        self.worker_id = worker_id
        self.reason = reason


class WorkerRunError(RuntimeError):
    """The worker itself (not a node) failed running a prompt; carries the remote traceback."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = traceback


class Backend(Protocol):
    """What the queue needs of an execution backend. Every method is thread-safe.

    ``start(on_change)``: begin (workers may become ready later); the backend calls
    ``on_change()`` whenever its set of ready workers changes (joined, died), never while
    holding a lock of its own. ``workers()``: the ready workers, one slot each;
    ``wait_ready``: for command lines that must not queue work no worker will ever take.
    ``run``: run ``request`` on worker ``worker_id``, blocking the calling thread (the queue
    runs each slot in a thread of its own); engine events reach ``on_event`` in order; an
    interrupt is ``request.cancel`` being set. Returns the executor's result; raises
    :class:`WorkerLost` when the worker went away meanwhile. ``free``: drop cached results
    and models on every worker between prompts (``POST /free``).
    """

    def start(self, on_change: Callable[[], None]) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def workers(self) -> list[WorkerInfo]: ...

    def wait_ready(self, timeout: float = 120.0) -> list[WorkerInfo]:
        """Block until the workers started are ready; raise ``RuntimeError`` when none could."""
        ...

    def run(self, worker_id: str, request: RunRequest, on_event: Callable[[Event], None]) -> RunResult: ...

    def free(self, *, unload_models: bool, free_memory: bool) -> None: ...

    def status(self) -> dict[str, Any]:
        """Start-up state for a status display, without waiting: ``{"state": "connecting" |
        "starting" | "ready" | "failed", "ready": [ids], "starting": [ids], "errors": [...]}``
        (``serve --ray`` answers HTTP while Ray connects)."""
        ...


class RunsWorkflowsLike(Protocol):
    def run(self, workflow: Workflow, *, on_event: Callable[[Event], None] | None = ...,
            cancel: threading.Event | None = ..., run_id: str | None = ...,
            services: Mapping[str, Any] | None = ...) -> RunResult: ...


class InProcessBackend:
    """One worker: ``executor`` run in the queue's slot thread of this process (the default)."""

    def __init__(self, executor: RunsWorkflowsLike, worker_id: str = "local") -> None:
        self.executor = executor
        self.info = WorkerInfo(worker_id, "in-process", socket.gethostname(), os.getpid())

    def start(self, on_change: Callable[[], None]) -> None:
        return None

    def stop(self, timeout: float = 10.0) -> None:
        return None

    def workers(self) -> list[WorkerInfo]:
        return [self.info]

    def status(self) -> dict[str, Any]:
        return {"state": "ready", "ready": [self.info.worker_id], "starting": [], "errors": []}

    def wait_ready(self, timeout: float = 120.0) -> list[WorkerInfo]:
        return [self.info]

    def run(self, worker_id: str, request: RunRequest, on_event: Callable[[Event], None]) -> RunResult:
        return self.executor.run(request.workflow, on_event=on_event, cancel=request.cancel,
                                 run_id=request.prompt_id, services=request.services)

    def free(self, *, unload_models: bool, free_memory: bool) -> None:
        free = getattr(self.executor, "free", None)
        if free is None:
            log.info("the executor keeps no memory to free; /free ignored")
            return
        free(unload_models=unload_models, free_memory=free_memory)


# ---------------------------------------------------------------------- placement


def model_files(workflow: Workflow | None) -> frozenset[str]:
    """The model files a workflow loads (checkpoint, LoRA, VAE... names): its affinity key."""
    if workflow is None:
        return frozenset()
    names = set()
    for instance in workflow.nodes.values():
        for name, value in instance.inputs.items():
            if isinstance(value, Link) or not isinstance(value, str):
                continue
            if name in MODEL_INPUT_NAMES or value.lower().endswith(MODEL_SUFFIXES):
                names.add(value)
    return frozenset(names)


def place(pending: Sequence["QueueItem"], idle: Sequence[WorkerInfo], held: Mapping[str, frozenset[str]],
          lookahead: int = 16) -> tuple["QueueItem", WorkerInfo] | None:
    """Which pending item runs next, and where (None: nothing pending or no idle worker).

    Work-conserving affinity: among the first ``lookahead`` items in queue order, the first
    one whose models an idle worker already holds goes to that worker (the one holding most
    of them); otherwise the head of the queue goes to the least loaded idle worker (the one
    holding fewest models, so warm caches stay free for their own prompts). An idle worker
    never waits for a busy one: a batch of prompts spreads over all workers.
    """
    if not pending or not idle:
        return None
    for item in pending[:lookahead]:
        models = model_files(item.workflow)
        if not models:
            continue
        score, worker = max(((len(models & held.get(w.worker_id, frozenset())), w) for w in idle),
                            key=lambda pair: (pair[0], -len(held.get(pair[1].worker_id, ()))))
        if score:
            return item, worker
    return pending[0], min(idle, key=lambda w: (len(held.get(w.worker_id, ())), w.worker_id))
