"""The routes ComfyUI's frontend calls, answered in the shapes of ComfyUI's server.py and
app/user_manager.py (served with either frontend; ``/api`` and prefix-less alike)."""

from __future__ import annotations

import io
import json
import logging

import aiohttp
import pytest
from PIL import Image

from tests.web.fake_pack import png_bytes
from tests.web.helpers import receive_until

pytestmark = pytest.mark.asyncio


async def test_logs_raw_and_subscription(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    logging.getLogger("tests.web").warning("a line for the log panel")
    text = await (await client.get("/internal/logs")).json()
    assert isinstance(text, str) and "a line for the log panel" in text
    raw = await (await client.get("/internal/logs/raw")).json()
    assert set(raw) == {"entries", "size"} and set(raw["size"]) == {"cols", "rows"}
    entry = raw["entries"][-1]
    assert set(entry) == {"t", "m"} and "a line for the log panel" in entry["m"]

    socket = await client.ws_connect("/ws?clientId=logger")
    await socket.receive_json()
    response = await client.patch("/internal/logs/subscribe", json={"clientId": "logger", "enabled": True})
    assert response.status == 200
    logging.getLogger("tests.web").warning("streamed line")
    messages = await receive_until(socket, lambda m: m["type"] == "logs")
    assert "streamed line" in messages[-1]["data"]["entries"][0]["m"]
    await socket.close()


async def test_userdata_listing_options(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    for name in ("workflows%2Fa.json", "workflows%2Fsub%2Fb.json"):
        assert (await client.post(f"/api/userdata/{name}", data=b"{}")).status == 200
    assert (await client.get("/api/userdata")).status == 400  # dir is required
    assert (await client.get("/api/userdata", params={"dir": "nothing"})).status == 404
    flat = await (await client.get("/api/userdata", params={"dir": "workflows"})).json()
    assert flat == ["a.json"]
    deep = await (await client.get("/userdata", params={"dir": "workflows", "recurse": "true"})).json()
    assert deep == ["a.json", "sub/b.json"]
    split = await (await client.get("/api/userdata", params={"dir": "workflows", "recurse": "true",
                                                             "split": "true"})).json()
    assert split == [["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]]
    full = await (await client.get("/api/userdata", params={"dir": "workflows", "full_info": "true"})).json()
    assert [set(f) for f in full] == [{"path", "size", "modified", "created"}] and full[0]["size"] == 2


async def test_userdata_save_move_delete(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    saved = await (await client.post("/api/userdata/workflows%2Fa.json?full_info=true", data=b"[1]")).json()
    assert saved["path"] == "workflows/a.json" and saved["size"] == 3
    moved = await client.post("/api/userdata/workflows%2Fa.json/move/workflows%2Fb.json")
    assert moved.status == 200 and await moved.json() == "workflows/b.json"
    assert (await client.get("/api/userdata/workflows%2Fa.json")).status == 404
    assert await (await client.get("/api/userdata/workflows%2Fb.json")).read() == b"[1]"
    await client.post("/api/userdata/workflows%2Fc.json", data=b"{}")
    refused = await client.post("/api/userdata/workflows%2Fc.json/move/workflows%2Fb.json?overwrite=false")
    assert refused.status == 409
    escape = await client.post("/api/userdata/workflows%2Fc.json/move/..%2F..%2Fescape.json")
    assert escape.status == 400
    assert (await client.delete("/api/userdata/workflows%2Fb.json")).status == 204


async def test_users_settings_features_i18n(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())  # served with our own editor too
    assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": True}
    await client.post("/settings", json={"Comfy.Locale": "en"})
    await client.post("/api/settings/Comfy.Theme", json="dark")
    assert await (await client.get("/api/settings")).json() == {"Comfy.Locale": "en", "Comfy.Theme": "dark"}
    assert await (await client.get("/api/settings/Comfy.Theme")).json() == "dark"
    assert await (await client.get("/api/settings/Unset")).json() is None
    features = await (await client.get("/features")).json()
    assert features["supports_preview_metadata"] is False and features["max_upload_size"] > 0
    assert await (await client.get("/api/i18n")).json() == {}


async def test_system_stats_has_comfyuis_shape(make_app, aiohttp_client):
    client = await aiohttp_client(make_app())
    stats = await (await client.get("/system_stats")).json()
    assert set(stats["system"]) >= {"os", "ram_total", "ram_free", "comfyui_version", "python_version",
                                    "pytorch_version", "embedded_python", "argv", "required_frontend_version"}
    assert stats["system"]["ram_total"] >= stats["system"]["ram_free"] >= 0
    for device in stats["devices"]:
        assert set(device) >= {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total",
                               "torch_vram_free"}


async def test_models_embeddings_and_extensions(make_app, aiohttp_client, settings):
    for relative in ("checkpoints/a.safetensors", "checkpoints/sd/b.ckpt", "checkpoints/notes.txt",
                     "clip/te.safetensors", "embeddings/style.pt", "embeddings/neg/bad.safetensors"):
        path = settings.models_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    client = await aiohttp_client(make_app())
    folders = await (await client.get("/api/models")).json()
    assert {"checkpoints", "loras", "vae", "embeddings", "text_encoders", "diffusion_models"} <= set(folders)
    assert await (await client.get("/api/models/checkpoints")).json() == ["a.safetensors", "sd/b.ckpt"]
    assert await (await client.get("/models/text_encoders")).json() == ["te.safetensors"]  # the legacy clip/ too
    assert (await client.get("/api/models/nope")).status == 404
    assert await (await client.get("/api/embeddings")).json() == ["neg/bad", "style"]
    assert await (await client.get("/api/extensions")).json() == []  # our editor: no frontend extensions


def _form(data: bytes, name: str, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return form


def _rgba_png(alpha: int, text: dict[str, str] | None = None) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (200, 10, 10, alpha)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


async def test_upload_image_fields_and_mask(make_app, aiohttp_client, settings):
    client = await aiohttp_client(make_app())
    photo = _rgba_png(255, {"workflow": "{}"})
    uploaded = await client.post("/upload/image", data=_form(photo, "photo.png", subfolder="clip", type="input"))
    assert await uploaded.json() == {"name": "photo.png", "subfolder": "clip", "type": "input"}
    reference = json.dumps({"filename": "photo.png", "subfolder": "clip", "type": "input"})
    masked = await client.post("/api/upload/mask", data=_form(_rgba_png(0), "clipspace-mask.png",
                                                             original_ref=reference, type="input"))
    assert await masked.json() == {"name": "clipspace-mask.png", "subfolder": "", "type": "input"}
    with Image.open(settings.input_dir / "clipspace-mask.png") as result:
        assert result.mode == "RGBA" and result.getpixel((0, 0)) == (200, 10, 10, 0)  # colour kept, alpha from mask
        assert result.text["workflow"] == "{}"  # the original's text chunks survive
    missing = await client.post("/api/upload/mask", data=_form(_rgba_png(0), "m.png",
                                                              original_ref='{"filename": "gone.png"}'))
    assert missing.status == 404
    bad = await client.post("/api/upload/mask", data=_form(_rgba_png(0), "m.png", original_ref="not json"))
    assert bad.status == 400


async def test_view_preview_channel_and_annotated_names(make_app, aiohttp_client, settings):
    settings.input_dir.mkdir(parents=True, exist_ok=True)
    (settings.input_dir / "pic.png").write_bytes(_rgba_png(128))
    client = await aiohttp_client(make_app())
    annotated = await client.get("/view", params={"filename": "pic.png [input]"})
    assert annotated.status == 200 and annotated.headers["Content-Type"] == "image/png"
    preview = await client.get("/view", params={"filename": "pic.png", "type": "input", "preview": "jpeg;50"})
    assert preview.headers["Content-Type"] == "image/jpeg" and (await preview.read())[:2] == b"\xff\xd8"
    webp = await client.get("/view", params={"filename": "pic.png", "type": "input", "preview": "png"})
    assert webp.headers["Content-Type"] == "image/webp"  # only webp and jpeg previews, as ComfyUI
    rgb = await client.get("/view", params={"filename": "pic.png", "type": "input", "channel": "rgb"})
    with Image.open(io.BytesIO(await rgb.read())) as image:
        assert image.mode == "RGB" and image.getpixel((0, 0)) == (200, 10, 10)
    alpha = await client.get("/view", params={"filename": "pic.png", "type": "input", "channel": "a"})
    with Image.open(io.BytesIO(await alpha.read())) as image:
        assert image.getpixel((0, 0))[3] == 128
    assert (await client.get("/view", params={"filename": "../pic.png", "type": "input"})).status == 400


async def test_internal_files_and_folder_paths(make_app, aiohttp_client, settings):
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    (settings.output_dir / "one.png").write_bytes(png_bytes(2, 2, (1, 1, 1)))
    client = await aiohttp_client(make_app())
    assert await (await client.get("/internal/files/output")).json() == ["one.png"]
    assert (await client.get("/internal/files/models")).status == 400
    paths = await (await client.get("/internal/folder_paths")).json()
    assert paths["checkpoints"] == [str(settings.models_dir / "checkpoints")]
