"""Workers behind the queue, over the torch-free fake pack: 2 spawned processes (``--workers 2``)
and, when ray is installed, 2 Ray actors on a local Ray instance (``--ray``)."""

from __future__ import annotations

import os
import signal
from importlib.util import find_spec
import threading
import time
from pathlib import Path

import pytest

from cluster.local import LocalWorkers
from cluster.worker import WorkerSetup
from engine.queue import PromptQueue, QueueItem
from engine.scheduler import Event
from engine.settings import Settings
from engine.validation import validate_document
from tests.cluster.pack import held_document, make_registry


class Recorder:
    """The queue's listener: every (time, prompt id, event type, event) it hears."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str | None, str | None, Event | None]] = []
        self.lock = threading.Lock()

    def __call__(self, item: QueueItem | None, event: Event | None) -> None:
        with self.lock:
            self.events.append((time.monotonic(), item.prompt_id if item else None, event.type if event else None,
                                event))

    def of(self, prompt_id: str) -> list[str]:
        with self.lock:
            return [kind for _, pid, kind, _ in self.events if pid == prompt_id and kind]

    def wait_for(self, prompt_id: str, kind: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while kind not in self.of(prompt_id):
            assert time.monotonic() < deadline, f"no {kind} for {prompt_id}: {self.of(prompt_id)}"
            time.sleep(0.01)


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray instance for the session (starting one takes ~10 s on 2 cores); its
    token authentication stays on, as Ray 2.60 sets it up."""
    import ray

    started = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}})
    assert time.monotonic() - started < 60, "a local Ray instance took over a minute to start"
    yield ray
    ray.shutdown()


RAY = pytest.param("ray", marks=pytest.mark.skipif(find_spec("ray") is None,
                                                   reason="ray is not installed: pip install -e '.[ray]'"))


@pytest.fixture(params=["process", RAY])
def cluster(request, tmp_path: Path):
    settings = Settings.for_root(tmp_path)
    registry = make_registry(settings=settings)
    if request.param == "ray":
        from cluster.ray_backend import RayWorkers

        ray = request.getfixturevalue("ray_instance")
        backend = RayWorkers(WorkerSetup(make_registry, settings), "local", count=2)
        kill = lambda worker_id: ray.kill(backend.actor(worker_id), no_restart=True)  # noqa: E731
    else:
        backend = LocalWorkers(WorkerSetup(make_registry, settings), 2)
        kill = lambda worker_id: os.kill(  # noqa: E731
            next(w.pid for w in backend.workers() if w.worker_id == worker_id), signal.SIGKILL)
    backend.kill = kill
    recorder = Recorder()
    queue = PromptQueue(None, backend=backend, listener=recorder)
    queue.start()
    assert len(backend.wait_ready(120)) == 2

    def submit(document: dict) -> QueueItem:
        report = validate_document(document, registry)
        assert report.ok, report.format()
        return queue.submit(report.workflow, document)

    yield queue, backend, recorder, submit, settings
    pids = [w.pid for w in backend.workers()]
    queue.stop(10)
    for pid in pids:  # no orphans: every worker process is gone (ray.kill returns before it is)
        deadline = time.monotonic() + 20
        while _alive(pid):
            assert time.monotonic() < deadline, f"worker process {pid} is still running"
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited; only its parent's wait is left
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_two_workers_run_six_prompts_concurrently_each_once(cluster):
    queue, backend, recorder, submit, settings = cluster
    items = [submit(held_document(seed, seconds=0.6)) for seed in range(6)]
    assert queue.wait_idle(60)
    entries = {e.item.prompt_id: e for e in queue.history()}
    assert [entries[i.prompt_id].status for i in items] == ["success"] * 6
    assert len({entries[i.prompt_id].worker for i in items}) == 2
    # Concurrency by the events: some run started before another one finished.
    spans = []
    for item in items:
        times = {kind: t for t, pid, kind, _ in recorder.events if pid == item.prompt_id and kind}
        spans.append((times["run_started"], times["run_finished"]))
    overlapping = sum(1 for a in spans for b in spans if a < b and b[0] < a[1])
    assert overlapping >= 2, spans
    # Every prompt once on disk, and each worker's events in order per prompt.
    assert len(list((settings.output_dir).glob("test_*.png"))) == 6
    for item in items:
        kinds = recorder.of(item.prompt_id)
        assert kinds[0] == "run_started" and kinds.count("run_finished") == 1 and kinds[-1] == "run_finished"
        assert kinds.index("node_finished") < kinds.index("run_finished")
        assert entries[item.prompt_id].to_json()["meta"]["worker"] in {w.worker_id for w in backend.workers()}


