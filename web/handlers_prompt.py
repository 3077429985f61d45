"""Prompts, the queue, history, interrupt and free: ComfyUI's API semantics.

=============================  ==============================================================
``POST /api/prompt``           ``{prompt, prompt_id?, client_id?, extra_data?, number?, front?,
                               partial_execution_targets?}`` -> ``{prompt_id, number, node_errors}``;
                               refused: 400 ``{error, node_errors}`` (engine.prompt_errors)
``GET /api/queue``             ``queue_running`` / ``queue_pending``: ``[number, id, prompt,
                               extra_data, outputs_to_execute]`` each, pending in run order
``POST /api/queue``            ``{"delete": [ids]}`` / ``{"clear": true}`` (pending items)
``GET /api/history[/id]``      ``{id: {prompt, outputs, status, meta}}``, newest first
``POST /api/history``          ``{"delete": [ids]}`` / ``{"clear": true}``
``POST /api/interrupt``        the running prompt; with ``{"prompt_id"}`` only if it is that one
``POST /api/free``             ``{"unload_models", "free_memory"}``: drop cached results/models
=============================  ==============================================================

The prompt is kept as sent (history, queue); our own format of it is what SaveImage
embeds; ``extra_data`` (``extra_pnginfo`` included) reaches nodes as ``ctx.services``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from engine.prompt_errors import comfyui_error_body
from engine.queue import DuplicatePromptIdError, HistoryEntry, QueueClosedError, QueueItem, QueueStoreError
from engine.validation import ValidationError, ValidationReport, looks_like_api_prompt
from engine.workflow import Workflow
from web.events import public_output
from web.handlers import dumps_json, id_list, int_query, checked_document, read_json
from web.keys import LIMITS, QUEUE, REGISTRY

routes = web.RouteTableDef()

MAX_PROMPT_ID_LENGTH = 256


def prompt_error(status: int, kind: str, message: str, details: str = "", **extra: Any) -> web.Response:
    """ComfyUI's shape for a refused prompt that is not about particular nodes."""
    return web.json_response({"error": {"type": kind, "message": message, "details": details,
                                        "extra_info": {}, **extra}, "node_errors": {}}, status=status)


@routes.post("/api/prompt")
async def post_prompt(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict) or "prompt" not in body:
        return prompt_error(400, "no_prompt", "No prompt provided",
                            'send {"prompt": {...}, "client_id": "..."} (a ComfyUI API prompt or our workflow)')
    fields = _submission_fields(body)
    if isinstance(fields, web.Response):
        return fields
    limits = request.app[LIMITS]
    if request.app[QUEUE].remaining() >= limits.max_pending:
        return prompt_error(429, "queue_full", f"{limits.max_pending} prompts are already waiting",
                            "try again when some have run, or clear the queue")
    size = len(await request.read())  # aiohttp keeps the body read_json read
    document = body["prompt"]
    report = await checked_document(document, request.app[REGISTRY])
    targets = body.get("partial_execution_targets")
    if targets is not None:
        if not isinstance(targets, list) or not all(isinstance(t, (str, int)) for t in targets):
            return prompt_error(400, "invalid_prompt", "partial_execution_targets must be a list of node ids")
        report = restricted_report(report, [str(t) for t in targets])
    if not report.ok or report.workflow is None:
        return web.json_response(comfyui_error_body(report), status=400, dumps=dumps_json)
    # The pending queue is bounded in bytes too: 60 prompts of 5 MiB each held 382 MiB.
    # (No await between this check and submit: two requests cannot both slip under it.)
    waiting = request.app[QUEUE].pending_bytes()
    if waiting + size > limits.max_pending_bytes:
        return prompt_error(
            413, "queue_bytes_exceeded",
            f"the pending prompts hold {_mib(waiting)} and this one {_mib(size)}; the queue holds at most "
            f"{_mib(limits.max_pending_bytes)} of prompts",
            "wait until some have run, clear the queue, or send less extra_data / meta with each prompt")
    # SaveImage embeds our format (so `main.py run` reads it back); history keeps what was sent.
    ours = report.workflow.to_json() if looks_like_api_prompt(document) else document
    try:
        item = request.app[QUEUE].submit(report.workflow, document, document=ours, outputs=report.outputs,
                                         size_bytes=size, **fields)
    except DuplicatePromptIdError as error:
        return prompt_error(400, "duplicate_prompt_id", str(error), str(fields["prompt_id"]))
    except QueueClosedError as error:
        return prompt_error(503, "shutting_down", str(error))
    except QueueStoreError as error:
        return prompt_error(507, "queue_store_failed", str(error), "free disk space in the user folder and retry")
    return web.json_response({"prompt_id": item.prompt_id, "number": item.number, "node_errors": {},
                              "warnings": [w.to_dict() for w in report.warnings]}, dumps=dumps_json)


