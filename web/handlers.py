"""REST handlers for the catalogue, prompts, the queue, history, interrupt and stats.

Handlers are thin: parse the request, call the service stored on the app, shape JSON.
Response bodies follow ComfyUI's API so its clients can talk to this server.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
from typing import Any, Callable, TypeVar

from aiohttp import web

from engine.queue import HistoryEntry, QueueClosedError
from engine.validation import ValidationReport, validate_document
from engine.workflow import is_comfyui_prompt
from web.events import public_output
from web.keys import HUB, LIMITS, QUEUE, REGISTRY, SETTINGS

routes = web.RouteTableDef()
T = TypeVar("T")


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"type": code, "message": message, **extra}}, status=status)


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """The request body as JSON; a 400 that says what is wrong otherwise."""
    text = await request.text()
    if not text.strip():
        if required:
            raise web.HTTPBadRequest(text=json.dumps({"error": {
                "type": "empty_body", "message": "the request body is empty; send a JSON object"}}),
                content_type="application/json")
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise web.HTTPBadRequest(text=json.dumps({"error": {
            "type": "invalid_json", "message": f"the request body is not valid JSON: {error}"}}),
            content_type="application/json") from None


def _id_list(body: Any, key: str) -> list[str]:
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
    return web.json_response(await off_loop(request.app[REGISTRY].object_info), dumps=_dumps)


@routes.get("/api/object_info/{node_type}")
async def object_info_one(request: web.Request) -> web.Response:
    node_type = request.match_info["node_type"]
    info = await off_loop(request.app[REGISTRY].object_info)
    if node_type not in info:
        return error_response(404, "unknown_node_type", f"no node type {node_type!r} is registered")
    return web.json_response({node_type: info[node_type]}, dumps=_dumps)


@routes.get("/api/node_failures")
async def node_failures(request: web.Request) -> web.Response:
    """Plugins that failed to load (the editor shows them in a banner)."""
    return web.json_response([f.to_dict() for f in request.app[REGISTRY].failures])


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


# --------------------------------------------------------------------------- prompts


def validation_response(report: ValidationReport) -> dict[str, Any]:
    """ComfyUI's 400 body: a summary ``error`` plus ``node_errors`` per node id."""
    node_errors: dict[str, Any] = {}
    general: list[dict[str, Any]] = []
    for problem in report.errors:
        detail = {**problem.to_dict(), "type": problem.code,
                  "details": problem.hint or "", "extra_info": {"input_name": problem.input}}
        if problem.node_id is None:
            general.append(detail)
            continue
        entry = node_errors.setdefault(problem.node_id, {
            "errors": [], "dependent_outputs": [], "class_type": problem.node_type})
        entry["errors"].append(detail)
    count = len(report.errors)
    return {
        "error": {"type": "prompt_outputs_failed_validation",
                  "message": f"the workflow has {count} problem{'s' * (count != 1)}; nothing was queued",
                  "details": "; ".join(p.message for p in report.errors[:5]), "extra_info": {},
                  "errors": general},
        "node_errors": node_errors,
    }


def shape_problem(document: Any) -> str | None:
    """What makes ``document`` unreadable as a workflow at all, before validation proper.

    (engine.validation reports most shape errors itself but assumes ``nodes`` is an object.)
    """
    if is_comfyui_prompt(document):
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
            "type": "invalid_workflow", "message": problem,
            "hint": 'a workflow is {"version": 1, "nodes": {"1": {"type": ..., "inputs": {...}}}}'},
            "node_errors": {}}), content_type="application/json")
    return await off_loop(validate_document, document, registry)


@routes.post("/api/prompt")
async def post_prompt(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict) or "prompt" not in body:
        return error_response(400, "no_prompt", 'send {"prompt": <workflow>, "client_id": "..."}')
    document = body["prompt"]
    client_id = body.get("client_id")
    extra_data = body.get("extra_data") or {}
    if client_id is not None and not isinstance(client_id, str):
        return error_response(400, "bad_request", "client_id must be a string")
    if not isinstance(extra_data, dict):
        return error_response(400, "bad_request", "extra_data must be an object")
    limit = request.app[LIMITS].max_pending
    if request.app[QUEUE].remaining() >= limit:
        return error_response(429, "queue_full", f"{limit} prompts are already waiting; try again when "
                              f"some have run, or clear the queue")
    report = await checked_document(document, request.app[REGISTRY])
    if not report.ok or report.workflow is None:
        return web.json_response(validation_response(report), status=400)
    # SaveImage embeds the document; keep it in our format so `main.py run` reads it back.
    stored = report.workflow.to_json() if is_comfyui_prompt(document) else document
    try:
        item = request.app[QUEUE].submit(report.workflow, stored, client_id=client_id,
                                         extra_data=extra_data, front=bool(body.get("front")))
    except QueueClosedError as error:
        return error_response(503, "shutting_down", str(error))
    warnings = [w.to_dict() for w in report.warnings]
    return web.json_response({"prompt_id": item.prompt_id, "number": item.number, "node_errors": {},
                              "warnings": warnings})


