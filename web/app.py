"""The aiohttp app factory: services on the app, routes, middlewares, lifecycle.

``create_app(registry, settings)`` builds everything the server needs from objects
main.py made; tests call it directly with their own registry and a temporary folder.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Literal

from aiohttp import web

from engine.backends import Backend
from engine.cache import ResultCache
from engine.queue import PromptQueue, RunsWorkflows
from engine.store import PromptStore, StoredPrompt
from engine.validation import validate_document
from engine.workflow import Workflow
from engine.registry import NodeRegistry
from engine.scheduler import Executor
from engine.settings import Settings
from web import comfyui, handlers, handlers_convert, handlers_files, handlers_prompt, internal, jobs
from web.events import EventTranslator, status_message
from web.internal import LogBuffer, capture_logs
from web.keys import HUB, LIMITS, LOGS, POLICY, QUEUE, REGISTRY, SETTINGS
from web.security import Limits, SecurityPolicy, headers_middleware, security_middleware
from web.ws import WebSocketHub

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Our editor's page may only load its own code; images may be blobs (PNG drops, previews).
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
                           "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def create_app(registry: NodeRegistry, settings: Settings, *, policy: SecurityPolicy | None = None,
               limits: Limits | None = None, executor: RunsWorkflows | None = None,
               static_dir: Path | None = None, frontend: Literal["latentflow", "comfyui"] = "latentflow",
               store: PromptStore | None = None, backend: Backend | None = None) -> web.Application:
    """The web application. The queue's worker starts with the app and stops with it.

    ``frontend="comfyui"`` serves the installed ``comfyui-frontend-package`` at ``/`` (our
    editor stays at ``/latentflow/``); it raises ``FrontendMissingError`` when not installed.
    With a ``store`` the queue and history are kept on disk: what was queued or running
    when the last process stopped (or was killed) is queued again, validated anew. A
    ``backend`` (``engine.backends``: e.g. ``cluster.local.LocalWorkers``) runs prompts on its
    workers instead of an executor in this process; it starts and stops with the queue.
    """
    limits = limits or Limits()
    policy = policy or SecurityPolicy()
    app = web.Application(client_max_size=limits.max_body_bytes,
                          middlewares=[headers_middleware, security_middleware(policy)])
    if executor is None and backend is None:
        executor = Executor(registry, ResultCache.for_registry(registry, settings),
                            services={"settings": settings, "output_dir": settings.output_dir})
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[POLICY] = policy
    app[LIMITS] = limits
    # The hub and the translator ask the queue for its status when they need it (late binding).
    hub = WebSocketHub(lambda: status_message(queue), lambda: comfyui.server_features(limits.max_upload_bytes))
    # Live previews cost a pass per step: nodes make them only while a websocket client watches.
    queue = PromptQueue(executor, services={"settings": settings, "output_dir": settings.output_dir,
                                            "preview_wanted": lambda: hub.client_count > 0},
                        listener=EventTranslator(lambda: status_message(queue), hub),
                        history_limit=limits.history_limit, store=store, backend=backend)
    queue.restore(_revalidate(registry))
    app[QUEUE] = queue
    app[HUB] = hub
    app[LOGS] = LogBuffer()

    for route_table in API_ROUTES:
        app.router.add_routes(route_table)
    app.router.add_routes(handlers_convert.routes)  # POST /api/convert (ComfyUI UI format)
    app.router.add_routes(internal.routes)
    _add_unprefixed_aliases(app)
    _attach_foreign_packs(app, registry, hub)
    app.router.add_get("/ws", hub.handle)
    our_index = _index_handler(static_dir or STATIC_DIR)
    if frontend == "comfyui":
        from web.comfyui import add_comfyui_frontend, comfyui_frontend_dir

        add_comfyui_frontend(app, comfyui_frontend_dir())
        app.router.add_get("/latentflow/", our_index)
    else:
        app.router.add_get("/", our_index)
    app.router.add_static("/static", static_dir or STATIC_DIR, follow_symlinks=False)
    app.cleanup_ctx.append(capture_logs)
    app.cleanup_ctx.append(_run_queue)
    app.on_shutdown.append(_close_websockets)
    return app


# Every /api/ route is also served without the prefix, as ComfyUI serves both.
API_ROUTES = (handlers.routes, handlers_prompt.routes, handlers_files.routes, jobs.routes, comfyui.routes)


def _add_unprefixed_aliases(app: web.Application) -> None:
    """ComfyUI clients also call ``/prompt``, ``/queue``, ``/view``... without ``/api``."""
    for route_table in API_ROUTES:
        for route in route_table:
            if isinstance(route, web.RouteDef) and route.path.startswith("/api/"):
                app.router.add_route(route.method, route.path[4:], route.handler)


def _attach_foreign_packs(app: web.Application, registry: NodeRegistry, hub: WebSocketHub) -> None:
    """ComfyUI packs' own HTTP routes, and their ``PromptServer.instance.send_sync`` messages
    forwarded to our websocket clients (``registry.foreign_packs``: comfy_packs)."""
    packs = getattr(registry, "foreign_packs", None)
    if packs is None or not hasattr(packs, "attach_server"):
        return
    from web.ws import Outgoing

    def send(event: str, data: Any, client_id: str | None = None) -> None:
        hub.post(Outgoing({"type": event, "data": data}, client_id))

    packs.attach_server(app, send)


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


def _revalidate(registry: NodeRegistry) -> Callable[[StoredPrompt], Workflow]:
    """A stored prompt checked against today's nodes (a plugin may be gone since it was queued)."""
    from web.handlers_prompt import restricted_report

    def parse(stored: StoredPrompt) -> Workflow:
        report = validate_document(stored.document if stored.document is not None else stored.prompt, registry)
        if report.workflow is not None and stored.outputs and set(stored.outputs) != set(report.outputs):
            report = restricted_report(report, list(stored.outputs))
        if not report.ok or report.workflow is None:
            raise ValueError("; ".join(p.message for p in report.errors[:3]) or "it is no longer a valid workflow")
        return report.workflow

    return parse

