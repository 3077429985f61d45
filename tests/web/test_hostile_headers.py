"""Auth headers that are not ASCII: the real server answers 401 JSON, never 500.

aiohttp's client refuses to send such headers, so these tests write the HTTP request bytes
themselves to the real server's socket."""

from __future__ import annotations

import asyncio
import json

import pytest

from web.security import SecurityPolicy, token_matches

TOKEN = "s3cret-token"


async def raw_get(host: str, port: int, path: bytes, headers: list[bytes]) -> tuple[int, dict]:
    """Send a GET with exactly these header bytes; the status and the JSON body."""
    reader, writer = await asyncio.open_connection(host, port)
    request = b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    writer.write(request + b"".join(h + b"\r\n" for h in headers) + b"\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head.lower(), head
    return status, json.loads(body)


@pytest.mark.asyncio
@pytest.mark.parametrize("header", [
    b"Authorization: Bearer t\xf6k\xe9n",                  # Latin-1 bytes: not UTF-8 at all
    "Authorization: Bearer tökén".encode(),                # valid UTF-8, still the wrong token
    b"Authorization: Bearer " + TOKEN.encode() + b"\xff",  # the right token plus a stray byte
    b"Cookie: latentflow_token=t\xf6k\xe9n",
])
async def test_non_ascii_token_header_is_401_json(make_app, aiohttp_client, header):
    client = await aiohttp_client(make_app(policy=SecurityPolicy(token=TOKEN)))
    status, body = await raw_get(client.host, client.port, b"/api/queue", [header])
    assert status == 401, body
    assert body["error"]["type"] == "unauthorized"
    assert "Authorization: Bearer TOKEN" in body["error"]["message"]
    # the server is unharmed and the right token still works
    status, body = await raw_get(client.host, client.port, b"/api/queue",
                                 [b"Authorization: Bearer " + TOKEN.encode()])
    assert status == 200 and body["queue_running"] == []


@pytest.mark.asyncio
async def test_non_ascii_token_in_query_is_401_json(make_app, aiohttp_client):
    client = await aiohttp_client(make_app(policy=SecurityPolicy(token=TOKEN)))
    # (a raw non-ASCII byte in the request line is refused by aiohttp's HTTP parser itself)
    for query in (b"/api/queue?token=t%F6k%E9n", b"/api/queue?token=%FF%FE", b"/api/queue?token=%ED%B3%B6"):
        status, body = await raw_get(client.host, client.port, query, [])
        assert status in (400, 401), (query, body)
        assert body["error"]["type"] in ("unauthorized", "bad_request"), body


@pytest.mark.asyncio
async def test_a_non_ascii_token_works_when_sent_as_utf8(make_app, aiohttp_client):
    token = "tökén-π"
    client = await aiohttp_client(make_app(policy=SecurityPolicy(token=token)))
    status, _ = await raw_get(client.host, client.port, b"/api/queue", [b"Authorization: Bearer " + token.encode()])
    assert status == 200
    status, body = await raw_get(client.host, client.port, b"/api/queue",
                                 [b"Authorization: Bearer " + token.encode("latin-1", "replace")])
    assert status == 401 and body["error"]["type"] == "unauthorized"


def test_token_matches_compares_the_bytes_sent():
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches("t\udcf6k\udce9n", TOKEN)  # what aiohttp makes of Latin-1 header bytes
    assert not token_matches(TOKEN + "\udcff", TOKEN)
    assert token_matches("tökén", "tökén") and not token_matches("tokén", "tökén")
