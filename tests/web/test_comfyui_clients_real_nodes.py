"""ComfyUI's example API clients, as they are written: ComfyUI's node names, the classic SD1.5 graph in
API format, a client-chosen prompt_id, the websocket until ``executing`` with node null, then
``/history/{id}`` and ``/view`` — against the real server with the real built-in nodes and the
embedded model (set as the checkpoint, at its 64x64 size)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

import main
from tests.web.helpers import receive_until
from web.app import create_app

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]


def classic_prompt(seed: int) -> dict:
    """ComfyUI's default text-to-image graph in API format, with the embedded model's settings."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": 4.0, "denoise": 1.0, "latent_image": ["5", 0], "model": ["4", 0], "negative": ["7", 0],
            "positive": ["6", 0], "sampler_name": "euler", "scheduler": "sgm_uniform", "seed": seed, "steps": 4}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-shapes.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 64, "width": 64}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {
            "clip": ["4", 1], "text": "a large yellow star in the center on a purple background"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


@pytest.fixture
def real_app(tmp_path: Path):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "tiny-shapes.safetensors").symlink_to(
        ROOT / "models" / "checkpoints" / "tiny-shapes.safetensors")
    settings = main.build_settings(main.FolderOptions(base_directory=tmp_path))
    registry = main.build_registry(custom_nodes=None, entry_points=False, settings=settings)
    return create_app(registry, settings), settings


async def test_the_websocket_example_client_runs_unchanged_on_the_real_nodes(real_app, aiohttp_client) -> None:
    app, settings = real_app
    client = await aiohttp_client(app)
    client_id, prompt_id = str(uuid.uuid4()), str(uuid.uuid4())
    socket = await client.ws_connect(f"/ws?clientId={client_id}")
    assert (await socket.receive_json())["type"] == "status"
    prompt = classic_prompt(seed=5)
    body = json.dumps({"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}).encode()
    response = await client.post("/prompt", data=body)  # the example sends raw JSON bytes to /prompt
    assert response.status == 200, await response.text()
    assert (await response.json())["prompt_id"] == prompt_id

    def done(message: dict) -> bool:
        return (message["type"] == "executing" and message["data"]["node"] is None
                and message["data"]["prompt_id"] == prompt_id)

    messages = await receive_until(socket, done, timeout=120)
    executing = [m["data"]["node"] for m in messages if isinstance(m, dict) and m["type"] == "executing"]
    assert executing[-1] is None and {"3", "4", "8", "9"} <= set(executing)
    progress = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "progress"]
    assert [p["value"] for p in progress if p["node"] == "3"] == [1, 2, 3, 4]
    assert any(isinstance(m, bytes) for m in messages), "a client watches: live previews are sent"

    history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
    assert history["status"]["completed"] and history["prompt"][2] == prompt
    images = [image for output in history["outputs"].values() for image in output.get("images", [])]
    assert images == [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]
    view = await client.get("/view", params=images[0])
    png = await view.read()
    assert view.status == 200 and png == (settings.output_dir / "ComfyUI_00001_.png").read_bytes()
    from PIL import Image

    with Image.open(settings.output_dir / "ComfyUI_00001_.png") as image:
        assert image.size == (64, 64)
        assert json.loads(image.info["prompt"]) == prompt  # ComfyUI's chunk: the API prompt as sent
    await socket.close()


async def test_the_basic_example_client_gets_a_fresh_uuid_and_comfyuis_answer(real_app, aiohttp_client) -> None:
    app, _ = real_app
    client = await aiohttp_client(app)
    prompt = classic_prompt(seed=6)
    prompt["6"]["inputs"]["text"] = "a small red circle at the top left on a blue background"  # as it edits text
    response = await client.post("/prompt", data=json.dumps({"prompt": prompt}).encode())
    body = await response.json()
    assert response.status == 200 and body["node_errors"] == {} and isinstance(body["number"], int)
    assert str(uuid.UUID(body["prompt_id"])) == body["prompt_id"]
    wrong = classic_prompt(seed=6)
    wrong["4"]["inputs"]["ckpt_name"] = "v1-5-pruned-emaonly-fp16.safetensors"  # the example's own model
    refused = await client.post("/prompt", json={"prompt": wrong})
    errors = await refused.json()
    assert refused.status == 400 and errors["error"]["type"] == "prompt_outputs_failed_validation"
    node = errors["node_errors"]["4"]
    assert node["class_type"] == "CheckpointLoaderSimple" and node["errors"][0]["type"] == "value_not_in_list"
    assert "models/checkpoints" in node["errors"][0]["message"] + node["errors"][0]["details"]
