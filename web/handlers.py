"""REST handlers for the catalogue and stats, and the helpers every handler module shares.

Prompts, the queue and history are in :mod:`web.handlers_prompt`.

Handlers are thin: parse the request, call the service stored on the app, shape JSON.
Response bodies follow ComfyUI's API so its clients can talk to this server.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import sys
from typing import Any, Callable, TypeVar

from aiohttp import web

from engine.json_input import JSONInputError, load_json
from engine.validation import ValidationReport, looks_like_api_prompt, validate_document
from web.keys import HUB, QUEUE, REGISTRY, SETTINGS

routes = web.RouteTableDef()
T = TypeVar("T")

COMFYUI_API_VERSION = "0.3.64"


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"type": code, "message": message, **extra}}, status=status)


async def read_json(request: web.Request, *, required: bool = True, lenient: bool = False) -> Any:
    """The request body as JSON, under ``engine.json_input``'s limits; a 400 that says what is
    wrong otherwise (``lenient``: an unreadable body counts as empty, as ComfyUI's /interrupt
    and /free treat it)."""
    data = await request.read()
    try:
        charset = request.charset
    except (ValueError, UnicodeError):  # a Content-Type aiohttp cannot parse
        charset = "invalid"
    if not data.strip():
        if required and not lenient:
            raise web.HTTPBadRequest(text=json.dumps({"error": {
                "type": "empty_body", "message": "the request body is empty; send a JSON object"}}),
                content_type="application/json")
        return {}
    try:
        return load_json(data, charset=charset)
    except JSONInputError as error:
        if lenient:
            return {}
        raise web.HTTPBadRequest(text=json.dumps({"error": {
            "type": error.kind, "message": f"the request body was refused: {error}", "details": "",
            "extra_info": {}}, "node_errors": {}}), content_type="application/json") from None


def id_list(body: Any, key: str) -> list[str]:
    values = body.get(key) if isinstance(body, dict) else None
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, (str, int)) for v in values):
        raise web.HTTPBadRequest(text=json.dumps({"error": {
            "type": "bad_request", "message": f"{key!r} must be a list of prompt ids"}}),
            content_type="application/json")
    return [str(v) for v in values]


# --------------------------------------------------------------------------- catalogue


@routes.get("/api/object_info")
async def object_info(request: web.Request) -> web.Response:
    return web.json_response(await off_loop(request.app[REGISTRY].object_info), dumps=dumps_json)


@routes.get("/api/object_info/{node_type}")
async def object_info_one(request: web.Request) -> web.Response:
    node_type = request.match_info["node_type"]
    info = await off_loop(request.app[REGISTRY].object_info)
    if node_type not in info:
        return error_response(404, "unknown_node_type", f"no node type {node_type!r} is registered")
    return web.json_response({node_type: info[node_type]}, dumps=dumps_json)


@routes.get("/api/node_failures")
async def node_failures(request: web.Request) -> web.Response:
    """Plugins that failed to load (the editor shows them in a banner)."""
    return web.json_response([f.to_dict() for f in request.app[REGISTRY].failures])


def dumps_json(value: Any) -> str:
    return json.dumps(value, default=str)


# --------------------------------------------------------------------------- validation


def shape_problem(document: Any) -> str | None:
    """What makes ``document`` unreadable as a workflow at all, before validation proper.

    (engine.validation reports most shape errors itself but assumes ``nodes`` is an object.)
    """
    if looks_like_api_prompt(document):
        return None
    if not isinstance(document, dict):
        return f"a workflow must be a JSON object, got {type(document).__name__}"
    nodes = document.get("nodes")
    if nodes is not None and not isinstance(nodes, dict):
        return f'"nodes" must be an object of node id -> node, got {type(nodes).__name__}'
    for node_id, entry in (nodes or {}).items():
        if isinstance(entry, dict) and not isinstance(entry.get("inputs", {}), dict):
            return f'node {node_id}: "inputs" must be an object of input name -> value'
    return None


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """Run blocking work (file listings for choices, validation of big graphs) in a thread,
    so the event loop keeps serving websockets meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def checked_document(document: Any, registry: Any) -> ValidationReport:
    """Validate, turning an unreadable shape into a 400 that says what is wrong."""
    problem = shape_problem(document)
    if problem is not None:
        raise web.HTTPBadRequest(text=json.dumps({"error": {
            "type": "invalid_prompt", "message": problem, "details": "", "extra_info": {},
            "hint": 'a workflow is {"version": 1, "nodes": {"1": {"type": ..., "inputs": {...}}}} '
                    'or a ComfyUI API prompt {"1": {"class_type": ..., "inputs": {...}}}'},
            "node_errors": {}}), content_type="application/json")
    return await off_loop(validate_document, document, registry)


def int_query(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": {
            "type": "bad_request", "message": f"{name} must be a whole number, got {raw!r}"}}),
            content_type="application/json") from None
    if value < 0:
        raise web.HTTPBadRequest(text=json.dumps({"error": {
            "type": "bad_request", "message": f"{name} must be >= 0, got {value}"}}),
            content_type="application/json")
    return value


# --------------------------------------------------------------------------- stats


@routes.get("/api/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    """ComfyUI's shape (``system``, ``devices``); our own counters under ``latentflow``."""
    settings = request.app[SETTINGS]
    ram_total, ram_free = _ram()
    frontend = _package_version("comfyui-frontend-package")
    return web.json_response({
        "system": {"os": os.name, "ram_total": ram_total, "ram_free": ram_free,
                   # The ComfyUI API level this server follows (its object_info spec's version).
                   "comfyui_version": COMFYUI_API_VERSION, "latentflow_version": _package_version("latentflow"),
                   "required_frontend_version": frontend, "installed_templates_version": "",
                   "required_templates_version": "", "python_version": sys.version,
                   "pytorch_version": _torch_version(), "embedded_python": False, "argv": sys.argv[:1]},
        "devices": _devices(),
        "latentflow": {"nodes": len(request.app[REGISTRY]), "plugin_failures": len(request.app[REGISTRY].failures),
                       "queue_remaining": request.app[QUEUE].remaining(),
                       "websocket_clients": request.app[HUB].client_count,
                       "output_dir": str(settings.output_dir)},
    })


def _ram() -> tuple[int, int]:
    """Total and available physical memory in bytes (0, 0 where the OS does not tell)."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (AttributeError, ValueError, OSError):
        return 0, 0


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _torch_version() -> str:
    torch = sys.modules.get("torch")  # reported only when the node packs already loaded it
    return str(getattr(torch, "__version__", "")) if torch else ""


def _devices() -> list[dict[str, Any]]:
    torch = sys.modules.get("torch")
    ram_total, ram_free = _ram()
    cpu = {"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
           "torch_vram_total": 0, "torch_vram_free": 0}
    if torch is None:
        return [cpu]
    devices: list[dict[str, Any]] = []
    try:
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            reserved = torch.cuda.memory_reserved(index)
            devices.append({"name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda",
                            "index": index, "vram_total": total, "vram_free": free,
                            "torch_vram_total": reserved,
                            "torch_vram_free": reserved - torch.cuda.memory_allocated(index)})
    except Exception as error:  # a broken driver must not break the stats page
        devices.append({"name": "cuda", "type": "cuda", "index": 0, "vram_total": 0, "vram_free": 0,
                        "torch_vram_total": 0, "torch_vram_free": 0, "error": str(error)})
    return devices or [cpu]
