"""Hardening: Origin/Host checks, auth token, confined file names, upload checks, body size."""

from __future__ import annotations

import os

import aiohttp
import pytest
from aiohttp import FormData

from tests.web.fake_pack import png_bytes, txt2img_document
from web.security import Limits, SecurityPolicy, UnsafePathError, confined_path, sniff_image

EVIL = "http://evil.example"


@pytest.mark.asyncio
async def test_cross_origin_post_is_refused_same_origin_and_cli_allowed(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    host = f"{client.host}:{client.port}"
    refused = await client.post("/api/prompt", json={"prompt": txt2img_document()}, headers={"Origin": EVIL})
    assert refused.status == 403
    body = await refused.json()
    assert body["error"]["type"] == "cross_origin" and EVIL in body["error"]["message"]
    assert (await (await client.get("/api/queue")).json())["queue_pending"] == []
    for origin in ("null", f"http://{client.host}:1"):  # sandboxed page; other port = other origin
        response = await client.post("/api/interrupt", headers={"Origin": origin})
        assert response.status == 403, origin
    same = await client.post("/api/interrupt", headers={"Origin": f"http://{host}"})
    assert same.status == 200
    cli = await client.post("/api/interrupt")  # curl and scripts send no Origin
    assert cli.status == 200
    # reads carry no side effects and stay open (a foreign page cannot read them without CORS)
    assert (await client.get("/api/object_info", headers={"Origin": EVIL})).status == 200


@pytest.mark.asyncio
async def test_cross_origin_websocket_is_refused(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws?clientId=x", headers={"Origin": EVIL})
    assert refused.value.status == 403
    socket = await client.ws_connect("/ws?clientId=x", headers={"Origin": f"http://{client.host}:{client.port}"})
    assert (await socket.receive_json())["type"] == "status"
    await socket.close()


@pytest.mark.asyncio
async def test_allowed_origin_may_post(make_app, aiohttp_client):
    client = await aiohttp_client(make_app(policy=SecurityPolicy(allowed_origins=frozenset({EVIL}))))
    assert (await client.post("/api/interrupt", headers={"Origin": EVIL})).status == 200


@pytest.mark.asyncio
async def test_foreign_host_header_is_refused_without_token(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    response = await client.get("/api/object_info", headers={"Host": "attacker.example:8188"})
    assert response.status == 403 and (await response.json())["error"]["type"] == "host_not_allowed"
    assert (await client.get("/api/object_info", headers={"Host": "localhost:8188"})).status == 200
    assert (await client.get("/api/object_info", headers={"Host": "[::1]:8188"})).status == 200


@pytest.mark.asyncio
async def test_token_required_by_header_query_or_cookie(make_app, aiohttp_client):
    client = await aiohttp_client(make_app(policy=SecurityPolicy.for_bind("0.0.0.0", token="s3cret")))
    missing = await client.get("/api/queue")
    assert missing.status == 401 and "Bearer" in (await missing.json())["error"]["message"]
    assert (await client.get("/api/queue", headers={"Authorization": "Bearer wrong"})).status == 401
    assert (await client.get("/api/queue", headers={"Authorization": "Bearer s3cret"})).status == 200
    assert (await client.get("/static/style.css")).status == 200  # the editor's code is public
    first = await client.get("/api/queue", params={"token": "s3cret"})
    assert first.status == 200 and first.cookies["latentflow_token"]["samesite"] == "Strict"
    assert (await client.get("/api/system_stats")).status == 200  # the cookie now authenticates
    async with aiohttp.ClientSession() as fresh:  # no cookie, no header: refused
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await fresh.ws_connect(client.make_url("/ws"))
    assert refused.value.status == 401


def test_non_local_bind_requires_a_token():
    with pytest.raises(ValueError, match="--auth-token"):
        SecurityPolicy.for_bind("0.0.0.0")
    assert SecurityPolicy.for_bind("127.0.0.1").token is None
    assert "192.168.1.5" in SecurityPolicy.for_bind("192.168.1.5", token="t").allowed_hosts


@pytest.mark.asyncio
async def test_view_confines_names(make_app, aiohttp_client, settings, tmp_path):
    client = await aiohttp_client(make_app())
    settings.output_dir.mkdir(parents=True)
    (settings.output_dir / "ok.png").write_bytes(png_bytes(2, 2, (1, 2, 3)))
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, settings.output_dir / "link.png")
    assert (await client.get("/api/view", params={"filename": "ok.png"})).status == 200
    attempts = [
        {"filename": "../secret.txt"},
        {"filename": "secret.txt", "subfolder": ".."},
        {"filename": str(secret)},
        {"filename": "ok.png\x00.txt"},
        {"filename": "link.png"},
        {"filename": "ok.png", "type": "config"},
        {"filename": "..\\secret.txt"},
    ]
    for params in attempts:
        response = await client.get("/api/view", params=params)
        assert response.status == 400, params
        assert "top secret" not in await response.text()
        assert (await response.json())["error"]["type"] == "unsafe_path"


def test_confined_path_rules(tmp_path):
    assert confined_path(tmp_path, "a/b", "c.png") == tmp_path.resolve() / "a" / "b" / "c.png"
    for parts in (("../x",), ("/etc/passwd",), ("a", "..", "b"), ("x\x00y",), ("C:\\x",)):
        with pytest.raises(UnsafePathError):
            confined_path(tmp_path, *parts)


def test_sniff_image():
    assert sniff_image(png_bytes(1, 1, (0, 0, 0))[:16]) == "png"
    assert sniff_image(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_image(b"<svg xmlns=...") is None


def _form(data: bytes, filename: str, **fields: str) -> FormData:
    form = FormData()
    form.add_field("image", data, filename=filename, content_type="application/octet-stream")
    for key, value in fields.items():
        form.add_field(key, value)
    return form


@pytest.mark.asyncio
async def test_upload_checks_type_name_size_and_does_not_overwrite(make_app, aiohttp_client, settings):
    client = await aiohttp_client(make_app(limits=Limits(max_upload_bytes=4096)))
    image = png_bytes(4, 4, (9, 9, 9))
    first = await client.post("/api/upload/image", data=_form(image, "cat.png"))
    assert await first.json() == {"name": "cat.png", "subfolder": "", "type": "input"}
    same = await client.post("/api/upload/image", data=_form(image, "cat.png"))
    assert (await same.json())["name"] == "cat.png"  # the same bytes again: reused (ComfyUI's rule)
    second = await client.post("/api/upload/image", data=_form(png_bytes(4, 4, (1, 2, 3)), "cat.png"))
    assert (await second.json())["name"] == "cat (1).png"
    assert (settings.input_dir / "cat.png").read_bytes() == image
    replaced = await client.post("/api/upload/image", data=_form(image, "cat.png", overwrite="true"))
    assert (await replaced.json())["name"] == "cat.png"
    renamed = await client.post("/api/upload/image", data=_form(image, "photo.jpg", subfolder="sets"))
    assert await renamed.json() == {"name": "photo.png", "subfolder": "sets", "type": "input"}  # bytes decide
    assert (settings.input_dir / "sets" / "photo.png").read_bytes() == image

    html = await client.post("/api/upload/image", data=_form(b"<html><script>alert(1)</script>", "x.png"))
    assert html.status == 415
    big = await client.post("/api/upload/image", data=_form(image + b"\x00" * 5000, "big.png"))
    assert big.status == 413 and not (settings.input_dir / "big.png").exists()
    escape = await client.post("/api/upload/image", data=_form(image, "x.png", subfolder="../../etc"))
    assert escape.status == 400
    hidden = await client.post("/api/upload/image", data=_form(image, ".bashrc"))
    assert hidden.status == 400


@pytest.mark.asyncio
async def test_workflow_names_are_confined(make_app, aiohttp_client, settings):
    client = await aiohttp_client(make_app())
    for name in ("..%2F..%2Fescape", "%2Eprofile", "a%00b"):
        response = await client.post(f"/api/workflows/{name}", json=txt2img_document())
        assert response.status in (400, 404), name
    assert not list(settings.root.rglob("escape.json"))
    assert (await client.get("/api/workflows/..%2Ftxt2img")).status in (400, 404)


@pytest.mark.asyncio
async def test_request_body_size_is_limited(make_app, aiohttp_client):
    client = await aiohttp_client(make_app(limits=Limits(max_body_bytes=10_000)))
    response = await client.post("/api/prompt", data=b"{" + b" " * 20_000 + b"}",
                                 headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # error responses are hardened too


@pytest.mark.asyncio
async def test_view_never_renders_html_or_svg(make_app, aiohttp_client, settings):
    client = await aiohttp_client(make_app())
    settings.output_dir.mkdir(parents=True)
    (settings.output_dir / "page.html").write_text("<script>alert(1)</script>")
    (settings.output_dir / "logo.svg").write_text("<svg onload='alert(1)'/>")
    for name in ("page.html", "logo.svg"):
        response = await client.get("/api/view", params={"filename": name})
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"].startswith("attachment")
        assert "sandbox" in response.headers["Content-Security-Policy"]


@pytest.mark.asyncio
async def test_queue_length_is_limited(make_app, aiohttp_client, sampler_gate):
    sampler_gate.clear()
    client = await aiohttp_client(make_app(limits=Limits(max_pending=2)))
    statuses = [(await client.post("/api/prompt", json={"prompt": txt2img_document(seed=i)})).status
                for i in range(3)]
    assert statuses == [200, 200, 429]
    await client.post("/api/interrupt")
    await client.post("/api/queue", json={"clear": True})
