"""The websocket hub: one outgoing queue per connection, fed from any thread.

The prompt queue's worker thread produces messages; :meth:`WebSocketHub.post` hops
them onto the event loop with ``call_soon_threadsafe`` (FIFO, so each client sees its
messages in order). Each connection has a sender task draining a bounded queue: a
slow client loses preview frames first and is disconnected only if it falls far
behind on JSON messages, so it never stalls the worker or other clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

MAX_PENDING_MESSAGES = 1024  # per connection; beyond this the client is too slow and is dropped
MAX_PENDING_PREVIEWS = 8  # binary previews beyond this are skipped (the next one supersedes them)


class KeptFrame(bytes):
    """A binary frame never skipped for a slow client: an image a node sends on purpose
    (SaveImageWebsocket, a pack's encoded image), not a live preview the next one supersedes."""


@dataclass(frozen=True)
class Outgoing:
    """A message for one client (``client_id``) or for everyone (``client_id=None``)."""

    payload: dict[str, Any] | bytes
    client_id: str | None = None


@dataclass(eq=False)  # identity hashing: connections live in sets
class Connection:
    client_id: str
    socket: web.WebSocketResponse
    outbox: asyncio.Queue[dict[str, Any] | bytes] = field(default_factory=asyncio.Queue)
    previews_pending: int = 0


class WebSocketHub:
    """Connected clients by client id; sends JSON and binary frames to one or all."""

    def __init__(self, status: Callable[[], dict[str, Any]],
                 features: Callable[[], dict[str, Any]] | None = None) -> None:
        self._status = status  # the current queue status, sent to each client on connect
        self._features = features or (lambda: {})  # answered to a client's "feature_flags"
        self._connections: dict[str, set[Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def client_count(self) -> int:
        return sum(len(c) for c in self._connections.values())

    def post(self, message: Outgoing) -> None:
        """Thread-safe: deliver ``message`` from any thread (a no-op after shutdown)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.deliver, message)
        except RuntimeError:  # loop closed between the check and the call (shutdown)
            pass

    def deliver(self, message: Outgoing) -> None:
        """Event-loop thread only: queue ``message`` on the target connections."""
        if message.client_id is None:
            targets = [c for group in self._connections.values() for c in group]
        else:
            targets = list(self._connections.get(message.client_id, ()))
        for connection in targets:
            if isinstance(message.payload, bytes) and not isinstance(message.payload, KeptFrame):
                if connection.previews_pending >= MAX_PENDING_PREVIEWS:
                    continue
                connection.previews_pending += 1
            elif connection.outbox.qsize() >= MAX_PENDING_MESSAGES:
                log.warning("websocket client %s is too slow; disconnecting it", connection.client_id)
                asyncio.ensure_future(connection.socket.close())
                continue
            connection.outbox.put_nowait(message.payload)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """``GET /ws?clientId=``: register the client, send it the status, then stream."""
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        if len(client_id) > 128:
            raise web.HTTPBadRequest(text="clientId is limited to 128 characters")
        socket = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
        await socket.prepare(request)
        connection = Connection(client_id, socket)
        self._connections.setdefault(client_id, set()).add(connection)
        sender = asyncio.ensure_future(self._send_loop(connection))
        connection.outbox.put_nowait({"type": "status", "data": {**self._status(), "sid": client_id}})
        try:
            first = True
            async for message in socket:
                if message.type == WSMsgType.ERROR:
                    break
                if message.type == WSMsgType.TEXT and first:
                    self._negotiate(connection, message.data)
                first = False  # clients otherwise only listen; what they send is ignored
        finally:
            group = self._connections.get(client_id)
            if group is not None:
                group.discard(connection)
                if not group:
                    del self._connections[client_id]
            sender.cancel()
        return socket

    def _negotiate(self, connection: Connection, text: str) -> None:
        """ComfyUI's frontend opens with ``{"type": "feature_flags", "data": {...}}`` and
        expects the server's flags back (the same as ``GET /api/features``)."""
        try:
            message = json.loads(text)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") == "feature_flags":
            connection.outbox.put_nowait({"type": "feature_flags", "data": self._features()})

    async def _send_loop(self, connection: Connection) -> None:
        while True:
            payload = await connection.outbox.get()
            try:
                if isinstance(payload, bytes):
                    if not isinstance(payload, KeptFrame):
                        connection.previews_pending -= 1
                    await connection.socket.send_bytes(payload)
                else:
                    await connection.socket.send_str(json.dumps(payload, default=str))
            except (ConnectionResetError, RuntimeError):
                return  # the client went away; the handler cleans up

    async def close_all(self) -> None:
        for group in list(self._connections.values()):
            for connection in list(group):
                await connection.socket.close(code=1001, message=b"server shutdown")
