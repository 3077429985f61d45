"""File handlers: view outputs, upload inputs, list/load/save workflows.

Every name a client sends goes through :func:`web.security.confined_path` or
:func:`web.security.safe_file_name`; uploads are checked by magic bytes and size.
"""

from __future__ import annotations

import io
import json
import mimetypes
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from engine.settings import Settings
from web.handlers import checked_document, error_response, off_loop, read_json
from web.keys import LIMITS, REGISTRY, SETTINGS
from web.security import IMAGE_SUFFIXES, UnsafePathError, confined_path, safe_file_name, sniff_image

routes = web.RouteTableDef()

FOLDER_TYPES = ("output", "input", "temp")


def folder_for(settings: Settings, kind: str) -> Path:
    if kind == "output":
        return settings.output_dir
    if kind == "input":
        return settings.input_dir
    if kind == "temp":
        return settings.root / "temp"
    raise UnsafePathError(f"type must be one of {', '.join(FOLDER_TYPES)}, got {kind!r}")


def user_workflows_dir(settings: Settings) -> Path:
    return settings.root / "user" / "workflows"


# --------------------------------------------------------------------------- view


ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}


def annotated_name(filename: str, default_type: str) -> tuple[str, str]:
    """ComfyUI's ``name.png [input]`` form: the suffix names the folder type."""
    for suffix, kind in ANNOTATIONS.items():
        if filename.endswith(suffix):
            return filename[: -len(suffix)], kind
    return filename, default_type


@routes.get("/api/view")
async def view(request: web.Request) -> web.StreamResponse:
    """``?filename=&subfolder=&type=output|input|temp``; ``preview=webp|jpeg[;quality]``
    re-encodes; ``channel=rgb|a`` returns the colour or the alpha of the image as PNG."""
    filename = request.query.get("filename", "")
    if not filename:
        return error_response(400, "bad_request", "give ?filename=NAME (and optionally subfolder, type)")
    filename, kind = annotated_name(filename, request.query.get("type", "output"))
    try:
        folder = folder_for(request.app[SETTINGS], kind)
        safe_file_name(filename)
        path = confined_path(folder, request.query.get("subfolder", ""), filename)
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if not path.is_file():
        return error_response(404, "not_found", f"no file {filename!r} in that folder")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    preview, channel = request.query.get("preview"), request.query.get("channel", "")
    if content_type.startswith("image/") and content_type != "image/svg+xml" and (preview or channel in ("rgb", "a")):
        try:
            body, content_type = await off_loop(_converted_image, path, preview, channel)
        except (OSError, ValueError) as error:
            return error_response(415, "unsupported_type", f"{filename!r} cannot be converted: {error}")
        return web.Response(body=body, content_type=content_type, headers={
            "Content-Disposition": f'inline; filename="{path.name}"', "Cache-Control": "no-cache",
            "Content-Security-Policy": "default-src 'none'; sandbox"})
    inline = content_type.startswith(("image/", "video/", "audio/")) and content_type != "image/svg+xml"
    disposition = "inline" if inline else "attachment"  # never render HTML/SVG from output folders
    return web.FileResponse(path, headers={
        "Content-Type": content_type if inline else "application/octet-stream",
        "Content-Disposition": f'{disposition}; filename="{path.name}"',
        "Content-Security-Policy": "default-src 'none'; sandbox", "Cache-Control": "no-cache"})


