"""Engine events -> ComfyUI's websocket messages.

=================  ======================================================
engine event       websocket message (to the submitting client)
=================  ======================================================
run_started        ``execution_start``
node_cached        ``execution_cached`` (the ids, grouped; sent once per run, before the
                   first ``executing``, even when empty), ``executed`` if it has UI data
node_started       ``executing`` (node id)
node_progress      ``progress`` (+ a binary preview frame when there is a preview)
node_finished      ``executed`` (when the node returned UI data)
node_failed        ``execution_error``
run_failed         ``execution_error`` (only when no node failure was sent: engine errors)
run_cancelled      ``execution_interrupted``
run_finished       ``execution_success``
(recorded)         ``executing`` with ``node: null``: the prompt is done, whatever its
                   outcome, and its history entry can be fetched (ComfyUI's clients wait
                   for exactly this message)
=================  ======================================================

Queue changes become ``status`` messages to everyone. Binary preview frames follow
ComfyUI: a 4-byte big-endian event type (1 = preview image), a 4-byte image format
(1 = JPEG, 2 = PNG), then the encoded image.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.queue import PromptQueue, QueueItem
from engine.scheduler import Event
from web.ws import KeptFrame, Outgoing, WebSocketHub

log = logging.getLogger("latentflow.prompts")

PREVIEW_IMAGE = 1
FORMAT_JPEG = 1
FORMAT_PNG = 2


def status_message(queue: PromptQueue) -> dict[str, Any]:
    return {"status": {"exec_info": {"queue_remaining": queue.remaining()}}}


def public_output(ui: Any) -> Any:
    """A node's UI data without server file-system paths (clients address files by
    filename/subfolder/type through /api/view)."""
    if not isinstance(ui, dict):
        return ui
    out = dict(ui)
    for key in ("images", "gifs", "audio", "files"):
        if isinstance(out.get(key), list):
            out[key] = [{k: v for k, v in item.items() if k != "path"} if isinstance(item, dict) else item
                        for item in out[key]]
    return out


def preview_frame(preview: Any) -> bytes | None:
    """Encode a progress preview (a PIL-like image with ``.save``, or JPEG/PNG bytes). Bytes are an
    image a node encoded to send (SaveImageWebsocket): their frame is never skipped for a slow client."""
    if isinstance(preview, (bytes, bytearray)):
        data = bytes(preview)
        kind = FORMAT_PNG if data.startswith(b"\x89PNG") else FORMAT_JPEG
        return KeptFrame(struct.pack(">II", PREVIEW_IMAGE, kind) + data)
    save = getattr(preview, "save", None)
    if save is None:
        return None
    buffer = io.BytesIO()
    image = preview.convert("RGB") if getattr(preview, "mode", "RGB") not in ("RGB", "L") else preview
    image.save(buffer, format="JPEG", quality=85)
    return struct.pack(">II", PREVIEW_IMAGE, FORMAT_JPEG) + buffer.getvalue()


@dataclass
class _RunState:
    cached: list[str] = field(default_factory=list)
    cached_ui: list[tuple[str, Any]] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    failed: bool = False
    cached_sent: bool = False
    cached_ids: list[str] = field(default_factory=list)  # every node reported cached so far
    started: float = field(default_factory=time.monotonic)


class EventTranslator:
    """Turns one queue's events into outgoing messages; thread-safe, one state per prompt."""

    def __init__(self, queue_status: Callable[[], dict[str, Any]], hub: WebSocketHub) -> None:
        self._queue_status = queue_status
        self._hub = hub
        self._runs: dict[str, _RunState] = {}
        self._lock = threading.Lock()

    def __call__(self, item: QueueItem | None, event: Event | None) -> None:
        """The queue's listener (worker thread): translate, then hop to the event loop."""
        if item is None:
            self._hub.post(Outgoing({"type": "status", "data": self._queue_status()}))
            return
        if event is None:  # done and recorded in the history
            self._hub.post(Outgoing(_message("executing", {"node": None, "display_node": None,
                                                           "prompt_id": item.prompt_id}), item.client_id))
            return
        for payload in self.translate(item, event):
            self._hub.post(Outgoing(payload, item.client_id))

    def translate(self, item: QueueItem, event: Event) -> list[dict[str, Any] | bytes]:
        with self._lock:
            state = self._runs.setdefault(item.prompt_id, _RunState())
            if event.type == "node_cached":  # grouped into one execution_cached message
                state.cached.append(event.node_id or "")
                if event.data.get("ui"):
                    state.cached_ui.append((event.node_id or "", event.data["ui"]))
                return []
            out: list[dict[str, Any] | bytes] = []
            if event.type != "run_started":
                out.extend(_flush_cached(item.prompt_id, state))
            out.extend(_translate(item.prompt_id, state, event))
            if event.type in ("run_finished", "run_failed", "run_cancelled"):
                del self._runs[item.prompt_id]
                log.info("%s", prompt_summary(item, state, event))
            return out


