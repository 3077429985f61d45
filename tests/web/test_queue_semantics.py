"""ComfyUI's queue semantics: numbers, ``front``, explicit ``number``, delete/clear, history
delete/clear, targeted interrupt, /free."""

from __future__ import annotations

import asyncio

import pytest

from tests.web.fake_pack import txt2img_document
from tests.web.helpers import api_prompt, wait_for_history

pytestmark = pytest.mark.asyncio


async def queue_of(client) -> dict:
    for _ in range(200):
        queue = await (await client.get("/queue")).json()
        if queue["queue_running"]:
            return queue
        await asyncio.sleep(0.02)
    raise AssertionError("nothing started running")


async def post(client, seed: int, **fields) -> dict:
    response = await client.post("/prompt", json={"prompt": api_prompt(txt2img_document(seed=seed)), **fields})
    assert response.status == 200, await response.text()
    return await response.json()


async def test_front_and_number_order_the_pending_queue(make_app, aiohttp_client, sampler_gate):
    sampler_gate.clear()
    client = await aiohttp_client(make_app())
    running = await post(client, 0)
    await queue_of(client)
    later = await post(client, 1)
    first = await post(client, 2, front=True)
    explicit = await post(client, 3, number=1.5)
    assert (running["number"], later["number"], first["number"], explicit["number"]) == (0, 1, -2, 1.5)
    queue = await queue_of(client)
    assert queue["queue_running"][0][1] == running["prompt_id"]
    assert [(e[0], e[1]) for e in queue["queue_pending"]] == [
        (-2, first["prompt_id"]), (1, later["prompt_id"]), (1.5, explicit["prompt_id"])]
    bad = await client.post("/prompt", json={"prompt": api_prompt(txt2img_document()), "number": "soon"})
    assert bad.status == 400 and (await bad.json())["error"]["type"] == "invalid_prompt"
    await client.post("/queue", json={"clear": True})
    sampler_gate.set()
    await wait_for_history(client, running["prompt_id"])
    ran = await post(client, 9)
    assert ran["number"] == 3  # explicit numbers do not advance the count


async def test_queue_delete_and_clear_touch_only_pending_items(make_app, aiohttp_client, sampler_gate):
    sampler_gate.clear()
    client = await aiohttp_client(make_app())
    ids = [(await post(client, seed))["prompt_id"] for seed in range(4)]
    await queue_of(client)
    assert (await client.post("/queue", json={"delete": [ids[2], ids[0]]})).status == 200
    queue = await queue_of(client)
    assert queue["queue_running"][0][1] == ids[0]  # running: untouched by delete
    assert [e[1] for e in queue["queue_pending"]] == [ids[1], ids[3]]
    await client.post("/queue", json={"clear": True})
    assert (await queue_of(client))["queue_pending"] == []
    sampler_gate.set()
    await wait_for_history(client, ids[0])
    assert set(await (await client.get("/history")).json()) == {ids[0]}


async def test_duplicate_pending_prompt_id_is_refused(make_app, aiohttp_client, sampler_gate):
    sampler_gate.clear()
    client = await aiohttp_client(make_app())
    await post(client, 0, prompt_id="same")
    response = await client.post("/prompt", json={"prompt": api_prompt(txt2img_document()), "prompt_id": "same"})
    body = await response.json()
    assert response.status == 400 and body["error"]["type"] == "duplicate_prompt_id" and body["node_errors"] == {}
    sampler_gate.set()


async def test_interrupt_with_a_prompt_id_only_stops_that_prompt(make_app, aiohttp_client, sampler_gate):
    sampler_gate.clear()
    client = await aiohttp_client(make_app())
    first = (await post(client, 0))["prompt_id"]
    second = (await post(client, 1))["prompt_id"]
    await queue_of(client)
    not_running = await (await client.post("/interrupt", json={"prompt_id": second})).json()
    assert not_running == {"interrupted": False}
    assert [e[1] for e in (await queue_of(client))["queue_pending"]] == [second]  # pending: left alone
    assert (await client.post("/interrupt", data="not json")).status == 200  # ComfyUI tolerates any body
    entry = await wait_for_history(client, first)
    assert entry["status"]["interrupted"] is True
    await client.post("/interrupt")
    sampler_gate.set()


async def test_history_delete_and_clear(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    ids = [(await post(client, seed))["prompt_id"] for seed in range(3)]
    await wait_for_history(client, ids[-1])
    assert (await client.post("/history", json={"delete": [ids[1]]})).status == 200
    assert list(await (await client.get("/history")).json()) == [ids[2], ids[0]]
    assert await (await client.get(f"/history/{ids[1]}")).json() == {}
    await client.post("/history", json={"clear": True})
    assert await (await client.get("/history")).json() == {}


async def test_free_drops_cached_results_so_the_next_run_executes_again(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    first = (await post(client, 1))["prompt_id"]
    await wait_for_history(client, first)
    second = (await post(client, 1))["prompt_id"]
    assert (await wait_for_history(client, second))["latentflow"]["executed"] == []  # all cached
    response = await client.post("/free", json={"unload_models": True, "free_memory": True})
    assert response.status == 200
    for _ in range(100):  # the worker frees between prompts
        third = (await post(client, 1))["prompt_id"]
        if (await wait_for_history(client, third))["latentflow"]["executed"]:
            break
        await asyncio.sleep(0.02)
    assert (await wait_for_history(client, third))["latentflow"]["executed"] == ["1", "2", "3", "4", "5", "6", "7"]


async def test_partial_execution_targets_run_only_those_outputs(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    prompt = api_prompt(txt2img_document())
    prompt["8"] = {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "broken"}}
    response = await client.post("/prompt", json={"prompt": prompt, "partial_execution_targets": ["7"]})
    assert response.status == 200, await response.text()  # node 8's broken link does not count
    entry = await wait_for_history(client, (await response.json())["prompt_id"])
    assert entry["prompt"][4] == ["7"] and list(entry["outputs"]) == ["7"]
