"""``serve --frontend comfyui``: serve the pinned ``comfyui-frontend-package`` against our API.

The frontend is a separate PyPI package (``pip install -e .[comfyui]``); nothing of it is
copied here. Besides the ComfyUI-shaped API every server has, it asks for a few endpoints
of its own: users, settings, user data files, extensions, embeddings, i18n, features.
They are answered here: settings and user data live under ``<root>/user/comfyui/``,
confined like every other file name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from web.handlers import error_response, read_json
from web.keys import SETTINGS
from web.security import UnsafePathError, confined_path

routes = web.RouteTableDef()

MAX_USERDATA_BYTES = 16 << 20


class FrontendMissingError(RuntimeError):
    """The optional ComfyUI frontend package is not installed."""


def comfyui_frontend_dir() -> Path:
    """The static folder of the installed ``comfyui-frontend-package``."""
    try:
        import comfyui_frontend_package  # optional dependency: pip install -e .[comfyui]
    except ImportError as error:
        raise FrontendMissingError(
            "--frontend comfyui needs the ComfyUI frontend package: pip install -e '.[comfyui]'") from error
    folder = Path(comfyui_frontend_package.__file__).resolve().parent / "static"
    if not (folder / "index.html").is_file():
        raise FrontendMissingError(f"{folder} has no index.html; reinstall comfyui-frontend-package")
    return folder


def add_comfyui_frontend(app: web.Application, static_dir: Path) -> None:
    """Routes for the frontend's files and the endpoints it needs beyond ours."""
    app.router.add_routes(routes)
    for route in list(routes):
        if isinstance(route, web.RouteDef) and route.path.startswith("/api/"):
            app.router.add_route(route.method, route.path[4:], route.handler)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static_dir / "index.html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", index)
    for child in sorted(static_dir.iterdir()):
        if child.is_dir():
            app.router.add_static(f"/{child.name}", child, follow_symlinks=False)
        elif child.is_file() and child.name != "index.html":
            app.router.add_get(f"/{child.name}", _file_handler(child))


def _file_handler(path: Path) -> Any:
    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    return serve


def _user_dir(request: web.Request) -> Path:
    return request.app[SETTINGS].root / "user" / "comfyui"


# --------------------------------------------------------------------------- users and settings


@routes.get("/api/users")
async def users(request: web.Request) -> web.Response:
    # One local user: the frontend then skips its user-selection screen.
    return web.json_response({"storage": "server", "migrated": True})


def _settings_path(request: web.Request) -> Path:
    return _user_dir(request) / "comfy.settings.json"


def _read_settings(request: web.Request) -> dict[str, Any]:
    path = _settings_path(request)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _write_settings(request: web.Request, data: dict[str, Any]) -> None:
    path = _settings_path(request)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


@routes.get("/api/settings")
async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(_read_settings(request))