def _submission_fields(body: dict[str, Any]) -> dict[str, Any] | web.Response:
    """client_id, extra_data, prompt_id, number, front: checked, as ``submit`` keywords."""
    client_id = body.get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        return prompt_error(400, "invalid_prompt", "client_id must be a string")
    extra_data = body.get("extra_data")
    if extra_data is None:
        extra_data = {}
    if not isinstance(extra_data, dict):
        return prompt_error(400, "invalid_prompt", "extra_data must be an object",
                            'e.g. {"extra_pnginfo": {"workflow": {...}}}')
    prompt_id = body.get("prompt_id")
    if prompt_id is not None:
        if isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int)) or not str(prompt_id).strip():
            return prompt_error(400, "invalid_prompt", "prompt_id must be a non-empty string (e.g. a UUID)")
        prompt_id = str(prompt_id)
        if len(prompt_id) > MAX_PROMPT_ID_LENGTH:
            return prompt_error(400, "invalid_prompt", f"prompt_id is limited to {MAX_PROMPT_ID_LENGTH} characters")
    number = body.get("number")
    if number is not None:
        try:
            number = float(number)  # ComfyUI stores an explicit number as a float
        except (TypeError, ValueError):
            return prompt_error(400, "invalid_prompt", f"number must be a number, got {body['number']!r}")
        if not math.isfinite(number):
            return prompt_error(400, "invalid_prompt", f"number must be finite, got {body['number']!r}")
    return {"client_id": client_id, "extra_data": extra_data, "prompt_id": prompt_id, "number": number,
            "front": bool(body.get("front"))}


def restricted_report(report: ValidationReport, targets: list[str]) -> ValidationReport:
    """Only the given output nodes and what they read from (ComfyUI's "queue selected
    output nodes"): problems elsewhere do not count, other nodes do not run."""
    workflow = report.workflow
    if workflow is None:
        return report
    outputs = tuple(o for o in report.outputs if o in targets)
    keep = workflow.upstream_of(list(outputs))
    problems = tuple(p for p in report.problems if (p.node_id in keep if p.node_id is not None
                                                     else p.code not in ("no_output",)))
    if not outputs:
        problems += (ValidationError("no_output", "none of partial_execution_targets is an output node",
                                     actual=", ".join(targets), hint="name output nodes such as SaveImage"),)
    nodes = {n: i for n, i in workflow.nodes.items() if n in keep}
    return ValidationReport(Workflow(nodes, workflow.ui, workflow.meta, workflow.source_format), problems, outputs,
                            report.omitted)


@routes.get("/api/prompt")
async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": request.app[QUEUE].remaining()}})


# --------------------------------------------------------------------------- queue


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


class Listing:
    """Keeps ``/api/queue`` and ``/api/history`` bounded: an item is listed in full while it is
    at most ``item_bytes`` and the listing so far at most ``LISTED_ITEMS`` such items; past
    that it is a stub ``[number, id, {}, {client_id, latentflow_omitted_bytes, hint}, outputs]``
    (``GET /api/history/{id}`` still answers a finished prompt in full). Before, 60 pending
    prompts with 5 MiB of ``meta`` each made ``/api/queue`` answer 314 MB."""

    LISTED_ITEMS = 16  # full-size items per response: at most 16 x item_bytes of prompts

    def __init__(self, item_bytes: int) -> None:
        self.item_bytes = item_bytes
        self.budget = item_bytes * self.LISTED_ITEMS

    def queue_entry(self, item: QueueItem) -> list[Any]:
        size = item.size_bytes or _json_size(item)
        if size <= self.item_bytes and size <= self.budget:
            self.budget -= size
            return item.to_json()
        extra: dict[str, Any] = {"latentflow_omitted_bytes": size,
                                 "latentflow_hint": "this prompt is too big to list here; "
                                 f"GET /api/history/{item.prompt_id} once it has run"}
        if item.client_id is not None:
            extra["client_id"] = item.client_id
        return [item.number, item.prompt_id, {}, extra, list(item.outputs)]


def _json_size(item: QueueItem) -> int:
    """The listed size of an item whose request size is unknown (restored from the store)."""
    return len(json.dumps([item.prompt, item.public_extra_data()], default=str))


