"""Helpers shared by the server tests."""

from __future__ import annotations

import asyncio
import time


async def wait_for_history(client, prompt_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"/api/history/{prompt_id}")
        body = await response.json()
        if prompt_id in body:
            return body[prompt_id]
        await asyncio.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout}s")


# Output index of each output name in the fake pack (and our built-in nodes of those names).
OUTPUT_INDEX = {"model": 0, "clip": 1, "vae": 2, "conditioning": 0, "latent": 0, "image": 0}


def api_prompt(document: dict) -> dict:
    """Our workflow document as ComfyUI's API prompt (``class_type``, ``[id, index]`` links,
    ``_meta.title``), the shape ComfyUI's example clients send. When the ComfyUI node names
    (CheckpointLoaderSimple, ...) exist, map ``class_type`` here and the tests follow."""
    prompt = {}
    for node_id, node in document["nodes"].items():
        inputs = {name: [value[0], OUTPUT_INDEX[value[1]]] if isinstance(value, list) else value
                  for name, value in node["inputs"].items()}
        prompt[node_id] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": node["type"]}}
    return prompt


async def receive_until(socket, predicate, timeout: float = 10.0) -> list:
    """Websocket messages (dicts for JSON, bytes for binary) up to and including the first
    JSON message for which ``predicate(message)`` is true."""
    import aiohttp

    messages: list = []
    async with asyncio.timeout(timeout):
        async for message in socket:
            if message.type == aiohttp.WSMsgType.BINARY:
                messages.append(message.data)
                continue
            data = message.json()
            messages.append(data)
            if predicate(data):
                return messages
    raise AssertionError(f"the socket closed first: {messages}")
