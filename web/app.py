"""The aiohttp app factory: services on the app, routes, middlewares, lifecycle.

``create_app(registry, settings)`` builds everything the server needs from objects
main.py made; tests call it directly with their own registry and a temporary folder.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator, Literal

from aiohttp import web

from engine.cache import ResultCache
from engine.queue import PromptQueue, RunsWorkflows
from engine.registry import NodeRegistry
from engine.scheduler import Executor
from engine.settings import Settings
from web import handlers, handlers_files, jobs
from web.events import EventTranslator, status_message
from web.keys import HUB, LIMITS, POLICY, QUEUE, REGISTRY, SETTINGS
from web.security import Limits, SecurityPolicy, headers_middleware, security_middleware
from web.ws import WebSocketHub

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Our editor's page may only load its own code; images may be blobs (PNG drops, previews).
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
                           "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def create_app(registry: NodeRegistry, settings: Settings, *, policy: SecurityPolicy | None = None,
               limits: Limits | None = None, executor: RunsWorkflows | None = None,
               static_dir: Path | None = None, frontend: Literal["latentflow", "comfyui"] = "latentflow",
               ) -> web.Application:
    """The web application. The queue's worker starts with the app and stops with it.

    ``frontend="comfyui"`` serves the installed ``comfyui-frontend-package`` at ``/`` (our
    editor stays at ``/latentflow/``); it raises ``FrontendMissingError`` when not installed.
    """
    limits = limits or Limits()
    policy = policy or SecurityPolicy()
    app = web.Application(client_max_size=limits.max_body_bytes,
                          middlewares=[headers_middleware, security_middleware(policy)])
    if executor is None:
        executor = Executor(registry, ResultCache.for_registry(registry, settings),
                            services={"settings": settings, "output_dir": settings.output_dir})
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[POLICY] = policy
    app[LIMITS] = limits
    # The hub and the translator ask the queue for its status when they need it (late binding).
    hub = WebSocketHub(lambda: status_message(queue))
    queue = PromptQueue(executor, services={"settings": settings, "output_dir": settings.output_dir},
                        listener=EventTranslator(lambda: status_message(queue), hub),
                        history_limit=limits.history_limit)
    app[QUEUE] = queue
    app[HUB] = hub

    app.router.add_routes(handlers.routes)
    app.router.add_routes(handlers_files.routes)
    app.router.add_routes(jobs.routes)
    _add_unprefixed_aliases(app)
    app.router.add_get("/ws", hub.handle)
    our_index = _index_handler(static_dir or STATIC_DIR)
    if frontend == "comfyui":
        from web.comfyui import add_comfyui_frontend, comfyui_frontend_dir

        add_comfyui_frontend(app, comfyui_frontend_dir())
        app.router.add_get("/latentflow/", our_index)
    else:
        app.router.add_get("/", our_index)
    app.router.add_static("/static", static_dir or STATIC_DIR, follow_symlinks=False)
    app.cleanup_ctx.append(_run_queue)
    app.on_shutdown.append(_close_websockets)
    return app


def _add_unprefixed_aliases(app: web.Application) -> None:
    """ComfyUI clients also call ``/prompt``, ``/queue``, ``/view``... without ``/api``."""
    for route_table in (handlers.routes, handlers_files.routes, jobs.routes):
        for route in route_table:
            if isinstance(route, web.RouteDef) and route.path.startswith("/api/"):
                app.router.add_route(route.method, route.path[4:], route.handler)


def _index_handler(static_dir: Path) -> Any:
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static_dir / "index.html", headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"})

    return index


async def _run_queue(app: web.Application) -> AsyncIterator[None]:
    """Bind the hub to this loop and run the queue's worker for the app's lifetime."""
    app[HUB].bind(asyncio.get_running_loop())
    queue = app[QUEUE]
    queue.start()
    yield
    # Stopping joins the worker, which may be inside a node: do it off the event loop.
    await asyncio.get_running_loop().run_in_executor(None, queue.stop, 10.0)


async def _close_websockets(app: web.Application) -> None:
    await app[HUB].close_all()
