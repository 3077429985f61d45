"""``/internal/*``: what ComfyUI's frontend asks of the server for its own panels.

``/internal/logs`` (the log as one string), ``/internal/logs/raw`` (``{entries: [{t, m}],
size: {cols, rows}}``), ``PATCH /internal/logs/subscribe`` (``{clientId, enabled}``: new
entries then arrive as ``logs`` websocket messages), ``/internal/folder_paths`` and
``/internal/files/{output|input|temp}`` (newest first). The log is a bounded buffer fed by
a handler on the root logger while the app runs; nothing is global.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import deque
from datetime import datetime
from typing import Any, AsyncIterator

from aiohttp import web

from web.handlers import error_response, read_json
from web.handlers_files import FOLDER_TYPES, folder_for
from web.keys import HUB, LOGS, SETTINGS
from web.model_folders import folder_paths as model_folder_paths
from web.security import UnsafePathError
from web.ws import Outgoing, WebSocketHub

routes = web.RouteTableDef()


class LogBuffer(logging.Handler):
    """The last ``capacity`` log records as ComfyUI's entries ``{"t": iso time, "m": text}``;
    subscribed websocket clients get each new entry as a ``logs`` message."""

    def __init__(self, capacity: int = 300, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.entries: deque[dict[str, str]] = deque(maxlen=capacity)
        self.subscribers: set[str] = set()
        self.hub: WebSocketHub | None = None
        self._entries_lock = threading.Lock()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {"t": datetime.fromtimestamp(record.created).isoformat(), "m": self.format(record) + "\n"}
        except Exception:  # logging's contract: a broken record is reported, never raised
            self.handleError(record)
            return
        with self._entries_lock:
            self.entries.append(entry)
            subscribers = list(self.subscribers)
        if self.hub is not None:
            for client_id in subscribers:
                self.hub.post(Outgoing({"type": "logs", "data": {"entries": [entry], "size": terminal_size()}},
                                       client_id))

    def snapshot(self) -> list[dict[str, str]]:
        with self._entries_lock:
            return list(self.entries)


def terminal_size() -> dict[str, int]:
    size = shutil.get_terminal_size((80, 24))
    return {"cols": size.columns, "rows": size.lines}


async def capture_logs(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the buffer listens on the root logger while the app runs."""
    buffer = app[LOGS]
    buffer.hub = app[HUB]
    root = logging.getLogger()
    root.addHandler(buffer)
    try:
        yield
    finally:
        root.removeHandler(buffer)
        buffer.hub = None


@routes.get("/internal/logs")
async def logs(request: web.Request) -> web.Response:
    return web.json_response("".join(f"{e['t']} - {e['m']}" for e in request.app[LOGS].snapshot()))


@routes.get("/internal/logs/raw")
async def logs_raw(request: web.Request) -> web.Response:
    return web.json_response({"entries": request.app[LOGS].snapshot(), "size": terminal_size()})


@routes.patch("/internal/logs/subscribe")
async def logs_subscribe(request: web.Request) -> web.Response:
    body = await read_json(request)
    client_id = body.get("clientId") if isinstance(body, dict) else None
    if not isinstance(client_id, str) or not client_id:
        return error_response(400, "bad_request", 'send {"clientId": "<the websocket clientId>", "enabled": true}')
    buffer = request.app[LOGS]
    if body.get("enabled"):
        buffer.subscribers.add(client_id)
    else:
        buffer.subscribers.discard(client_id)
    return web.json_response({"clientId": client_id, "enabled": bool(body.get("enabled"))})


@routes.get("/internal/folder_paths")
async def folder_paths(request: web.Request) -> web.Response:
    return web.json_response(model_folder_paths(request.app[SETTINGS]))


@routes.get("/internal/files/{directory_type}")
async def files(request: web.Request) -> web.Response:
    kind = request.match_info["directory_type"]
    if kind not in FOLDER_TYPES:
        return web.json_response({"error": f"Invalid directory type: use one of {', '.join(FOLDER_TYPES)}"},
                                 status=400)
    try:
        folder = folder_for(request.app[SETTINGS], kind)
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    entries: list[Any] = [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()] if folder.is_dir() else []
    entries.sort(key=lambda p: -p.stat().st_mtime)
    return web.json_response([p.name for p in entries])
