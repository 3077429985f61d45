"""The queue and history survive ``kill -9``: a real server process, 20 prompts, SIGKILL, restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from tests.web.test_serve_command import ROOT, free_port, request

PROMPTS = 20


def _start(base_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "main.py", "--base-directory", str(base_dir), "serve", "--port", str(port),
         "--custom-nodes", str(base_dir / "none")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_up(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stdout.read() if process.stdout else ''}")
        try:
            request(f"{base}/api/system_stats")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError("the server did not start within 90 s")


def _history(base: str) -> dict:
    return request(f"{base}/api/history?max_items=1000")[1]


def _workflow(index: int) -> dict:
    document = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    for node in document["nodes"].values():
        if "steps" in node["inputs"]:
            node["inputs"].update(steps=4, seed=1000 + index)
        if node["type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"p{index:02d}"
    return document


@pytest.mark.slow
def test_kill_9_with_a_queue_loses_no_prompt_and_runs_each_once(tmp_path: Path) -> None:
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "tiny-shapes.safetensors").symlink_to(
        ROOT / "models" / "checkpoints" / "tiny-shapes.safetensors")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(tmp_path, port)
    try:
        _wait_up(base, process)
        ids = []
        for index in range(PROMPTS):
            status, answer = request(f"{base}/api/prompt", {"prompt": _workflow(index), "prompt_id": f"id-{index:02d}",
                                                            "client_id": "durable-test"})
            assert status == 200, answer
            assert answer["number"] == index
            ids.append(answer["prompt_id"])
        deadline = time.monotonic() + 120
        while len(_history(base)) < 3:  # kill mid-queue: some done, one running, the rest pending
            assert time.monotonic() < deadline, "no prompt finished within 120 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        finished_before = set(_history_ids_from_disk(tmp_path))
        assert 3 <= len(finished_before) < PROMPTS

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = _start(tmp_path, port)
        _wait_up(base, process)
        deadline = time.monotonic() + 240
        while True:
            queue = request(f"{base}/api/queue")[1]
            if not queue["queue_running"] and not queue["queue_pending"]:
                break
            assert time.monotonic() < deadline, f"the restored queue did not drain: {queue}"
            time.sleep(0.1)
        history = _history(base)
        assert sorted(history) == sorted(ids), "every prompt id is in the history exactly once"
        assert all(entry["status"]["completed"] for entry in history.values()), \
            [entry["status"] for entry in history.values() if not entry["status"]["completed"]]
        assert finished_before <= set(history)
        status, answer = request(f"{base}/api/prompt", {"prompt": _workflow(99)})
        assert status == 200 and answer["number"] == PROMPTS, "numbers go on from before the kill"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    pngs = sorted(p.name for p in (tmp_path / "output").rglob("*.png"))
    leftovers = [p.name for p in (tmp_path / "output").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"partial files left behind: {leftovers}"
    for index in range(PROMPTS):
        mine = [name for name in pngs if name.startswith(f"p{index:02d}_")]
        # the prompt running at the kill may have saved before it was recorded: at most one extra file
        assert 1 <= len(mine) <= 2, (index, mine)
    assert sum(1 for name in pngs if not name.startswith("p99_")) <= PROMPTS + 1


def _history_ids_from_disk(base_dir: Path) -> list[str]:
    from engine.store import PromptStore

    return [stored.prompt_id for stored, _ in PromptStore(base_dir / "user" / "queue.sqlite3").history()]
