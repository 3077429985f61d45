"""Load: 20 websocket clients x 10 prompts each against the real server (in-process, on a real
socket) with the real built-in nodes and the embedded model at 64x64, 2 steps.

Every prompt is in the history exactly once and its image on disk exactly once; each client
sees the ``executing`` / ``progress`` / ``executed`` events of its own prompts only (and binary
preview frames only while one of its own prompts runs), and ``executing`` with node null for
each of them."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

import main
from web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 20
PROMPTS_PER_CLIENT = 10
STEPS = 2


def prompt_for(seed: int, prefix: str) -> dict:
    """ComfyUI's default graph in API format on the embedded model (64x64, few steps)."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "cfg": 4.0, "denoise": 1.0, "latent_image": ["5", 0], "model": ["4", 0], "negative": ["7", 0],
            "positive": ["6", 0], "sampler_name": "euler", "scheduler": "sgm_uniform", "seed": seed,
            "steps": STEPS}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-shapes.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 64, "width": 64}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a red circle on blue"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


class Watcher:
    """One websocket client: its prompts, and every message it received, in order."""

    def __init__(self, index: int) -> None:
        self.client_id = f"load-client-{index:02d}"
        self.index = index
        self.prompt_ids: list[str] = []
        self.messages: list[dict | bytes] = []
        self.finished: Counter[str] = Counter()  # prompt_id -> executing(node=None) count
        self.all_queued = asyncio.Event()
        self.done = asyncio.Event()

    async def listen(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        async for message in socket:
            if message.type == aiohttp.WSMsgType.BINARY:
                self.messages.append(message.data)
                continue
            data = message.json()
            self.messages.append(data)
            if data["type"] == "executing" and data["data"].get("node") is None:
                self.finished[data["data"]["prompt_id"]] += 1
                if self.all_queued.is_set() and set(self.prompt_ids) <= set(self.finished):
                    self.done.set()

    async def submit(self, client) -> None:
        for number in range(PROMPTS_PER_CLIENT):
            seed = self.index * 1000 + number
            prefix = f"load/c{self.index:02d}_p{number:02d}"
            body = {"prompt": prompt_for(seed, prefix), "client_id": self.client_id}
            response = await client.post("/api/prompt", data=json.dumps(body))
            assert response.status == 200, await response.text()
            self.prompt_ids.append((await response.json())["prompt_id"])
        self.all_queued.set()
        if set(self.prompt_ids) <= set(self.finished):
            self.done.set()


@pytest.fixture
def real_app(tmp_path: Path):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "tiny-shapes.safetensors").symlink_to(
        ROOT / "models" / "checkpoints" / "tiny-shapes.safetensors")
    settings = main.build_settings(main.FolderOptions(base_directory=tmp_path))
    registry = main.build_registry(custom_nodes=None, entry_points=False, settings=settings)
    return create_app(registry, settings), settings


@pytest.mark.slow
@pytest.mark.asyncio
async def test_twenty_clients_ten_prompts_each(real_app, aiohttp_client) -> None:
    app, settings = real_app
    client = await aiohttp_client(app)
    watchers = [Watcher(index) for index in range(CLIENTS)]
    sockets = []
    for watcher in watchers:
        socket = await client.ws_connect(f"/ws?clientId={watcher.client_id}")
        first = await socket.receive_json()
        assert first["type"] == "status"
        sockets.append(socket)
    listeners = [asyncio.create_task(w.listen(s)) for w, s in zip(watchers, sockets)]
    started = time.monotonic()
    await asyncio.gather(*(w.submit(client) for w in watchers))  # 20 clients queueing at once
    await asyncio.wait_for(asyncio.gather(*(w.done.wait() for w in watchers)), timeout=240)
    seconds = time.monotonic() - started
    for socket in sockets:
        await socket.close()
    await asyncio.gather(*listeners)

    every_id = [pid for w in watchers for pid in w.prompt_ids]
    assert len(every_id) == len(set(every_id)) == CLIENTS * PROMPTS_PER_CLIENT

    # the history: every prompt exactly once, a success with exactly one image of its own prefix
    history = await (await client.get("/api/history", params={"max_items": "1000"})).json()
    assert sorted(history) == sorted(every_id)
    for watcher in watchers:
        for number, prompt_id in enumerate(watcher.prompt_ids):
            entry = history[prompt_id]
            assert entry["status"]["status_str"] == "success", entry["status"]
            assert entry["prompt"][1] == prompt_id
            images = [i for output in entry["outputs"].values() for i in output.get("images", [])]
            assert images == [{"filename": f"c{watcher.index:02d}_p{number:02d}_00001_.png",
                               "subfolder": "load", "type": "output"}]

    # the disk: one file per prompt, nothing else (no duplicates, no temporaries)
    files = sorted(p.name for p in (settings.output_dir / "load").iterdir())
    assert files == sorted(f"c{c:02d}_p{n:02d}_00001_.png" for c in range(CLIENTS) for n in range(PROMPTS_PER_CLIENT))
    assert list(settings.output_dir.glob("*")) == [settings.output_dir / "load"]

    # the websockets: only their own prompts' events, the end of each of them exactly once
    for watcher in watchers:
        own = set(watcher.prompt_ids)
        tagged = [m for m in watcher.messages if isinstance(m, dict) and "prompt_id" in m["data"]]
        seen = {m["data"]["prompt_id"] for m in tagged}
        assert seen == own, f"{watcher.client_id} saw other clients' prompts: {sorted(seen - own)[:3]}"
        assert watcher.finished == Counter({pid: 1 for pid in own})
        kinds = Counter(m["type"] for m in tagged)
        assert kinds["executed"] == PROMPTS_PER_CLIENT  # SaveImage's, once per prompt
        assert kinds["progress"] >= PROMPTS_PER_CLIENT * STEPS
        for prompt_id in own:
            steps = [m["data"]["value"] for m in tagged
                     if m["type"] == "progress" and m["data"]["prompt_id"] == prompt_id and m["data"]["node"] == "3"]
            assert steps == list(range(1, STEPS + 1)), (prompt_id, steps)
        # binary previews carry no id: they may only arrive while one of this client's prompts runs
        running = None
        for message in watcher.messages:
            if isinstance(message, bytes):
                assert running is not None, f"{watcher.client_id} got a preview while none of its prompts ran"
            elif message["type"] == "executing":
                running = message["data"]["node"] and message["data"]["prompt_id"]
    print(f"{CLIENTS * PROMPTS_PER_CLIENT} prompts in {seconds:.1f}s")
