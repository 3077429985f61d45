"""``server.PromptServer.instance`` for packs: their own HTTP routes and websocket messages.

Packs register routes at import time (``@PromptServer.instance.routes.get("/mypack/x")``),
before our app exists; :meth:`PackServer.attach` adds them to the app (also under ``/api``,
as ComfyUI does) and binds ``send_sync`` to our websocket hub. Calls a pack makes on
``.app`` before then (``app.router.add_static``, ``app.add_routes``) are recorded and replayed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from comfy_packs import state

log = logging.getLogger(__name__)


class _Recorder:
    """Stands in for an object not made yet: records calls, replays them on the real one."""

    def __init__(self, path: str, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        self._path, self._calls = path, calls

    def __getattr__(self, name: str) -> "_Recorder":
        if name.startswith("__"):
            raise AttributeError(name)
        return _Recorder(f"{self._path}.{name}" if self._path else name, self._calls)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self._calls.append((self._path, args, kwargs))


class PackServer:
    """ComfyUI's PromptServer as packs use it: ``routes``, ``app``, ``send_sync``, ``client_id``,
    ``last_node_id``, ``loop``."""

    instance: "PackServer"

    def __init__(self) -> None:
        from aiohttp import web

        self.routes = web.RouteTableDef()
        self._app_calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._real_app: Any = None
        self._send: Callable[[str, Any, str | None], None] | None = None
        self.loop: Any = None
        self.supports = ["custom_nodes_from_web"]

    @property
    def app(self) -> Any:
        return self._real_app if self._real_app is not None else _Recorder("", self._app_calls)

    @property
    def client_id(self) -> str | None:
        current = state.running()
        return current.ctx.services.get("client_id") if current is not None and current.ctx is not None else None

    @property
    def last_node_id(self) -> str | None:
        current = state.running()
        return current.ctx.node_id if current is not None and current.ctx is not None else None

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        if self._send is None:
            log.debug("pack message %r dropped: no server is running", event)
            return
        self._send(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def attach(self, app: Any, send: Callable[[str, Any, str | None], None]) -> None:
        """Add the packs' routes to ``app`` (and under /api), replay their ``app`` calls, bind
        ``send_sync``. Called by ``web.app.create_app``."""
        from aiohttp import web

        for route in self.routes:
            if isinstance(route, web.RouteDef):
                app.router.add_route(route.method, route.path, route.handler, **route.kwargs)
                if not route.path.startswith("/api/"):
                    app.router.add_route(route.method, "/api" + route.path, route.handler, **route.kwargs)
            elif isinstance(route, web.StaticDef):
                app.router.add_static(route.prefix, route.path, **route.kwargs)
        for path, args, kwargs in self._app_calls:
            target: Any = app
            for part in path.split("."):
                target = getattr(target, part)
            target(*args, **kwargs)
        self._real_app = app
        self._send = send

    def bind_loop(self, loop: Any) -> None:
        self.loop = loop


PackServer.instance = PackServer()


class BinaryEventTypes:
    """ComfyUI's binary websocket frame kinds (packs name them; previews go through ProgressBar here)."""

    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4