@routes.get("/api/queue")
async def get_queue(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    listing = Listing(request.app[LIMITS].max_listed_prompt_bytes)
    return web.json_response({
        # one running item per busy worker; extra_data names the worker (history's meta.worker too)
        "queue_running": [_naming_worker(listing.queue_entry(item), queue.worker_of(item.prompt_id))
                          for item in queue.running_items()],
        "queue_pending": [listing.queue_entry(item) for item in queue.pending()],
    }, dumps=dumps_json)


def _naming_worker(entry: list[Any], worker: str | None) -> list[Any]:
    if worker is not None:
        entry[3] = {**entry[3], "worker": worker}
    return entry


@routes.post("/api/queue")
async def post_queue(request: web.Request) -> web.Response:
    """Pending items only; a running one is stopped with /interrupt (as ComfyUI)."""
    body = await read_json(request)
    queue = request.app[QUEUE]
    cleared = queue.clear() if isinstance(body, dict) and body.get("clear") else 0
    deleted = queue.delete(id_list(body, "delete"))
    return web.json_response({"deleted": deleted, "cleared": cleared})


@routes.post("/api/interrupt")
async def interrupt(request: web.Request) -> web.Response:
    """Interrupt the running prompt; given ``prompt_id``, only when that one is running
    (a pending one is left alone: delete it through /queue)."""
    body = await read_json(request, required=False, lenient=True)
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    queue = request.app[QUEUE]
    if prompt_id and queue.worker_of(str(prompt_id)) is None:  # not running on any worker
        return web.json_response({"interrupted": False})
    return web.json_response({"interrupted": queue.interrupt(str(prompt_id) if prompt_id else None)})


@routes.post("/api/free")
async def free(request: web.Request) -> web.Response:
    """``{"unload_models": true}`` / ``{"free_memory": true}``: done between prompts."""
    body = await read_json(request, required=False, lenient=True)
    body = body if isinstance(body, dict) else {}
    unload, memory = bool(body.get("unload_models")), bool(body.get("free_memory"))
    request.app[QUEUE].request_free(unload_models=unload, free_memory=memory)
    return web.json_response({"unload_models": unload, "free_memory": memory})


# --------------------------------------------------------------------------- history


def history_json(entry: HistoryEntry, listing: "Listing | None" = None) -> dict[str, Any]:
    """ComfyUI's history entry; our run details (timings, executed/cached) under ``latentflow``.
    In a listing, a big prompt is shown as a stub (``Listing``); ``/api/history/{id}`` gives it all."""
    item = entry.item
    outputs = {node_id: public_output(ui) for node_id, ui in entry.outputs.items()}
    meta = {node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None,
                      "real_node_id": node_id} for node_id in outputs}
    return {
        "prompt": listing.queue_entry(item) if listing is not None else item.to_json(),
        "outputs": outputs,
        "status": {"status_str": "success" if entry.status == "success" else "error",
                   "completed": entry.status == "success", "messages": status_messages(entry),
                   "interrupted": entry.status == "interrupted"},
        "meta": meta,
        "latentflow": {"number": item.number, "client_id": item.client_id, "submitted_at": item.submitted_at,
                       "started_at": entry.started_at, "finished_at": entry.finished_at,
                       "executed": list(entry.executed), "cached": list(entry.cached),
                       "error": dict(entry.error) if entry.error else None, "worker": entry.worker},
    }


def status_messages(entry: HistoryEntry) -> list[list[Any]]:
    """The run's ComfyUI messages, as its history lists them under ``status.messages``."""
    prompt_id = entry.item.prompt_id
    started, finished = int(entry.started_at * 1000), int(entry.finished_at * 1000)
    messages: list[list[Any]] = [
        ["execution_start", {"prompt_id": prompt_id, "timestamp": started}],
        ["execution_cached", {"nodes": list(entry.cached), "prompt_id": prompt_id, "timestamp": started}]]
    error = dict(entry.error or {})
    base = {"prompt_id": prompt_id, "node_id": error.get("node_id"), "node_type": error.get("node_type"),
            "executed": list(entry.executed)}
    if entry.status == "success":
        messages.append(["execution_success", {"prompt_id": prompt_id, "timestamp": finished}])
    elif entry.status == "interrupted":
        messages.append(["execution_interrupted", {**base, "timestamp": finished}])
    else:
        text = str(error.get("message", ""))
        exception_type, _, message = text.partition(": ")
        messages.append(["execution_error", {
            **base, "exception_message": message or text, "exception_type": exception_type if message else "",
            "traceback": str(error.get("traceback", "")).splitlines(), "current_inputs": error.get("inputs", {}),
            "current_outputs": list(entry.executed) + list(entry.cached), "timestamp": finished}])
    return messages


@routes.get("/api/history")
async def get_history(request: web.Request) -> web.Response:
    """Finished prompts, newest first; ``offset`` skips the newest ones, ``max_items`` limits."""
    max_items = int_query(request, "max_items", None)
    offset = int_query(request, "offset", 0) or 0
    entries = list(reversed(request.app[QUEUE].history()))
    end = None if max_items is None else offset + max_items
    listing = Listing(request.app[LIMITS].max_listed_prompt_bytes)
    return web.json_response({e.item.prompt_id: history_json(e, listing) for e in entries[offset:end]},
                             dumps=dumps_json)


@routes.get("/api/history/{prompt_id}")
async def get_history_entry(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    entry = request.app[QUEUE].history_entry(prompt_id)
    return web.json_response({prompt_id: history_json(entry)} if entry else {}, dumps=dumps_json)


@routes.post("/api/history")
async def post_history(request: web.Request) -> web.Response:
    body = await read_json(request)
    queue = request.app[QUEUE]
    cleared = isinstance(body, dict) and bool(body.get("clear"))
    if cleared:
        queue.clear_history()
    deleted = queue.delete_history(id_list(body, "delete"))
    return web.json_response({"deleted": deleted, "cleared": cleared})