def test_a_prompt_goes_to_the_worker_that_holds_its_checkpoint(cluster):
    queue, backend, recorder, submit, settings = cluster
    where: dict[str, set[str]] = {"tiny-shapes.safetensors": set(), "other.safetensors": set()}
    seed = 0
    for ckpt in ["tiny-shapes.safetensors", "other.safetensors"] * 3:
        seed += 1
        item = submit(held_document(seed, seconds=0.0, ckpt=ckpt))
        assert queue.wait_idle(30)
        where[ckpt].add(queue.history_entry(item.prompt_id).worker)
    assert len(where["tiny-shapes.safetensors"]) == 1 and len(where["other.safetensors"]) == 1
    assert where["tiny-shapes.safetensors"] != where["other.safetensors"]
    # ... and the loader ran once per worker: later prompts found it in that worker's cache.
    cached = [e.cached for e in queue.history()[2:]]
    assert all("1" in c for c in cached), cached


def test_a_killed_worker_s_prompt_runs_again_once_on_the_other_worker(cluster, tmp_path):
    queue, backend, recorder, submit, settings = cluster
    gate = tmp_path / "gate"
    item = submit(held_document(1, seconds=30, gate=str(gate)))
    recorder.wait_for(item.prompt_id, "node_started")
    deadline = time.monotonic() + 10
    while not any(kind == "node_started" and ev.node_type == "Hold"
                  for _, pid, kind, ev in list(recorder.events) if pid == item.prompt_id):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first = queue.worker_of(item.prompt_id)
    backend.kill(first)
    # The client hears of it (a run_failed naming the lost worker) and the prompt starts again.
    deadline = time.monotonic() + 20
    while recorder.of(item.prompt_id).count("run_started") < 2:
        assert time.monotonic() < deadline, recorder.of(item.prompt_id)
        time.sleep(0.01)
    gate.touch()
    assert queue.wait_idle(30)
    entry = queue.history_entry(item.prompt_id)
    assert entry.status == "success" and entry.worker not in (None, first)
    kinds = recorder.of(item.prompt_id)
    assert kinds.count("run_failed") == 1 and kinds.count("run_finished") == 1
    lost = next(ev for _, pid, kind, ev in recorder.events if pid == item.prompt_id and kind == "run_failed")
    assert lost.data["requeued"] is True and first in lost.data["message"]
    if isinstance(backend, LocalWorkers):
        assert "SIGKILL" in lost.data["message"]
    assert entry.messages[0][0] == "worker_lost" and first in entry.messages[0][1]["message"]
    assert len(list(settings.output_dir.glob("test_*.png"))) == 1  # completed once
    # A new worker takes the dead one's place.
    deadline = time.monotonic() + 30
    while len(backend.workers()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert first not in {w.worker_id for w in backend.workers()}


def test_interrupt_reaches_the_worker_running_that_prompt(cluster, tmp_path):
    queue, backend, recorder, submit, settings = cluster
    gate = tmp_path / "gate"
    keep = submit(held_document(1, seconds=30, gate=str(gate)))
    stop = submit(held_document(2, seconds=30, gate=str(gate)))
    for item in (keep, stop):
        recorder.wait_for(item.prompt_id, "node_started")
    assert len({queue.worker_of(keep.prompt_id), queue.worker_of(stop.prompt_id)}) == 2
    assert len(queue.running_items()) == 2 and queue.remaining() == 2
    assert queue.interrupt(stop.prompt_id)
    recorder.wait_for(stop.prompt_id, "run_cancelled")
    assert "run_cancelled" not in recorder.of(keep.prompt_id) and queue.worker_of(keep.prompt_id)
    gate.touch()
    assert queue.wait_idle(30)
    assert queue.history_entry(stop.prompt_id).status == "interrupted"
    assert queue.history_entry(keep.prompt_id).status == "success"
