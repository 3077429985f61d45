"""``serve --ray`` with ``--worker-files send`` on a real two-node Ray cluster: each worker
writes into a scratch folder of its own (its settings name another output folder than the
server's); the files come back with the results, land under unique names next to a file
that was already there, and the server's ``/api/view`` serves each prompt its own image.
The server starts without waiting for Ray to connect.

Driven from a separate process (``worker_files_script.py``), as test_late_join, because a
Ray driver belongs to one cluster and the other cluster tests share a local instance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(find_spec("ray") is None, reason="ray is not installed: pip install -e '.[ray]'")]


def test_files_of_workers_on_two_ray_nodes_are_sent_back_and_served(tmp_path: Path) -> None:
    script = Path(__file__).with_name("worker_files_script.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The server answered before Ray was connected (ray.init runs on a thread of the backend's).
    assert report["started_s"] < 1.0 and report["status_at_start"] == "connecting"
    assert report["status_when_ready"] == {"state": "ready", "ready": ["ray-1", "ray-2"], "starting": [],
                                           "errors": []}
    assert report["nodes"] == 2 and report["ready"] == ["ray-1", "ray-2"]  # one 1-CPU worker on each node
    assert report["statuses"] == ["success"] * 6
    assert report["workers"] == ["ray-1", "ray-2"]
    # Each worker named its file same_00001.png; the server numbered them after the file it had.
    assert sorted(report["served"]) == [f"same_{n:05d}.png" for n in range(2, 6)]
    for status, pixel, expected in report["served"].values():
        assert status == 200 and pixel == expected  # each history entry serves its own prompt's image
    for name, status, pixel, expected in report["repeats"]:  # answered from a cache or run again
        assert name != "same_00001.png" and status == 200 and pixel == expected
    assert report["older_file"] == "an older file"  # never overwritten
    assert report["server_files"][:5] == [f"same_{n:05d}.png" for n in range(1, 6)]
    assert not [name for name in report["server_files"] if name.endswith(".tmp")]
    assert report["worker_output_exists"] is False and report["scratch_left"] == []
