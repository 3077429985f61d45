"""Run in its own process by test_late_join (a Ray driver can join one cluster only): a Ray
cluster of a 1-CPU head, a ``RayWorkers`` backend sized by the cluster, then a second node
joins; prints one JSON line with what the backend saw."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(tmp: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from cluster.ray_backend import RayWorkers
    from cluster.worker import WorkerSetup
    from engine.queue import PromptQueue
    from engine.settings import Settings
    from engine.validation import validate_document
    from tests.cluster.pack import held_document, make_registry

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    settings = Settings.for_root(Path(tmp))
    backend = RayWorkers(WorkerSetup(make_registry, settings), cluster.address, poll_s=0.5)
    queue = PromptQueue(None, backend=backend)
    queue.start()
    report: dict[str, object] = {"at_start": [w.worker_id for w in backend.wait_ready(120)]}
    cluster.add_node(num_cpus=1)
    deadline = time.monotonic() + 120
    while len(backend.workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    report["after_join"] = sorted(w.worker_id for w in backend.workers())
    registry = make_registry(settings=settings)
    items = []
    for seed in range(4):  # long enough that both workers must take some
        document = held_document(seed, seconds=1.0)
        checked = validate_document(document, registry)
        items.append(queue.submit(checked.workflow, document))
    deadline = time.monotonic() + 120
    while queue.remaining() and time.monotonic() < deadline:
        time.sleep(0.1)
    report["workers_used"] = sorted({queue.history_entry(i.prompt_id).worker for i in items})
    report["statuses"] = [queue.history_entry(i.prompt_id).status for i in items]
    queue.stop(10)
    ray.shutdown()
    cluster.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
