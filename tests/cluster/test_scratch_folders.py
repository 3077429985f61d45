"""Scratch folders of ``--worker-files send`` workers: a worker killed with SIGKILL leaves
none behind (the server removes it), and what a killed server's workers left is removed by
the next server, while folders of live processes, of other hosts or without an owner file
stay."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cluster.files import OWNER_FILE, folder_in_use, is_running, process_started, remove_stale_scratch, \
    scratch_folder, write_owners
from cluster.local import LocalWorkers
from cluster.worker import WorkerSetup
from engine.settings import Settings
from tests.cluster.pack import make_registry


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _owners(folder: Path) -> list[int]:
    return [owner["pid"] for owner in json.loads((folder / OWNER_FILE).read_text())["owners"]]


def _dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_liveness_of_owners_by_pid_start_time_and_zombies(tmp_path: Path) -> None:
    me = os.getpid()
    assert is_running(me, process_started(me)) and is_running(me, None)
    assert not is_running(me, process_started(me) + 1)  # the pid was reused by another process
    assert not is_running(_dead_pid(), None)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    _wait(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 20,
          "the child did not exit")
    assert not is_running(zombie.pid, None)  # exited, not yet waited for: not running
    zombie.wait()

    live = scratch_folder(tmp_path, "live")  # ours: this process runs
    assert _owners(live) == [me] and folder_in_use(live) is True
    dead = scratch_folder(tmp_path, "dead", owners=(_dead_pid(), _dead_pid()))
    assert folder_in_use(dead) is False
    half = scratch_folder(tmp_path, "half", owners=(_dead_pid(), me))  # one owner left: in use
    assert folder_in_use(half) is True
    other_host = scratch_folder(tmp_path, "other-host", owners=(_dead_pid(),))
    record = json.loads((other_host / OWNER_FILE).read_text())
    (other_host / OWNER_FILE).write_text(json.dumps({**record, "host": socket.gethostname() + "-elsewhere"}))
    assert folder_in_use(other_host) is None  # its pids mean nothing here
    unmarked = tmp_path / "unmarked"
    (unmarked / "output").mkdir(parents=True)
    broken = scratch_folder(tmp_path, "broken")
    (broken / OWNER_FILE).write_text('{"host": ')  # unreadable: never taken for stale
    assert folder_in_use(unmarked) is None and folder_in_use(broken) is None
    assert remove_stale_scratch(tmp_path) == [dead]
    assert sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir()) == [
        "broken", "half", "live", "other-host", "unmarked"]


def test_a_worker_killed_with_sigkill_leaves_no_scratch_folder(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    setup = WorkerSetup(make_registry, Settings.for_root(tmp_path / "worker"), files="send", scratch=scratch)
    backend = LocalWorkers(setup, 2)
    backend.start(lambda: None)
    try:
        workers = {w.worker_id: w.pid for w in backend.wait_ready(60)}
        assert sorted(workers) == ["process-1", "process-2"]
        folders = {p.name.rsplit("-", 1)[0]: p for p in scratch.iterdir()}
        assert sorted(folders) == ["process-1", "process-2"]
        for worker_id, folder in folders.items():  # the server and the worker own it
            assert _owners(folder) == [os.getpid(), workers[worker_id]]
            assert (folder / "output").is_dir() and (folder / "temp").is_dir()
        (folders["process-1"] / "temp" / "preview_00001_.png").write_bytes(b"left by the run")
        os.kill(workers["process-1"], signal.SIGKILL)  # no atexit, no cleanup of its own
        _wait(lambda: not folders["process-1"].exists(), 20, "the killed worker's scratch folder is still there")
        _wait(lambda: len(backend.workers()) == 2, 60, "no worker took the killed one's place")
        names = sorted(p.name.rsplit("-", 1)[0] for p in scratch.iterdir())
        assert names == ["process-2", "process-3"] and folders["process-2"].is_dir()  # the live one's stays
    finally:
        backend.stop(10)
    assert list(scratch.iterdir()) == []


def test_the_next_server_removes_what_a_killed_server_s_workers_left(tmp_path: Path) -> None:
    script = Path(__file__).with_name("scratch_server_script.py")
    earlier = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        line = earlier.stdout.readline()
        assert line, "the earlier server did not start"
        report = json.loads(line)
        (left,) = [Path(p) for p in report["folders"]]
        assert _owners(left) == [report["server"], report["worker"]]
        # Both killed at once: the worker is stopped first, so it cannot notice its server is gone.
        os.kill(report["worker"], signal.SIGSTOP)
        os.kill(report["server"], signal.SIGKILL)
        earlier.wait(20)
        os.kill(report["worker"], signal.SIGKILL)
        _wait(lambda: not is_running(report["worker"], None), 20, "the earlier worker still runs")
    finally:
        if earlier.poll() is None:
            earlier.kill()
            earlier.wait()
    assert left.is_dir()  # nobody could clean it up
    scratch = tmp_path / "scratch"
    another_server = scratch_folder(scratch, "process-1")  # a live server's worker folder (this process)
    setup = WorkerSetup(make_registry, Settings.for_root(tmp_path / "worker"), files="send", scratch=scratch)
    backend = LocalWorkers(setup, 1)
    backend.start(lambda: None)
    try:
        (ready,) = backend.wait_ready(60)
        assert not left.exists() and another_server.is_dir()
        mine = [p for p in scratch.iterdir() if p != another_server]
        assert len(mine) == 1 and _owners(mine[0]) == [os.getpid(), ready.pid]
    finally:
        backend.stop(10)
    assert list(scratch.iterdir()) == [another_server]
    write_owners(another_server, (_dead_pid(),))  # once its owner is gone, it is stale too
    assert remove_stale_scratch(scratch) == [another_server]
