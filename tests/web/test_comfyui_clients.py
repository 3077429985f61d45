"""ComfyUI's example API clients' protocols (basic_api_example.py, websockets_api_example.py),
re-written as tests against our server, plus what a prompt carries into the run."""

from __future__ import annotations

import asyncio
import struct
import uuid

import pytest

from engine.api import Context, Result, node
from tests.web.fake_pack import make_fake_registry, txt2img_document
from tests.web.helpers import api_prompt, receive_until, wait_for_history
from web.app import create_app

pytestmark = pytest.mark.asyncio


async def test_basic_client_queues_a_prompt_and_gets_comfyuis_answer(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    prompt = api_prompt(txt2img_document(seed=4))
    prompt["5"]["inputs"]["seed"] = 5  # the example edits a widget value before queueing
    response = await client.post("/prompt", json={"prompt": prompt})  # no client_id, no prompt_id
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) >= {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    assert str(uuid.UUID(body["prompt_id"])) == body["prompt_id"]  # a fresh UUID, as ComfyUI issues
    entry = await wait_for_history(client, body["prompt_id"])
    assert entry["prompt"][2]["5"]["inputs"]["seed"] == 5


async def test_websocket_client_follows_its_own_prompt_id_to_the_images(make_app, aiohttp_client, settings):
    client = await aiohttp_client(make_app())
    client_id, prompt_id = str(uuid.uuid4()), str(uuid.uuid4())
    socket = await client.ws_connect(f"/ws?clientId={client_id}")
    status = await socket.receive_json()
    assert status == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}}

    prompt = api_prompt(txt2img_document(seed=9, steps=2))
    response = await client.post("/prompt", json={"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id})
    assert (await response.json())["prompt_id"] == prompt_id  # the client's id is kept

    def done(message: dict) -> bool:
        return (message["type"] == "executing" and message["data"]["node"] is None
                and message["data"]["prompt_id"] == prompt_id)

    messages = await receive_until(socket, done)
    previews = [m for m in messages if isinstance(m, bytes)]
    assert len(previews) == 2 and struct.unpack(">II", previews[0][:8]) == (1, 2)  # preview, PNG
    start = next(m for m in messages if isinstance(m, dict) and m["type"] == "execution_start")
    assert start["data"]["prompt_id"] == prompt_id and isinstance(start["data"]["timestamp"], int)

    # executing(null) means the history already has the entry: no polling needed
    history = await (await client.get(f"/history/{prompt_id}")).json()
    entry = history[prompt_id]
    assert entry["status"] == {"status_str": "success", "completed": True, "interrupted": False,
                               "messages": entry["status"]["messages"]}
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                           "execution_success"]
    assert entry["prompt"][:2] == [0, prompt_id] and entry["prompt"][2] == prompt
    assert entry["prompt"][3] == {"client_id": client_id} and entry["prompt"][4] == ["7"]
    assert entry["meta"] == {"7": {"node_id": "7", "display_node": "7", "parent_node": None, "real_node_id": "7"}}
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    assert images == [{"filename": "test_00001.png", "subfolder": "", "type": "output"}]
    for image in images:
        view = await client.get("/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                                 "type": image["type"]})
        assert view.status == 200
        assert await view.read() == (settings.output_dir / image["filename"]).read_bytes()
    await socket.close()


async def test_failed_and_interrupted_prompts_also_end_with_executing_null(make_app, aiohttp_client, sampler_gate):
    client = await aiohttp_client(make_app())
    socket = await client.ws_connect("/ws?clientId=c")
    await socket.receive_json()
    failing = txt2img_document()
    failing["nodes"]["8"] = {"type": "Fail", "inputs": {"image": ["6", "image"], "message": "out of paint"}}
    failing["nodes"]["7"]["inputs"]["images"] = ["8", "image"]
    await client.post("/prompt", json={"prompt": api_prompt(failing), "client_id": "c", "prompt_id": "bad"})
    messages = await receive_until(socket, lambda m: m["type"] == "executing" and m["data"]["node"] is None)
    error = next(m["data"] for m in messages if isinstance(m, dict) and m["type"] == "execution_error")
    assert set(error) >= {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                          "traceback", "current_inputs", "current_outputs"}
    assert (error["prompt_id"], error["node_id"], error["node_type"]) == ("bad", "8", "Fail")
    assert error["exception_message"] == "out of paint" and error["exception_type"] == "RuntimeError"
    assert "6" in error["executed"] and isinstance(error["traceback"], list)
    assert messages[-1]["data"]["prompt_id"] == "bad"

    sampler_gate.clear()
    await client.post("/prompt", json={"prompt": api_prompt(txt2img_document(seed=7)), "client_id": "c",
                                       "prompt_id": "stopped"})
    await receive_until(socket, lambda m: m["type"] == "executing" and m["data"]["node"] == "5")
    await client.post("/interrupt", json={"prompt_id": "stopped"})
    messages = await receive_until(socket, lambda m: m["type"] == "executing" and m["data"]["node"] is None)
    interrupted = next(m["data"] for m in messages if isinstance(m, dict) and m["type"] == "execution_interrupted")
    assert (interrupted["prompt_id"], interrupted["node_id"]) == ("stopped", "5")
    entry = await wait_for_history(client, "stopped")
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    await socket.close()


async def test_extra_data_and_prompt_reach_the_nodes_run_context(settings, aiohttp_client):
    seen: dict = {}

    @node("Spy", category="test", output=True, pure=False)
    def spy(images: "IMAGE", ctx: Context = None) -> None:
        seen.update(ctx.services)
        return Result(ui={"text": ["seen"]})

    registry = make_fake_registry(None, settings.input_dir)
    registry.register_pack([spy], "tests.spy")
    client = await aiohttp_client(create_app(registry, settings))
    document = txt2img_document()
    document["nodes"]["7"] = {"type": "Spy", "inputs": {"images": ["6", "image"]}}
    prompt = api_prompt(document)
    ui_graph = {"nodes": [{"id": 7, "type": "Spy"}], "links": [], "version": 0.4}
    extra = {"extra_pnginfo": {"workflow": ui_graph}, "api_key_comfy_org": "secret"}
    response = await client.post("/prompt", json={"prompt": prompt, "client_id": "me", "extra_data": extra})
    prompt_id = (await response.json())["prompt_id"]
    entry = await wait_for_history(client, prompt_id)
    assert seen["prompt"] == prompt and seen["prompt_id"] == prompt_id and seen["client_id"] == "me"
    assert seen["extra_pnginfo"] == {"workflow": ui_graph}
    assert seen["extra_data"] == {"extra_pnginfo": {"workflow": ui_graph}, "client_id": "me"}  # no credentials
    assert seen["workflow_document"]["nodes"]["7"]["type"] == "Spy"  # our format, for SaveImage's own key
    assert entry["prompt"][3] == {"extra_pnginfo": {"workflow": ui_graph}, "client_id": "me"}
    assert "secret" not in str(await (await client.get("/history")).json())


async def test_feature_flags_are_answered_on_the_websocket(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    socket = await client.ws_connect("/ws?clientId=f")
    await socket.receive_json()
    await socket.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    reply = await socket.receive_json(timeout=5)
    features = await (await client.get("/api/features")).json()
    assert reply == {"type": "feature_flags", "data": features}
    assert features["supports_preview_metadata"] is False  # we send plain preview frames
    await socket.close()
    await asyncio.sleep(0)
