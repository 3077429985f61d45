"""``serve --workers 2``: the server's API and websocket in front of 2 worker processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster.local import LocalWorkers
from cluster.worker import WorkerSetup
from engine.settings import Settings
from tests.cluster.pack import held_document, make_registry
from tests.web.helpers import receive_until, wait_for_history
from web.app import create_app

pytestmark = pytest.mark.asyncio


async def test_two_clients_get_their_own_events_and_files_from_two_workers(tmp_path: Path, aiohttp_client):
    settings = Settings.for_root(tmp_path)
    backend = LocalWorkers(WorkerSetup(make_registry, settings), 2)
    client = await aiohttp_client(create_app(make_registry(settings=settings), settings, backend=backend))
    await asyncio.get_running_loop().run_in_executor(None, backend.wait_ready, 60.0)
    sockets = {name: await client.ws_connect(f"/ws?clientId={name}") for name in ("a", "b")}
    ids: dict[str, list[str]] = {"a": [], "b": []}
    for seed in range(4):
        name = "ab"[seed % 2]
        response = await client.post("/api/prompt", json={"prompt": held_document(seed, seconds=0.8),
                                                          "client_id": name})
        ids[name].append((await response.json())["prompt_id"])
    await asyncio.sleep(0.3)
    queue = await (await client.get("/api/queue")).json()
    assert len(queue["queue_running"]) == 2  # one per worker, each naming it
    assert {entry[3]["worker"] for entry in queue["queue_running"]} == {"process-1", "process-2"}
    jobs = await (await client.get("/api/jobs", params={"status": "in_progress"})).json()
    running_ids = {entry[1] for entry in queue["queue_running"]}
    assert {job["id"] for job in jobs["jobs"]} == running_ids  # every busy worker's prompt, not the first only
    for prompt_id in running_ids:
        assert (await (await client.get(f"/api/jobs/{prompt_id}")).json())["status"] == "in_progress"
    for name, socket in sockets.items():
        done: set[str] = set()
        messages = await receive_until(socket, lambda m: m["type"] == "executing" and m["data"]["node"] is None
                                       and (done.add(m["data"]["prompt_id"]) or done == set(ids[name])), timeout=30)
        seen = {m["data"]["prompt_id"] for m in messages if isinstance(m, dict) and "prompt_id" in m.get("data", {})}
        assert seen == set(ids[name])  # nothing of the other client's prompts
        for prompt_id in ids[name]:
            kinds = [m["type"] for m in messages if isinstance(m, dict) and m["data"].get("prompt_id") == prompt_id]
            assert kinds[0] == "execution_start" and kinds[-1] == "executing"
            assert kinds.index("execution_success") < len(kinds) - 1
    workers = set()
    for prompt_id in ids["a"] + ids["b"]:
        entry = await wait_for_history(client, prompt_id)
        workers.add(entry["latentflow"]["worker"])
        image = entry["outputs"]["7"]["images"][0]
        assert "path" not in image
        view = await client.get("/api/view", params={"filename": image["filename"], "type": "output"})
        assert view.status == 200 and (await view.read()).startswith(b"\x89PNG")
    assert workers == {"process-1", "process-2"}
    for socket in sockets.values():
        await socket.close()
