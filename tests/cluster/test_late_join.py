"""A machine that joins the Ray cluster after ``serve --ray`` started gets a worker and work.

A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head with one
CPU, then a second node with one CPU), driven from a separate process because a Ray driver
belongs to one cluster and the other cluster tests share a session-wide local instance.
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


def test_a_node_that_joins_later_gets_a_worker_and_prompts(tmp_path: Path) -> None:
    script = Path(__file__).with_name("late_join_script.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["at_start"] == ["ray-1"]  # one CPU in the cluster: one worker
    assert report["after_join"] == ["ray-1", "ray-2"]  # the joined node's CPU got an actor
    assert report["statuses"] == ["success"] * 4
    assert report["workers_used"] == ["ray-1", "ray-2"]  # and it took work