@routes.get("/api/prompt")
async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": request.app[QUEUE].remaining()}})


# --------------------------------------------------------------------------- queue


@routes.get("/api/queue")
async def get_queue(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    running = queue.running()
    return web.json_response({
        "queue_running": [running.to_json()] if running else [],
        "queue_pending": [item.to_json() for item in queue.pending()],
    }, dumps=_dumps)


@routes.post("/api/queue")
async def post_queue(request: web.Request) -> web.Response:
    body = await read_json(request)
    queue = request.app[QUEUE]
    cleared = queue.clear() if isinstance(body, dict) and body.get("clear") else 0
    deleted = queue.delete(_id_list(body, "delete"))
    return web.json_response({"deleted": deleted, "cleared": cleared})


@routes.post("/api/interrupt")
async def interrupt(request: web.Request) -> web.Response:
    body = await read_json(request, required=False)
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    if prompt_id is not None and not isinstance(prompt_id, str):
        return error_response(400, "bad_request", "prompt_id must be a string")
    return web.json_response({"interrupted": request.app[QUEUE].interrupt(prompt_id)})


# --------------------------------------------------------------------------- history


def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
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


@routes.get("/api/history")
async def get_history(request: web.Request) -> web.Response:
    """Finished prompts, newest first; ``offset`` skips the newest ones, ``max_items`` limits."""
    max_items = _int_query(request, "max_items", None)
    offset = _int_query(request, "offset", 0) or 0
    entries = list(reversed(request.app[QUEUE].history()))
    end = None if max_items is None else offset + max_items
    return web.json_response({e.item.prompt_id: _entry_json(e) for e in entries[offset:end]}, dumps=_dumps)


def _entry_json(entry: HistoryEntry) -> dict[str, Any]:
    data = entry.to_json()
    data["outputs"] = {node_id: public_output(ui) for node_id, ui in data["outputs"].items()}
    return data


@routes.get("/api/history/{prompt_id}")
async def get_history_entry(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    entry = request.app[QUEUE].history_entry(prompt_id)
    return web.json_response({prompt_id: _entry_json(entry)} if entry else {}, dumps=_dumps)


@routes.post("/api/history")
async def post_history(request: web.Request) -> web.Response:
    body = await read_json(request)
    queue = request.app[QUEUE]
    if isinstance(body, dict) and body.get("clear"):
        queue.clear_history()
    deleted = queue.delete_history(_id_list(body, "delete"))
    return web.json_response({"deleted": deleted})


# --------------------------------------------------------------------------- stats


@routes.get("/api/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.json_response({
        "system": {"os": platform.system().lower(), "python_version": sys.version,
                   "embedded_python": False, "pytorch_version": _torch_version(),
                   "argv": sys.argv[:1]},
        "devices": _devices(),
        "latentflow": {"nodes": len(request.app[REGISTRY]), "plugin_failures": len(request.app[REGISTRY].failures),
                       "queue_remaining": request.app[QUEUE].remaining(),
                       "websocket_clients": request.app[HUB].client_count,
                       "output_dir": str(settings.output_dir)},
    })


def _torch_version() -> str | None:
    torch = sys.modules.get("torch")  # reported only when the node packs already loaded it
    return getattr(torch, "__version__", None) if torch else None


def _devices() -> list[dict[str, Any]]:
    torch = sys.modules.get("torch")
    if torch is None:
        return [{"name": "cpu", "type": "cpu", "index": 0}]
    devices: list[dict[str, Any]] = []
    try:
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append({"name": torch.cuda.get_device_name(index), "type": "cuda", "index": index,
                            "vram_total": total, "vram_free": free})
    except Exception as error:  # a broken driver must not break the stats page
        devices.append({"name": "cuda", "type": "cuda", "error": str(error)})
    devices.append({"name": "cpu", "type": "cpu", "index": 0})
    return devices
