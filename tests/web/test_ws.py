"""The websocket: ComfyUI's message sequence, routing per client, previews, errors, interrupt."""

from __future__ import annotations

import asyncio
import struct

import aiohttp
import pytest

from tests.web.fake_pack import txt2img_document

pytestmark = pytest.mark.asyncio


async def collect_until(socket, final: set[str], timeout: float = 10.0) -> list:
    """Messages (dicts for JSON, bytes for binary) until one whose type is in ``final``."""
    messages: list = []
    async with asyncio.timeout(timeout):
        async for message in socket:
            if message.type == aiohttp.WSMsgType.BINARY:
                messages.append(message.data)
                continue
            data = message.json()
            messages.append(data)
            if data["type"] in final:
                return messages
    raise AssertionError(f"socket closed before any of {final}: {messages}")


def types(messages: list) -> list[str]:
    return [m["type"] if isinstance(m, dict) else "binary" for m in messages]


async def test_run_sends_comfyui_sequence_to_its_client_only(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    mine = await client.ws_connect("/ws?clientId=me")
    other = await client.ws_connect("/ws?clientId=other")
    hello = await mine.receive_json()
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}
    await other.receive_json()

    response = await client.post("/api/prompt", json={"prompt": txt2img_document(steps=3), "client_id": "me"})
    prompt_id = (await response.json())["prompt_id"]
    messages = await collect_until(mine, {"execution_success"})
    messages += await collect_until(mine, {"executing"})  # node null: done and in the history
    run = [m for m in messages if not isinstance(m, dict) or m["type"] != "status"]
    kinds = types(run)
    assert kinds[:3] == ["execution_start", "execution_cached", "executing"]  # cached: sent even when empty
    assert kinds.index("executing") < kinds.index("execution_success") == len(kinds) - 2
    assert run[1]["data"]["nodes"] == [] and run[1]["data"]["prompt_id"] == prompt_id
    executing = [m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executing"]
    assert executing == ["1", "2", "3", "4", "5", "6", "7", None]
    assert messages[-1]["data"] == {"node": None, "display_node": None, "prompt_id": prompt_id}
    progress = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(1, 3, "5"), (2, 3, "5"), (3, 3, "5")]
    frames = [m for m in messages if isinstance(m, bytes)]
    assert len(frames) == 3
    event, image_format = struct.unpack(">II", frames[0][:8])
    assert (event, image_format) == (1, 2) and frames[0][8:12] == b"\x89PNG"  # preview image, PNG
    executed = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "executed"]
    assert executed == [{"node": "7", "display_node": "7", "prompt_id": prompt_id,
                         "output": {"images": [{"filename": "test_00001.png", "subfolder": "", "type": "output"}]}}]
    statuses = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in messages
                if isinstance(m, dict) and m["type"] == "status"]
    assert 1 in statuses and statuses[-1] == 0

    # the other client saw the queue status but none of the run's progress
    seen_by_other = []
    while True:
        try:
            seen_by_other.append(await other.receive_json(timeout=0.3))
        except asyncio.TimeoutError:
            break
    assert seen_by_other and set(types(seen_by_other)) == {"status"}
    await mine.close()
    await other.close()


async def test_rerun_reports_cached_nodes_and_their_images(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    socket = await client.ws_connect("/ws?clientId=c")
    await socket.receive_json()
    for _ in range(2):
        await client.post("/api/prompt", json={"prompt": txt2img_document(seed=3), "client_id": "c"})
        messages = await collect_until(socket, {"execution_success"})
    cached = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "execution_cached"]
    # one message naming every unchanged node (as ComfyUI does), not just the output
    assert len(cached) == 1 and cached[0]["nodes"] == ["1", "2", "3", "4", "5", "6", "7"]
    executed = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "executed"]
    assert executed[0]["node"] == "7" and executed[0]["cached"] is True
    assert "progress" not in types(messages)
    await socket.close()


async def test_node_failure_becomes_execution_error(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    socket = await client.ws_connect("/ws?clientId=c")
    document = txt2img_document()
    document["nodes"]["8"] = {"type": "Fail", "inputs": {"image": ["6", "image"], "message": "disk full"}}
    document["nodes"]["7"]["inputs"]["images"] = ["8", "image"]
    await client.post("/api/prompt", json={"prompt": document, "client_id": "c"})
    messages = await collect_until(socket, {"execution_error", "execution_success"})
    error = messages[-1]["data"]
    assert messages[-1]["type"] == "execution_error"
    assert error["node_id"] == "8" and error["node_type"] == "Fail"
    assert error["exception_type"] == "RuntimeError" and error["exception_message"] == "disk full"
    assert error["executed"] == ["1", "2", "3", "4", "5", "6"]
    assert any("disk full" in line for line in error["traceback"])
    await socket.close()


async def test_interrupt_sends_execution_interrupted(make_app, aiohttp_client, sampler_gate):
    sampler_gate.clear()
    client = await aiohttp_client(make_app())
    socket = await client.ws_connect("/ws?clientId=c")
    await client.post("/api/prompt", json={"prompt": txt2img_document(), "client_id": "c"})
    messages = await collect_until(socket, {"executing"})
    while not (isinstance(messages[-1], dict) and messages[-1]["data"].get("node") == "5"):
        messages += await collect_until(socket, {"executing"})
    await client.post("/api/interrupt")
    messages = await collect_until(socket, {"execution_interrupted", "execution_success"})
    assert messages[-1]["type"] == "execution_interrupted"
    assert messages[-1]["data"]["node_id"] == "5"
    await socket.close()


async def test_submitter_without_client_id_is_broadcast(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    socket = await client.ws_connect("/ws")  # no clientId: the server makes one up
    hello = await socket.receive_json()
    assert len(hello["data"]["sid"]) == 32
    await client.post("/api/prompt", json={"prompt": txt2img_document(seed=11)})
    messages = await collect_until(socket, {"execution_success"})
    assert "executed" in types(messages)
    await socket.close()


async def test_many_clients_each_see_only_their_own_runs(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    names = [f"client{i}" for i in range(5)]
    sockets = {name: await client.ws_connect(f"/ws?clientId={name}") for name in names}
    for socket in sockets.values():
        await socket.receive_json()
    prompt_ids = {}
    for seed, name in enumerate(names):
        response = await client.post("/api/prompt", json={"prompt": txt2img_document(seed=seed), "client_id": name})
        prompt_ids[name] = (await response.json())["prompt_id"]
    for name, socket in sockets.items():
        messages = await collect_until(socket, {"execution_success"})
        seen = {m["data"]["prompt_id"] for m in messages if isinstance(m, dict) and "prompt_id" in m["data"]}
        assert seen == {prompt_ids[name]}, name
        await socket.close()
