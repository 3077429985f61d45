"""``/api/jobs`` (always on) and the endpoints the ComfyUI frontend needs (``frontend="comfyui"``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.web.fake_pack import make_fake_registry, txt2img_document
from tests.web.helpers import wait_for_history
from web.app import create_app


@pytest.mark.asyncio
async def test_jobs_list_queue_and_history_newest_first(make_app, aiohttp_client, sampler_gate):
    client = await aiohttp_client(make_app())
    done = await client.post("/api/prompt", json={"prompt": txt2img_document(seed=1)})
    done_id = (await done.json())["prompt_id"]
    await wait_for_history(client, done_id)
    failing = txt2img_document(seed=2)
    failing["nodes"]["8"] = {"type": "Fail", "inputs": {"image": ["6", "image"], "message": "nope"}}
    failing["nodes"]["7"]["inputs"]["images"] = ["8", "image"]
    failed_id = (await (await client.post("/api/prompt", json={"prompt": failing})).json())["prompt_id"]
    await wait_for_history(client, failed_id)
    sampler_gate.clear()
    running_id = (await (await client.post("/api/prompt", json={"prompt": txt2img_document(seed=3)})).json())["prompt_id"]
    pending_id = (await (await client.post("/api/prompt", json={"prompt": txt2img_document(seed=4)})).json())["prompt_id"]
    for _ in range(200):
        listing = await (await client.get("/api/jobs")).json()
        if any(job["status"] == "in_progress" for job in listing["jobs"]):
            break
        await asyncio.sleep(0.02)
    assert [(j["id"], j["status"]) for j in listing["jobs"]] == [
        (pending_id, "pending"), (running_id, "in_progress"), (failed_id, "failed"), (done_id, "completed")]
    assert listing["pagination"] == {"offset": 0, "limit": 200, "total": 4, "has_more": False}
    completed = [j for j in listing["jobs"] if j["status"] == "completed"][0]
    assert completed["preview_output"] == {"filename": "test_00001.png", "subfolder": "", "type": "output",
                                           "nodeId": "7", "mediaType": "images"}
    failed = [j for j in listing["jobs"] if j["status"] == "failed"][0]
    assert failed["execution_error"]["node_id"] == "8" and failed["execution_error"]["exception_message"] == "nope"

    page = await (await client.get("/api/jobs", params={"status": "completed,failed", "limit": 1, "offset": 1})).json()
    assert [j["id"] for j in page["jobs"]] == [done_id] and page["pagination"]["has_more"] is False
    detail = await (await client.get(f"/api/jobs/{done_id}")).json()
    assert detail["outputs"]["7"]["images"][0]["filename"] == "test_00001.png"
    assert detail["workflow"]["prompt"]["nodes"]["5"]["inputs"]["seed"] == 1
    assert (await client.get("/api/jobs", params={"status": "exploded"})).status == 400
    assert (await client.get("/api/jobs/unknown")).status == 404
    await client.post("/api/interrupt")


@pytest.fixture
def comfy_app(settings, sampler_gate):
    pytest.importorskip("comfyui_frontend_package", reason="optional: pip install -e '.[comfyui]'")
    return create_app(make_fake_registry(sampler_gate, settings.input_dir), settings, frontend="comfyui")


@pytest.mark.asyncio
async def test_comfyui_frontend_files_and_settings(comfy_app, aiohttp_client, settings):
    client = await aiohttp_client(comfy_app)
    index = await client.get("/")
    assert index.status == 200 and "<html" in (await index.text()).lower()
    ours = await client.get("/latentflow/")
    assert ours.status == 200 and "/static/js/main.js" in await ours.text()
    assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": True}
    await client.post("/api/settings/Comfy.Theme", json="dark")
    await client.post("/api/settings", json={"Comfy.Locale": "en"})
    assert await (await client.get("/api/settings")).json() == {"Comfy.Theme": "dark", "Comfy.Locale": "en"}
    assert await (await client.get("/api/settings/Comfy.Theme")).json() == "dark"
    stored = json.loads((settings.root / "user" / "comfyui" / "comfy.settings.json").read_text())
    assert stored["Comfy.Locale"] == "en"


@pytest.mark.asyncio
async def test_comfyui_userdata_is_confined(comfy_app, aiohttp_client, settings):
    client = await aiohttp_client(comfy_app)
    saved = await client.post("/api/userdata/workflows%2Fmine.json", data=b'{"nodes": []}')
    assert saved.status == 200 and await saved.json() == "workflows/mine.json"
    listing = await (await client.get("/api/userdata", params={"dir": "workflows", "recurse": "true"})).json()
    assert listing == ["mine.json"]
    assert await (await client.get("/api/userdata/workflows%2Fmine.json")).read() == b'{"nodes": []}'
    refused = await client.post("/api/userdata/workflows%2Fmine.json?overwrite=false", data=b"{}")
    assert refused.status == 409
    for name in ("..%2F..%2Fescape.txt", "%2Fetc%2Fpasswd", "a%00b"):
        response = await client.post(f"/api/userdata/{name}", data=b"x")
        assert response.status in (400, 404), name
    assert not list(settings.root.rglob("escape.txt"))
    assert (await client.get("/api/userdata", params={"dir": "../.."})).status == 400
    assert (await client.delete("/api/userdata/workflows%2Fmine.json")).status == 204
    cross = await client.post("/api/userdata/x.json", data=b"{}", headers={"Origin": "http://evil.example"})
    assert cross.status == 403
