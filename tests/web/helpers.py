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
