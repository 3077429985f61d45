"""The REST API over the fake txt2img pack: prompts, validation, queue, history, interrupt."""

from __future__ import annotations

import asyncio

import pytest

from tests.web.fake_pack import txt2img_document
from tests.web.helpers import wait_for_history

pytestmark = pytest.mark.asyncio


async def test_object_info_lists_nodes_in_comfyui_shape(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    info = await (await client.get("/api/object_info")).json()
    sampler = info["KSampler"]
    assert sampler["output"] == ["LATENT"] and sampler["output_name"] == ["latent"]
    assert sampler["input"]["required"]["model"][0] == "MODEL"
    assert sampler["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert sampler["input"]["required"]["sampler_name"][0] == ["euler", "dpmpp_2m"]
    assert info["SaveImage"]["output_node"] is True
    one = await client.get("/api/object_info/Decode")
    assert list(await one.json()) == ["Decode"]
    missing = await client.get("/api/object_info/Nope")
    assert missing.status == 404 and "Nope" in (await missing.json())["error"]["message"]


async def test_prompt_runs_and_history_holds_the_image(make_app, aiohttp_client, settings):
    client = await aiohttp_client(make_app())
    response = await client.post("/api/prompt", json={"prompt": txt2img_document(seed=5), "client_id": "c"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["number"] == 0 and body["node_errors"] == {}  # ComfyUI counts from 0
    entry = await wait_for_history(client, body["prompt_id"])
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"]
    images = entry["outputs"]["7"]["images"]
    assert images == [{"filename": "test_00001.png", "subfolder": "", "type": "output"}]
    view = await client.get("/api/view", params={"filename": "test_00001.png", "type": "output"})
    assert view.status == 200 and view.headers["Content-Type"] == "image/png"
    data = await view.read()
    assert data.startswith(b"\x89PNG") and (settings.output_dir / "test_00001.png").read_bytes() == data
    assert b'"KSampler"' in data  # the submitted workflow is embedded for drag-and-drop reloading


async def test_validation_errors_are_400_with_errors_per_node(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    document = txt2img_document()
    document["nodes"]["5"]["inputs"]["steps"] = 0  # below the minimum
    document["nodes"]["6"]["inputs"]["latent"] = ["2", "conditioning"]  # wrong type
    response = await client.post("/api/prompt", json={"prompt": document})
    assert response.status == 400
    body = await response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(body["node_errors"]) == {"5", "6"}
    steps_error = body["node_errors"]["5"]["errors"][0]
    assert steps_error["extra_info"]["input_name"] == "steps" and steps_error["type"] == "value_smaller_than_min"
    assert "minimum" in steps_error["message"] and body["node_errors"]["5"]["class_type"] == "KSampler"
    assert steps_error["code"] == "bad_value" and steps_error["hint"] == "use a value >= 1"  # ours, kept
    assert body["node_errors"]["6"]["errors"][0]["type"] == "return_type_mismatch"
    assert (await (await client.get("/api/queue")).json())["queue_pending"] == []


async def test_comfyui_api_prompt_is_accepted_and_kept_as_sent(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    ours = txt2img_document()
    index = {"model": 0, "clip": 1, "vae": 2, "conditioning": 0, "latent": 0, "image": 0}
    comfy = {node_id: {"class_type": node["type"],
                       "inputs": {k: [v[0], index[v[1]]] if isinstance(v, list) else v
                                  for k, v in node["inputs"].items()}}
             for node_id, node in ours["nodes"].items()}
    response = await client.post("/prompt", json={"prompt": comfy})  # the unprefixed ComfyUI route
    assert response.status == 200, await response.text()
    entry = await wait_for_history(client, (await response.json())["prompt_id"])
    assert entry["prompt"][2] == comfy  # history keeps the prompt as sent
    assert entry["prompt"][4] == ["7"]  # the output nodes it executed


async def test_bad_bodies_explain_themselves(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    response = await client.post("/api/prompt", data="{not json", headers={"Content-Type": "application/json"})
    assert response.status == 400 and "not valid JSON" in (await response.json())["error"]["message"]
    response = await client.post("/api/prompt", json={"prompt": {"version": 1, "nodes": [1]}})
    body = await response.json()
    assert response.status == 400 and "\"nodes\" must be an object" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_prompt" and body["node_errors"] == {}
    response = await client.post("/api/prompt", json={"workflow": {}})
    body = await response.json()
    assert response.status == 400 and body["error"]["type"] == "no_prompt" and body["node_errors"] == {}
    assert '"prompt"' in body["error"]["details"]
    response = await client.get("/api/history", params={"max_items": "many"})
    assert response.status == 400 and "max_items" in (await response.json())["error"]["message"]


async def test_queue_delete_clear_and_interrupt_by_id(make_app, aiohttp_client, sampler_gate):
    sampler_gate.clear()  # the first prompt blocks inside KSampler
    client = await aiohttp_client(make_app())
    ids = []
    for seed in range(4):
        response = await client.post("/api/prompt", json={"prompt": txt2img_document(seed=seed)})
        ids.append((await response.json())["prompt_id"])
    for _ in range(200):
        queue = await (await client.get("/api/queue")).json()
        if queue["queue_running"]:
            break
        await asyncio.sleep(0.02)
    assert queue["queue_running"][0][1] == ids[0]
    assert [entry[1] for entry in queue["queue_pending"]] == ids[1:]
    assert queue["queue_pending"][0][0] == 1  # ComfyUI's [number, prompt_id, prompt, extra, outputs]
    assert queue["queue_pending"][0][3] == {} and queue["queue_pending"][0][4] == ["7"]

    deleted = await (await client.post("/api/queue", json={"delete": [ids[1]]})).json()
    assert deleted["deleted"] == [ids[1]]
    remaining = await (await client.get("/api/prompt")).json()
    assert remaining["exec_info"]["queue_remaining"] == 3  # running + 2 pending
    cleared = await (await client.post("/api/queue", json={"clear": True})).json()
    assert cleared["cleared"] == 2

    wrong = await (await client.post("/api/interrupt", json={"prompt_id": "someone-else"})).json()
    assert wrong["interrupted"] is False
    right = await (await client.post("/api/interrupt", json={"prompt_id": ids[0]})).json()
    assert right["interrupted"] is True
    entry = await wait_for_history(client, ids[0])
    assert entry["status"]["interrupted"] is True and entry["status"]["status_str"] == "error"
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_interrupted"]


async def test_history_pages_newest_first_and_deletes(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    ids = []
    for seed in range(5):
        response = await client.post("/api/prompt", json={"prompt": txt2img_document(seed=seed)})
        ids.append((await response.json())["prompt_id"])
    await wait_for_history(client, ids[-1])
    page = await (await client.get("/api/history", params={"max_items": 2, "offset": 1})).json()
    assert list(page) == [ids[3], ids[2]]
    everything = await (await client.get("/history")).json()
    assert list(everything) == ids[::-1]
    response = await client.post("/api/history", json={"delete": [ids[0], "unknown"]})
    assert (await response.json())["deleted"] == [ids[0]]
    assert await (await client.get(f"/api/history/{ids[0]}")).json() == {}
    await client.post("/api/history", json={"clear": True})
    assert await (await client.get("/api/history")).json() == {}


async def test_failed_node_is_recorded_with_its_error(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    document = txt2img_document()
    document["nodes"]["8"] = {"type": "Fail", "inputs": {"image": ["6", "image"], "message": "no memory"}}
    document["nodes"]["7"]["inputs"]["images"] = ["8", "image"]
    response = await client.post("/api/prompt", json={"prompt": document})
    entry = await wait_for_history(client, (await response.json())["prompt_id"])
    assert entry["status"]["status_str"] == "error" and not entry["status"]["interrupted"]
    assert entry["latentflow"]["error"]["node_id"] == "8" and "no memory" in entry["latentflow"]["error"]["message"]
    kind, error = entry["status"]["messages"][-1]
    assert kind == "execution_error" and error["node_id"] == "8" and error["node_type"] == "Fail"
    assert error["exception_type"] == "RuntimeError" and error["exception_message"] == "no memory"


async def test_system_stats_and_plugin_failures(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    stats = await (await client.get("/api/system_stats")).json()
    assert stats["latentflow"]["nodes"] == 9
    assert stats["devices"][-1]["type"] == "cpu"
    assert await (await client.get("/api/node_failures")).json() == []


async def test_workflows_list_load_save(make_app, aiohttp_client, settings):
    client = await aiohttp_client(make_app())
    listing = await (await client.get("/api/workflows")).json()
    assert listing["workflows"] == [{"name": "txt2img", "source": "shipped", "title": "Text to image"}]
    loaded = await (await client.get("/api/workflows/txt2img.json")).json()
    assert loaded["nodes"]["5"]["type"] == "KSampler"

    mine = txt2img_document(seed=9)
    saved = await client.post("/api/workflows/mine", json=mine)
    assert saved.status == 200 and (await saved.json())["problems"] == []
    assert (settings.root / "user" / "workflows" / "mine.json").is_file()
    assert (await (await client.get("/api/workflows/mine")).json()) == mine
    names = [w["name"] for w in (await (await client.get("/api/workflows")).json())["workflows"]]
    assert names == ["mine", "txt2img"]
    not_a_workflow = await client.post("/api/workflows/bad", json={"nodes": "nope"})
    assert not_a_workflow.status == 400 and not (settings.root / "user" / "workflows" / "bad.json").exists()
    by_body = await client.post("/api/workflows", json={"name": "other.json", "workflow": mine})
    assert (await by_body.json())["name"] == "other"
    assert (settings.root / "user" / "workflows" / "other.json").is_file()
    assert (await client.post("/api/workflows", json={"workflow": mine})).status == 400
    missing = await client.get("/api/workflows/absent")
    assert missing.status == 404
