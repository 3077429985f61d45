"""Run in its own process by test_scratch_folders: a server's ``LocalWorkers`` backend with one
worker and ``--worker-files send``; prints one JSON line (its pid, the worker's pid, the
scratch folders), then waits to be killed."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(tmp: str) -> None:
    from cluster.local import LocalWorkers
    from cluster.worker import WorkerSetup
    from engine.settings import Settings
    from tests.cluster.pack import make_registry

    base = Path(tmp)
    backend = LocalWorkers(WorkerSetup(make_registry, Settings.for_root(base / "worker"), files="send",
                                       scratch=base / "scratch"), 1)
    backend.start(lambda: None)
    (ready,) = backend.wait_ready(60)
    folders = sorted(str(p) for p in (base / "scratch").iterdir())
    print(json.dumps({"server": os.getpid(), "worker": ready.pid, "folders": folders}), flush=True)
    time.sleep(120)


if __name__ == "__main__":
    main(sys.argv[1])
