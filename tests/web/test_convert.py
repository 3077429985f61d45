"""POST /api/convert: the editor's way in and out of ComfyUI's UI format."""

from __future__ import annotations

import pytest

from tests.web.fake_pack import txt2img_document

pytestmark = pytest.mark.asyncio


async def test_document_to_ui_graph_and_back(make_app, aiohttp_client) -> None:
    client = await aiohttp_client(make_app())
    document = txt2img_document(seed=11)
    document["nodes"]["5"]["ui"]["controls"] = {"seed": "increment"}
    response = await client.post("/api/convert", json={"to": "comfyui", "workflow": document})
    assert response.status == 200
    body = await response.json()
    graph = body["workflow"]
    assert body["from"] == "latentflow" and body["problems"] == []
    sampler = next(n for n in graph["nodes"] if n["id"] == 5)
    assert sampler["widgets_values"][:2] == [11, "increment"]  # seed, then its control entry
    assert sampler["pos"] == [680, 60] and len(graph["links"]) == 9

    response = await client.post("/api/convert", json={"to": "latentflow", "workflow": graph})
    back = await response.json()
    assert back["from"] == "comfyui-ui" and back["problems"] == []
    nodes = back["workflow"]["nodes"]
    assert set(nodes) == set(document["nodes"])
    assert nodes["5"]["inputs"]["seed"] == 11 and nodes["5"]["inputs"]["latent"] == ["4", 0]
    assert nodes["5"]["ui"] == {"pos": [680, 60], "controls": {"seed": "increment"}}


async def test_problems_name_the_node_and_a_bad_request_says_what_to_send(make_app, aiohttp_client) -> None:
    client = await aiohttp_client(make_app())
    graph = {"nodes": [{"id": 3, "type": "FancyUpscaler", "mode": 0, "inputs": [], "outputs": [],
                        "widgets_values": [2]}], "links": [], "version": 0.4}
    body = await (await client.post("/api/convert", json={"to": "latentflow", "workflow": graph})).json()
    (problem,) = body["problems"]
    assert problem["node_id"] == "3" and problem["node_type"] == "FancyUpscaler" and "[2]" in problem["message"]
    response = await client.post("/api/convert", json={"to": "png", "workflow": graph})
    assert response.status == 400
    assert '"to": "latentflow" or "comfyui"' in (await response.json())["error"]["message"]
