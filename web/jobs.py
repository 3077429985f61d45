"""``/api/jobs``: the queue and history as one paginated list of jobs (the newer ComfyUI
frontend reads its queue and history panels from here)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.queue import HistoryEntry, QueueItem
from web.events import public_output
from web.handlers import error_response
from web.keys import QUEUE

routes = web.RouteTableDef()

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
HISTORY_STATUS = {"success": "completed", "error": "failed", "interrupted": "cancelled"}
PREVIEWABLE = ("images", "video", "audio")


def _queued_job(item: QueueItem, status: str) -> dict[str, Any]:
    return {"id": item.prompt_id, "status": status, "create_time": int(item.submitted_at * 1000),
            "execution_start_time": None, "execution_end_time": None, "preview_output": None,
            "outputs_count": None, "previewable_outputs_count": None, "execution_error": None,
            "priority": item.number}


def _finished_job(entry: HistoryEntry, detail: bool = False) -> dict[str, Any]:
    outputs = {node_id: public_output(ui) for node_id, ui in entry.outputs.items()}
    previews = [(node_id, kind, item) for node_id, ui in outputs.items() for kind in PREVIEWABLE
                for item in ui.get(kind, []) if isinstance(item, dict)]
    preview = None
    if previews:
        node_id, kind, item = previews[-1]
        preview = {**item, "nodeId": node_id, "mediaType": kind}
    error = None
    if entry.error:
        message = str(entry.error.get("message", ""))
        exception_type, _, text = message.partition(": ")
        error = {"prompt_id": entry.item.prompt_id, "node_id": str(entry.error.get("node_id") or ""),
                 "node_type": str(entry.error.get("node_type") or ""), "exception_message": text or message,
                 "exception_type": exception_type if text else "",
                 "traceback": str(entry.error.get("traceback", "")).splitlines(), "executed": list(entry.executed)}
    job: dict[str, Any] = {
        "id": entry.item.prompt_id, "status": HISTORY_STATUS[entry.status],
        "create_time": int(entry.item.submitted_at * 1000),
        "execution_start_time": int(entry.started_at * 1000), "execution_end_time": int(entry.finished_at * 1000),
        "preview_output": preview, "outputs_count": sum(len(v) for ui in outputs.values() for v in ui.values()
                                                          if isinstance(v, list)),
        "previewable_outputs_count": len(previews), "execution_error": error, "priority": entry.item.number,
    }
    if detail:
        job.update({"outputs": outputs, "workflow": {"prompt": dict(entry.item.prompt),
                                                      "extra_data": entry.item.public_extra_data()},
                    "update_time": int(entry.finished_at * 1000)})
    return job


@routes.get("/api/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    """``?status=pending,in_progress,...&limit=&offset=``: newest first."""
    wanted = set(filter(None, request.query.get("status", ",".join(STATUSES)).split(",")))
    unknown = wanted - set(STATUSES)
    if unknown:
        return error_response(400, "bad_request", f"unknown status {sorted(unknown)}; use {', '.join(STATUSES)}")
    try:
        limit = max(0, int(request.query.get("limit", "200")))
        offset = max(0, int(request.query.get("offset", "0")))
    except ValueError:
        return error_response(400, "bad_request", "limit and offset must be whole numbers")
    queue = request.app[QUEUE]
    jobs: list[dict[str, Any]] = []
    running = queue.running_items()  # one per busy worker
    if "pending" in wanted:
        jobs += [_queued_job(item, "pending") for item in reversed(queue.pending())]
    if "in_progress" in wanted:
        jobs += [_queued_job(item, "in_progress") for item in reversed(running)]
    jobs += [_finished_job(entry) for entry in reversed(queue.history())
             if HISTORY_STATUS[entry.status] in wanted]
    page = jobs[offset:offset + limit]
    return web.json_response({"jobs": page, "pagination": {
        "offset": offset, "limit": limit, "total": len(jobs), "has_more": offset + len(page) < len(jobs)}})


@routes.get("/api/jobs/{prompt_id}")
async def job_detail(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    prompt_id = request.match_info["prompt_id"]
    entry = queue.history_entry(prompt_id)
    if entry is not None:
        return web.json_response(_finished_job(entry, detail=True))
    for item in queue.running_items():
        if item.prompt_id == prompt_id:
            return web.json_response(_queued_job(item, "in_progress"))
    for item in queue.pending():
        if item.prompt_id == prompt_id:
            return web.json_response(_queued_job(item, "pending"))
    return error_response(404, "not_found", f"no job {prompt_id!r}")