def _converted_image(path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
    """The image re-encoded as /view's ``preview`` and ``channel`` ask (ComfyUI's rules:
    a preview is webp unless jpeg is asked and no alpha is wanted; default quality 90;
    no ``channel`` means rgba)."""
    from PIL import Image  # heavy optional import, only for conversions

    with Image.open(path) as image:
        buffer = io.BytesIO()
        if preview:
            parts = preview.split(";")
            image_format = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in channel else "webp"
            quality = int(parts[-1]) if parts[-1].isdigit() else 90
            picture = image.convert("RGB") if image_format == "jpeg" or channel == "rgb" else image
            picture.save(buffer, format=image_format, quality=min(max(quality, 1), 100))
            return buffer.getvalue(), f"image/{image_format}"
        if channel == "rgb":
            image.convert("RGB").save(buffer, format="PNG")
        else:  # "a": the alpha channel as the alpha of a black image (opaque when it has none)
            alpha = image.getchannel("A") if image.mode == "RGBA" else Image.new("L", image.size, 255)
            out = Image.new("RGBA", image.size)
            out.putalpha(alpha)
            out.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"


# --------------------------------------------------------------------------- upload


@routes.post("/api/upload/image")
async def upload_image(request: web.Request) -> web.Response:
    """Multipart ``image`` (PNG/JPEG/WebP), optional ``subfolder``, ``type`` and ``overwrite``."""
    form = await _read_upload(request)
    if isinstance(form, web.Response):
        return form
    data, filename, fields = form
    return await _store_upload(request, data, filename, fields)


@routes.post("/api/upload/mask")
async def upload_mask(request: web.Request) -> web.Response:
    """A mask painted in the frontend: the ``image`` field's alpha becomes the alpha of the
    image named by ``original_ref`` (``{"filename", "subfolder", "type"}``), which is saved as
    a PNG under the uploaded name (its text chunks, e.g. the workflow, kept)."""
    form = await _read_upload(request)
    if isinstance(form, web.Response):
        return form
    data, filename, fields = form
    try:
        reference = json.loads(fields.get("original_ref", ""))
        if not isinstance(reference, dict) or not isinstance(reference.get("filename"), str):
            raise ValueError("original_ref must be an object with a filename")
        original_name, kind = annotated_name(reference["filename"], str(reference.get("type") or "output"))
        safe_file_name(original_name)
        original = confined_path(folder_for(request.app[SETTINGS], kind), str(reference.get("subfolder") or ""),
                                 original_name)
    except (ValueError, UnsafePathError) as error:
        return error_response(400, "bad_request", f"original_ref: {error}; send "
                              '{"filename": "x.png", "subfolder": "", "type": "input"}')
    if not original.is_file():
        return error_response(404, "not_found", f"original_ref names no file: {reference['filename']!r}")
    refused = await off_loop(image_problem, data)  # before the merge decodes it
    if refused is not None:
        return error_response(*refused)
    try:
        merged = await off_loop(_merge_mask, original, data)
    except (OSError, ValueError) as error:
        return error_response(415, "unsupported_type", f"cannot apply the mask: {error}")
    return await _store_upload(request, merged, filename or "mask.png", fields)


def _merge_mask(original: Path, mask_png: bytes) -> bytes:
    from PIL import Image  # heavy optional import
    from PIL.PngImagePlugin import PngInfo

    with Image.open(original) as picture, Image.open(io.BytesIO(mask_png)) as mask:
        info = PngInfo()
        for key, value in getattr(picture, "text", {}).items():
            info.add_text(key, value)
        merged = picture.convert("RGBA")
        merged.putalpha(mask.convert("RGBA").getchannel("A").resize(merged.size))
        buffer = io.BytesIO()
        merged.save(buffer, format="PNG", pnginfo=info, compress_level=4)
        return buffer.getvalue()


async def _read_upload(request: web.Request) -> tuple[bytes, str, dict[str, str]] | web.Response:
    limits = request.app[LIMITS]
    if not request.content_type.startswith("multipart/"):
        return error_response(400, "bad_request", "send multipart/form-data with an 'image' field")
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = ""
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "image":
                filename = part.filename or ""
                data = await _read_limited(part, limits.max_upload_bytes)
                if data is None:
                    return error_response(413, "too_large",
                                          f"the image is larger than {limits.max_upload_bytes >> 20} MiB")
            elif part.name:
                fields[part.name] = (await part.read(decode=True)).decode("utf-8", "replace")[:4000]
    except (HttpProcessingError, ValueError, UnicodeError) as error:  # a malformed form: the client's fault
        message = getattr(error, "message", None) or str(error)
        return error_response(400, "bad_request", f"unreadable multipart form: {str(message)[:200]}")
    if data is None:
        return error_response(400, "bad_request", "no 'image' field in the form")
    return data, filename, fields


async def _store_upload(request: web.Request, data: bytes, filename: str, fields: dict[str, str]) -> web.Response:
    """Save into ``type``/``subfolder``; an existing name gets `` (n)`` unless ``overwrite``
    is true, or is reused when it holds the same bytes (ComfyUI's duplicate rule)."""
    kind = sniff_image(data[:16])
    if kind is None:
        return error_response(415, "unsupported_type", "only PNG, JPEG and WebP images can be uploaded")
    refused = await off_loop(image_problem, data)
    if refused is not None:
        return error_response(*refused)
    kind_folder = fields.get("type") or "input"
    try:
        name = safe_file_name(Path(filename).name if filename else f"upload.{kind}")
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES[kind]:
            name = f"{Path(name).stem}{IMAGE_SUFFIXES[kind][0]}"  # the bytes decide the type
        folder = confined_path(folder_for(request.app[SETTINGS], kind_folder), fields.get("subfolder", ""))
        target = confined_path(folder, name)
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    overwrite = fields.get("overwrite", "").lower() in ("1", "true")
    if target.exists() and not overwrite:
        target = _free_name(target, data)
    if not (target.is_file() and target.read_bytes() == data):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return web.json_response({"name": target.name, "subfolder": fields.get("subfolder", ""), "type": kind_folder})


# An upload is refused from its header, before anything decodes it: a 140 KB PNG of
# 12000x12000 (under PIL's own bomb limit of 179 megapixels) took 4.9 GiB through LoadImage.
# nodes.limits.MAX_IMAGE_PIXELS is the same bound for files put into input/ by hand.
MAX_UPLOAD_PIXELS = 8192 * 8192
# One PNG text chunk, inflated (a ComfyUI UI graph is well under 1 MiB; a zTXt bomb of 300 MiB
# of text took 640 MiB before anything refused it).
MAX_TEXT_CHUNK_BYTES = 8 << 20


def image_problem(data: bytes) -> tuple[int, str, str] | None:
    """(status, type, message) refusing an uploaded image by its header, or None: too many
    pixels, a text chunk that inflates past MAX_TEXT_CHUNK_BYTES, or a header PIL cannot read."""
    from PIL import Image, UnidentifiedImageError  # heavy optional import

    if data.startswith(b"\x89PNG\r\n\x1a\n"):  # before PIL, which reads text chunks while opening
        too_big = _oversized_text_chunk(data)
        if too_big is not None:
            return 413, "text_chunk_too_large", too_big
    try:
        with warnings.catch_warnings():  # PIL warns past 89 megapixels; we refuse past our own bound
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:  # reads the header only; no pixels decoded
                width, height = opened.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        return 415, "unsupported_type", f"the image header cannot be read: {error}"
    except Image.DecompressionBombError as error:
        return 413, "too_many_pixels", str(error)
    if width * height > MAX_UPLOAD_PIXELS:
        return (413, "too_many_pixels", f"the image is {width}x{height} = {width * height / 1e6:.0f} megapixels; "
                f"uploads are limited to {MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels (e.g. 8192x8192): downscale it first")
    return None


def _oversized_text_chunk(data: bytes) -> str | None:
    """Why a PNG text chunk (tEXt, zTXt, iTXt) is too big once inflated, or None."""
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        key, _, rest = body.partition(b"\x00")
        name = key.decode("latin-1")[:80]
        compressed = kind == b"zTXt" or (kind == b"iTXt" and rest[:1] == b"\x01")
        if compressed:
            if kind == b"iTXt":  # flag, method, language\0, translated keyword\0, text
                rest = rest[2:].partition(b"\x00")[2].partition(b"\x00")[2]
            else:
                rest = rest[1:]
            inflater = zlib.decompressobj()
            try:
                size = len(inflater.decompress(rest, MAX_TEXT_CHUNK_BYTES + 1))
            except zlib.error as error:
                return f"the PNG text chunk {name!r} is damaged ({error})"
        else:
            size = len(rest)
        if size > MAX_TEXT_CHUNK_BYTES:
            return (f"the PNG text chunk {name!r} holds more than {MAX_TEXT_CHUNK_BYTES >> 20} MiB of text; "
                    "a workflow is well under that: strip the metadata and upload again")
    return None


async def _read_limited(part: BodyPartReader, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _free_name(path: Path, data: bytes) -> Path:
    """``path`` itself when it holds ``data`` already, else the first free ``name (n).ext``
    (or the first of those holding ``data``)."""
    candidate = path
    for index in range(1, 10000):
        if not candidate.exists() or (candidate.is_file() and candidate.read_bytes() == data):
            return candidate
        candidate = path.with_name(f"{path.stem} ({index}){path.suffix}")
    raise UnsafePathError(f"too many files named like {path.name!r}")


# --------------------------------------------------------------------------- workflows


def _workflow_name(raw: str) -> str:
    name = raw[:-5] if raw.endswith(".json") else raw
    return safe_file_name(name)


def _workflow_entries(folder: Path, source: str) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return entries
    for path in sorted(folder.glob("*.json")):
        if path.is_symlink() or not path.is_file():
            continue
        title = path.stem
        try:
            meta = json.loads(path.read_text(encoding="utf-8")).get("meta") or {}
            title = str(meta.get("title") or title)
        except (ValueError, AttributeError, OSError):
            title = f"{path.stem} (unreadable)"
        entries[path.stem] = {"name": path.stem, "source": source, "title": title}
    return entries


@routes.get("/api/workflows")
async def list_workflows(request: web.Request) -> web.Response:
    """Shipped workflows, then the user's (a user workflow shadows a shipped one of that name)."""
    settings = request.app[SETTINGS]
    entries = _workflow_entries(settings.workflows_dir, "shipped")
    entries.update(_workflow_entries(user_workflows_dir(settings), "user"))
    return web.json_response({"workflows": sorted(entries.values(), key=lambda e: e["name"])})


@routes.get("/api/workflows/{name}")
async def get_workflow(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        name = _workflow_name(request.match_info["name"])
        candidates = [confined_path(user_workflows_dir(settings), f"{name}.json"),
                      confined_path(settings.workflows_dir, f"{name}.json")]
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    for path in candidates:
        if path.is_file():
            try:
                return web.json_response(json.loads(path.read_text(encoding="utf-8")))
            except ValueError as error:
                return error_response(500, "unreadable", f"workflow {name!r} is not valid JSON: {error}")
    return error_response(404, "not_found", f"no workflow named {name!r}")


@routes.post("/api/workflows")
async def save_named_workflow(request: web.Request) -> web.Response:
    """``{"name": ..., "workflow": {...}}``: the same as ``POST /api/workflows/{name}``."""
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or "workflow" not in body:
        return error_response(400, "bad_request", 'send {"name": "my-workflow", "workflow": {...}}')
    return await _save_workflow(request, body["name"], body["workflow"])


@routes.post("/api/workflows/{name}")
async def save_workflow(request: web.Request) -> web.Response:
    """Save to the user folder; the body is the workflow document (checked against the schema)."""
    return await _save_workflow(request, request.match_info["name"], await read_json(request))


async def _save_workflow(request: web.Request, raw_name: str, document: Any) -> web.Response:
    try:
        name = _workflow_name(raw_name)
        path = confined_path(user_workflows_dir(request.app[SETTINGS]), f"{name}.json")
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    report = await checked_document(document, request.app[REGISTRY])
    schema_problems = [p.to_dict() for p in report.errors if p.code == "schema"]
    if report.workflow is None or schema_problems:
        return web.json_response({"error": {"type": "invalid_workflow", "message":
                                            "not a workflow document; nothing was saved",
                                            "problems": schema_problems}}, status=400)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return web.json_response({"name": name, "source": "user",
                              "problems": [p.to_dict() for p in report.errors]})
