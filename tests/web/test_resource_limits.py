"""Byte bounds of the pending queue and of the /queue and /history listings; uploads refused
from their header (pixels, text chunks) before anything decodes them."""

from __future__ import annotations

import struct
import zlib

import aiohttp
import pytest

from tests.web.fake_pack import png_bytes, txt2img_document
from tests.web.helpers import api_prompt, wait_for_history
from web.security import Limits

pytestmark = pytest.mark.asyncio


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, *extra: bytes) -> bytes:
    """A PNG whose header claims width x height; its pixel data is a stub (never decoded)."""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + b"".join(extra) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def form(data: bytes, name: str) -> aiohttp.FormData:
    upload = aiohttp.FormData()
    upload.add_field("image", data, filename=name, content_type="image/png")
    return upload


async def test_a_huge_image_header_is_refused_before_decoding(make_app, aiohttp_client, settings):
    client = await aiohttp_client(make_app())
    data = png_header_only(12000, 12000)  # 144 megapixels in a few hundred bytes
    response = await client.post("/api/upload/image", data=form(data, "bomb.png"))
    assert response.status == 413
    error = (await response.json())["error"]
    assert error["type"] == "too_many_pixels"
    assert "12000x12000 = 144 megapixels" in error["message"] and "67 megapixels" in error["message"]
    assert not (settings.input_dir / "bomb.png").exists()
    ok = await client.post("/api/upload/image", data=form(png_bytes(8, 8, (1, 2, 3)), "fine.png"))
    assert ok.status == 200


async def test_a_text_chunk_that_inflates_past_the_limit_is_refused(make_app, aiohttp_client, settings):
    client = await aiohttp_client(make_app())
    bomb = chunk(b"zTXt", b"workflow\x00\x00" + zlib.compress(b"{" * (9 << 20), 9))  # 9 MiB of text in ~9 KB
    response = await client.post("/api/upload/image", data=form(png_header_only(8, 8, bomb), "text.png"))
    assert response.status == 413
    error = (await response.json())["error"]
    assert error["type"] == "text_chunk_too_large" and "'workflow'" in error["message"]
    small = chunk(b"zTXt", b"workflow\x00\x00" + zlib.compress(b"{}"))
    assert (await client.post("/api/upload/image", data=form(png_header_only(8, 8, small), "ok.png"))).status == 200


async def test_the_pending_queue_has_a_byte_bound(make_app, aiohttp_client, sampler_gate):
    sampler_gate.clear()  # nothing finishes: prompts stay pending
    client = await aiohttp_client(make_app(limits=Limits(max_pending_bytes=300_000)))
    padding = {"meta_blob": "x" * 100_000}
    ids = []
    for seed in range(4):
        response = await client.post("/prompt", json={"prompt": api_prompt(txt2img_document(seed=seed)),
                                                       "extra_data": padding})
        if response.status != 200:
            break
        ids.append((await response.json())["prompt_id"])
    # the first runs (no longer pending), two more fit in 300 kB, the fourth does not
    assert len(ids) == 3
    assert response.status == 413
    error = (await response.json())["error"]
    assert error["type"] == "queue_bytes_exceeded"
    assert "the queue holds at most 0.3 MiB of prompts" in error["message"]
    small = await client.post("/prompt", json={"prompt": api_prompt(txt2img_document(seed=9))})
    assert small.status == 200  # a small prompt still fits
    await client.post("/queue", json={"clear": True})
    sampler_gate.set()
    await wait_for_history(client, ids[0])


async def test_listings_stub_big_prompts_and_stay_bounded(make_app, aiohttp_client, sampler_gate):
    sampler_gate.clear()
    client = await aiohttp_client(make_app(limits=Limits(max_listed_prompt_bytes=50_000)))
    big = {"extra_pnginfo": {"workflow": {"blob": "y" * 200_000}}}
    running = await client.post("/prompt", json={"prompt": api_prompt(txt2img_document(seed=0))})
    pending = [await client.post("/prompt", json={"prompt": api_prompt(txt2img_document(seed=s)), "extra_data": big})
               for s in (1, 2)]
    small = await client.post("/prompt", json={"prompt": api_prompt(txt2img_document(seed=3))})
    pending_ids = [(await r.json())["prompt_id"] for r in pending]
    listing = await client.get("/api/queue")
    text = await listing.text()
    assert len(text) < 100_000, f"/api/queue answered {len(text)} bytes"
    entries = {e[1]: e for e in (await listing.json())["queue_pending"]}
    for prompt_id in pending_ids:
        number, _, prompt, extra, outputs = entries[prompt_id]
        assert prompt == {} and extra["latentflow_omitted_bytes"] > 200_000 and outputs
        assert f"/api/history/{prompt_id}" in extra["latentflow_hint"]
    small_entry = entries[(await small.json())["prompt_id"]]
    assert small_entry[2] and "latentflow_omitted_bytes" not in small_entry[3]  # listed in full
    sampler_gate.set()
    await wait_for_history(client, pending_ids[-1])
    history = await client.get("/api/history")
    assert len(await history.text()) < 100_000
    listed = (await history.json())[pending_ids[0]]["prompt"]
    assert listed[2] == {}
    full = await (await client.get(f"/api/history/{pending_ids[0]}")).json()
    assert full[pending_ids[0]]["prompt"][3]["extra_pnginfo"]["workflow"]["blob"] == "y" * 200_000
    assert (await running.json())["prompt_id"]