_OUTCOMES = {"run_finished": "done", "run_failed": "failed", "run_cancelled": "interrupted"}


def prompt_summary(item: QueueItem, state: _RunState, event: Event) -> str:
    """The server console's one line per prompt: which, how it ended, nodes run / cached, time."""
    seconds = event.seconds if event.seconds is not None else time.monotonic() - state.started
    number = f"#{item.number:g} " if isinstance(item.number, (int, float)) else ""
    where = f" at node {event.node_id} ({event.node_type})" if event.type == "run_failed" and event.node_id else ""
    return (f"prompt {number}{item.prompt_id[:8]} {_OUTCOMES[event.type]}{where}: {len(state.executed)} nodes run, "
            f"{len(state.cached_ids)} cached, {seconds:.2f}s")


def _flush_cached(prompt_id: str, state: _RunState) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if state.cached or not state.cached_sent:
        state.cached_sent = True
        out.append(_message("execution_cached", {"nodes": state.cached, "prompt_id": prompt_id,
                                                 "timestamp": _now_ms()}))
    # Cached output nodes show their images again, so a reload of the page still sees them.
    for node_id, ui in state.cached_ui:
        out.append(_message("executed", {"node": node_id, "display_node": node_id, "output": public_output(ui),
                                         "prompt_id": prompt_id, "cached": True}))
    state.cached_ids.extend(state.cached)
    state.cached, state.cached_ui = [], []
    return out


def _translate(prompt_id: str, state: _RunState, event: Event) -> list[dict[str, Any] | bytes]:
    node_id = event.node_id
    # A node added by graph expansion is shown as the workflow node it came from.
    display = event.data.get("display_node", node_id) if event.data else node_id
    if event.type == "run_started":
        return [_message("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()})]
    if event.type == "node_started":
        return [_message("executing", {"node": node_id, "display_node": display, "prompt_id": prompt_id})]
    if event.type == "node_progress":
        out: list[dict[str, Any] | bytes] = [_message("progress", {
            "value": event.data.get("value"), "max": event.data.get("max"),
            "prompt_id": prompt_id, "node": node_id})]
        preview = event.data.get("preview")
        frame = preview_frame(preview) if preview is not None else None
        if frame is not None:
            out.append(frame)
        return out
    if event.type == "node_finished":
        state.executed.append(node_id or "")
        ui = event.data.get("ui")
        if not ui:
            return []
        return [_message("executed", {"node": node_id, "display_node": display, "output": public_output(ui),
                                      "prompt_id": prompt_id})]
    if event.type == "node_failed" or (event.type == "run_failed" and not state.failed):
        state.failed = True
        message = str(event.data.get("message", ""))
        exception_type, _, text = message.partition(": ")
        return [_message("execution_error", {
            "prompt_id": prompt_id, "node_id": node_id, "node_type": event.node_type,
            "executed": list(state.executed), "exception_message": text or message,
            "exception_type": exception_type if text else "",
            "traceback": str(event.data.get("traceback", "")).splitlines(),
            "current_inputs": dict(event.data.get("inputs", {})),
            "current_outputs": list(state.executed) + list(state.cached_ids),
            "timestamp": _now_ms()})]
    if event.type == "node_blocked":  # an ExecutionBlocker with a message: ComfyUI shows it as an error
        return [_message("execution_error", {
            "prompt_id": prompt_id, "node_id": display, "node_type": event.node_type,
            "executed": list(state.executed), "exception_message": str(event.data.get("message", "")),
            "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": {},
            "current_outputs": list(state.executed) + list(state.cached_ids), "timestamp": _now_ms()})]
    if event.type == "run_cancelled":
        return [_message("execution_interrupted", {
            "prompt_id": prompt_id, "node_id": node_id, "node_type": event.node_type,
            "executed": list(state.executed), "timestamp": _now_ms()})]
    if event.type == "run_finished":
        return [_message("execution_success", {"prompt_id": prompt_id, "timestamp": _now_ms()})]
    return []


def _message(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "data": data}


def _now_ms() -> int:
    return int(time.time() * 1000)
