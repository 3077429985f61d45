"""Run in its own process by test_worker_files_ray (a Ray driver can join one cluster only):
a two-node Ray cluster, one worker on each node, ``--worker-files send``; the workers'
settings point at another folder than the server's. The server starts without waiting for
Ray. Prints one JSON line with what the server's API served."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


async def serve_and_check(tmp: Path, backend, server) -> dict[str, object]:
    from aiohttp.test_utils import TestClient, TestServer
    from PIL import Image

    from tests.cluster.pack import held_document, make_registry
    from tests.web.helpers import wait_for_history
    from web.app import create_app

    report: dict[str, object] = {}
    client = TestClient(TestServer(create_app(make_registry(settings=server), server, backend=backend)))
    began = time.monotonic()
    await client.start_server()  # the backend connects to Ray (ray.init) in a thread: this does not wait
    report["started_s"] = round(time.monotonic() - began, 2)
    report["status_at_start"] = backend.status()["state"]
    async with client:
        ready = await asyncio.get_running_loop().run_in_executor(None, backend.wait_ready, 120.0)
        report["ready"] = sorted(w.worker_id for w in ready)
        report["ready_s"] = round(time.monotonic() - began, 2)
        report["status_when_ready"] = backend.status()
        ids = []
        for seed in (1, 2, 3, 4, 1, 2):  # every worker saves "same_00001.png" in its own scratch folder;
            # the repeats come after the first four: from a worker's cache (or run again), never the older file
            response = await client.post("/api/prompt", json={"prompt": held_document(seed, seconds=0.5,
                                                                                      prefix="same")})
            ids.append((seed, (await response.json())["prompt_id"]))
            if len(ids) == 4:
                for _, prompt_id in ids:
                    await wait_for_history(client, prompt_id, timeout=120)
        served, workers, statuses, repeats = {}, set(), [], []
        for seed, prompt_id in ids:
            entry = await wait_for_history(client, prompt_id, timeout=120)
            statuses.append(entry["status"]["status_str"])
            workers.add(entry["latentflow"]["worker"])
            image = entry["outputs"]["7"]["images"][0]
            view = await client.get("/api/view", params={"filename": image["filename"], "type": "output"})
            picture = Image.open(io.BytesIO(await view.read()))
            check = [view.status, list(picture.getpixel((0, 0))[:3]), [seed % 256, 128, 255 - seed % 256]]
            if len(statuses) > 4:
                repeats.append([image["filename"], *check])
            else:
                served[image["filename"]] = check
        report.update(statuses=statuses, workers=sorted(workers), served=served, repeats=repeats)
    return report


def main(tmp: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from cluster.ray_backend import RayWorkers
    from cluster.worker import WorkerSetup
    from engine.settings import Settings
    from tests.cluster.pack import make_registry

    base = Path(tmp)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    # No ray.init here: the backend calls it on a thread of its own, as `serve --ray ADDRESS` does.
    server = Settings.for_root(base / "server")
    worker = Settings.for_root(base / "worker")  # the workers' machine: another output folder
    server.output_dir.mkdir(parents=True)
    (server.output_dir / "same_00001.png").write_bytes(b"an older file")
    setup = WorkerSetup(make_registry, worker, files="send", scratch=base / "scratch")
    backend = RayWorkers(setup, cluster.address, count=2, server_settings=server)
    report = asyncio.run(serve_and_check(base, backend, server))
    report["nodes"] = len({node["NodeID"] for node in ray.nodes() if node["Alive"]})
    report["older_file"] = (server.output_dir / "same_00001.png").read_bytes().decode()
    report["worker_output_exists"] = worker.output_dir.exists()
    report["scratch_left"] = sorted(p.name for p in (base / "scratch").iterdir())
    report["server_files"] = sorted(p.name for p in server.output_dir.iterdir())
    ray.shutdown()
    cluster.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