@routes.post("/api/settings")
async def post_settings(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        return error_response(400, "bad_request", "send an object of setting id -> value")
    _write_settings(request, {**_read_settings(request), **body})
    return web.json_response({})


@routes.get("/api/settings/{setting_id}")
async def get_setting(request: web.Request) -> web.Response:
    return web.json_response(_read_settings(request).get(request.match_info["setting_id"]))


@routes.post("/api/settings/{setting_id}")
async def post_setting(request: web.Request) -> web.Response:
    value = await read_json(request)
    _write_settings(request, {**_read_settings(request), request.match_info["setting_id"]: value})
    return web.json_response({})


# --------------------------------------------------------------------------- user data files


def _userdata_path(request: web.Request, name: str) -> Path:
    return confined_path(_user_dir(request) / "data", name)


@routes.get("/api/userdata")
async def list_userdata(request: web.Request) -> web.Response:
    """``?dir=workflows&recurse=true``: file names (relative to ``dir``) under the user folder."""
    try:
        folder = _userdata_path(request, request.query.get("dir", ""))
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if not folder.is_dir():
        return web.json_response([])
    pattern = "**/*" if request.query.get("recurse", "").lower() == "true" else "*"
    names = sorted(str(p.relative_to(folder)) for p in folder.glob(pattern) if p.is_file() and not p.is_symlink())
    return web.json_response(names)


@routes.get("/api/v2/userdata")
async def list_userdata_v2(request: web.Request) -> web.Response:
    try:
        folder = _userdata_path(request, request.query.get("path", ""))
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if not folder.is_dir():
        return web.json_response([])
    base = _user_dir(request) / "data"
    entries = [{"name": p.name, "path": str(p.relative_to(base.resolve())),
                "type": "directory" if p.is_dir() else "file",
                **({"size": p.stat().st_size, "modified": p.stat().st_mtime} if p.is_file() else {})}
               for p in sorted(folder.iterdir()) if not p.is_symlink()]
    return web.json_response(entries)


@routes.get("/api/userdata/user.css")
async def userdata_css(request: web.Request) -> web.StreamResponse:
    path = _user_dir(request) / "data" / "user.css"
    return web.FileResponse(path) if path.is_file() and not path.is_symlink() else await _user_css(request)


@routes.get("/api/userdata/{name}")
async def get_userdata(request: web.Request) -> web.StreamResponse:
    try:
        path = _userdata_path(request, request.match_info["name"])
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if not path.is_file():
        return error_response(404, "not_found", f"no user file {request.match_info['name']!r}")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"
                                           if not path.suffix == ".json" else "application/json"})


@routes.post("/api/userdata/{name}")
async def post_userdata(request: web.Request) -> web.Response:
    try:
        path = _userdata_path(request, request.match_info["name"])
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if path.exists() and request.query.get("overwrite", "true").lower() == "false":
        return error_response(409, "exists", f"{request.match_info['name']!r} exists; pass overwrite=true")
    data = await request.read()
    if len(data) > MAX_USERDATA_BYTES:
        return error_response(413, "too_large", "user data files are limited to 16 MiB")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    relative = str(path.relative_to((_user_dir(request) / "data").resolve()))
    if request.query.get("full_info", "").lower() == "true":
        return web.json_response({"path": relative, "size": len(data), "modified": path.stat().st_mtime})
    return web.json_response(relative)


@routes.delete("/api/userdata/{name}")
async def delete_userdata(request: web.Request) -> web.Response:
    try:
        path = _userdata_path(request, request.match_info["name"])
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if not path.is_file():
        return error_response(404, "not_found", f"no user file {request.match_info['name']!r}")
    path.unlink()
    return web.Response(status=204)


# --------------------------------------------------------------------------- small catalogues


@routes.get("/api/extensions")
async def extensions(request: web.Request) -> web.Response:
    return web.json_response([])  # our plugins are Python nodes; they ship no frontend code


@routes.get("/api/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    folder = request.app[SETTINGS].model_folder("embeddings")
    names = sorted(p.stem for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    return web.json_response(names)


@routes.get("/api/i18n")
async def i18n(request: web.Request) -> web.Response:
    return web.json_response({})


@routes.get("/api/features")
async def features(request: web.Request) -> web.Response:
    return web.json_response({"supports_preview_metadata": False, "max_upload_size": 32 << 20})


@routes.get("/api/experiment/models")
async def model_folders(request: web.Request) -> web.Response:
    models = request.app[SETTINGS].models_dir
    folders = sorted(p.name for p in models.iterdir() if p.is_dir()) if models.is_dir() else []
    return web.json_response([{"name": name, "folders": [str(models / name)]} for name in folders])


@routes.get("/api/workflow_templates")
async def workflow_templates(request: web.Request) -> web.Response:
    return web.json_response({})


@routes.get("/api/global_subgraphs")
async def global_subgraphs(request: web.Request) -> web.Response:
    return web.json_response({})


async def _empty_templates(request: web.Request) -> web.Response:
    return web.json_response([])  # no ComfyUI templates ship; our workflows are in /api/workflows


async def _user_css(request: web.Request) -> web.Response:
    return web.Response(text="", content_type="text/css")


routes.get("/templates/index.json")(_empty_templates)
routes.get("/templates/index_logo.json")(_empty_templates)
routes.get("/user.css")(_user_css)
