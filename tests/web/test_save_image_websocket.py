"""SaveImageWebsocket through the real server: ComfyUI's websocket-images example client logic
(connect with a clientId, POST /prompt, keep the binary frames that arrive while ``executing``
names the node) gets the PNGs of the graph's images, other clients get none, and no file is
written. The graph is ComfyUI's classic one on the embedded model (64x64), with a SaveImage
beside the websocket node so the frames can be compared with the file it writes."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import main
from tests.web.helpers import receive_until
from web.app import create_app

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
NODE = "save_image_websocket_node"  # the example's node id


def websocket_prompt(seed: int, batch_size: int) -> dict:
    """The example's graph (ComfyUI's names), with the embedded model's settings and a SaveImage."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": 4.0, "denoise": 1.0, "latent_image": ["5", 0], "model": ["4", 0], "negative": ["7", 0],
            "positive": ["6", 0], "sampler_name": "euler", "scheduler": "sgm_uniform", "seed": seed, "steps": 3}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-shapes.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": batch_size, "height": 64, "width": 64}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a blue square on white"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "check", "images": ["8", 0]}},
        NODE: {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}},
    }


@pytest.fixture
def real_app(tmp_path: Path):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "tiny-shapes.safetensors").symlink_to(
        ROOT / "models" / "checkpoints" / "tiny-shapes.safetensors")
    settings = main.build_settings(main.FolderOptions(base_directory=tmp_path))
    registry = main.build_registry(custom_nodes=None, entry_points=False, settings=settings)
    return create_app(registry, settings), settings


def frames_while(messages: list, prompt_id: str, node: str) -> list[bytes]:
    """The example client's loop: binary frames received while the last ``executing`` named ``node``."""
    current, frames = "", []
    for message in messages:
        if isinstance(message, dict):
            if message["type"] == "executing" and message["data"]["prompt_id"] == prompt_id:
                current = message["data"]["node"] or ""
        elif current == node:
            frames.append(message)
    return frames


def saved_pixels(settings, history: dict) -> list[np.ndarray]:
    files = [settings.output_dir / image["filename"] for image in history["outputs"]["9"]["images"]]
    return [np.asarray(Image.open(path).convert("RGB")) for path in files]


async def test_images_reach_only_the_submitting_client_as_png_frames(real_app, aiohttp_client) -> None:
    app, settings = real_app
    client = await aiohttp_client(app)
    client_id, prompt_id = str(uuid.uuid4()), str(uuid.uuid4())
    mine = await client.ws_connect(f"/ws?clientId={client_id}")
    other = await client.ws_connect("/ws?clientId=someone-else")
    assert (await mine.receive_json())["type"] == "status" and (await other.receive_json())["type"] == "status"
    prompt = websocket_prompt(seed=5, batch_size=2)
    body = json.dumps({"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}).encode()
    response = await client.post("/api/prompt", data=body)
    assert response.status == 200, await response.text()

    messages = await receive_until(mine, lambda m: m["type"] == "executing" and m["data"]["node"] is None
                                   and m["data"]["prompt_id"] == prompt_id, timeout=120)
    frames = frames_while(messages, prompt_id, NODE)
    assert len(frames) == 2  # one per image of the batch
    history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
    expected = saved_pixels(settings, history)
    for frame, pixels in zip(frames, expected):
        assert struct.unpack(">II", frame[:8]) == (1, 2)  # PREVIEW_IMAGE, PNG
        with Image.open(io.BytesIO(frame[8:])) as image:
            assert image.format == "PNG" and image.size == (64, 64)
            assert np.array_equal(np.asarray(image.convert("RGB")), pixels)
    assert not np.array_equal(expected[0], expected[1])  # two different images, in batch order
    progress = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "progress"
                and m["data"]["node"] == NODE]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 2), (2, 2)]

    assert NODE not in history["outputs"] or not history["outputs"][NODE].get("images")
    assert sorted(p.name for p in settings.output_dir.rglob("*") if p.is_file()) == \
        ["check_00001_.png", "check_00002_.png"]  # only SaveImage's files

    leaked: list = []
    try:  # the other client sees queue status only: no binary frame, nothing of this prompt
        async with asyncio.timeout(0.5):
            async for message in other:
                leaked.append(message.data)
    except TimeoutError:
        pass
    assert not any(isinstance(m, bytes) for m in leaked)
    assert all(json.loads(m)["type"] == "status" for m in leaked)

    again = str(uuid.uuid4())  # the same prompt again: the sampler is cached, the images are sent again
    body = json.dumps({"prompt": prompt, "client_id": client_id, "prompt_id": again}).encode()
    assert (await client.post("/api/prompt", data=body)).status == 200
    messages = await receive_until(mine, lambda m: m["type"] == "executing" and m["data"]["node"] is None
                                   and m["data"]["prompt_id"] == again, timeout=120)
    cached = next(m["data"]["nodes"] for m in messages if isinstance(m, dict) and m["type"] == "execution_cached")
    assert "3" in cached and NODE not in cached
    assert frames_while(messages, again, NODE) == frames
    await mine.close()
    await other.close()


async def test_the_websocket_client_library_gets_the_images_as_the_example_does(real_app, aiohttp_client) -> None:
    """websocket-client and urllib over real TCP, as ComfyUI's example uses them (our own client code)."""
    websocket = pytest.importorskip("websocket")  # websocket-client; installed in this environment
    app, settings = real_app
    client = await aiohttp_client(app)
    address = f"{client.server.host}:{client.server.port}"
    prompt = websocket_prompt(seed=7, batch_size=1)

    def run_client() -> tuple[str, dict[str, list[bytes]]]:
        client_id = str(uuid.uuid4())
        socket = websocket.WebSocket()
        socket.connect(f"ws://{address}/ws?clientId={client_id}", timeout=120)
        request = urllib.request.Request(f"http://{address}/api/prompt",
                                         data=json.dumps({"prompt": prompt, "client_id": client_id}).encode())
        prompt_id = json.loads(urllib.request.urlopen(request).read())["prompt_id"]
        collected: dict[str, list[bytes]] = {}
        current = ""
        while True:
            received = socket.recv()
            if isinstance(received, str):
                message = json.loads(received)
                if message["type"] == "executing" and message["data"]["prompt_id"] == prompt_id:
                    if message["data"]["node"] is None:
                        break
                    current = message["data"]["node"]
            elif current == NODE:
                collected.setdefault(current, []).append(received[8:])
        socket.close()
        return prompt_id, collected

    prompt_id, collected = await asyncio.get_running_loop().run_in_executor(None, run_client)
    assert list(collected) == [NODE] and len(collected[NODE]) == 1
    history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
    with Image.open(io.BytesIO(collected[NODE][0])) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), saved_pixels(settings, history)[0])
