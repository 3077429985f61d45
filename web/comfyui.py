"""The endpoints ComfyUI's frontend calls besides prompts, and ``serve --frontend comfyui``.

The frontend is a separate PyPI package (``pip install -e .[comfyui]``); nothing of it is
copied here. Its endpoints are always served (API clients use some of them too): users,
settings, user data files (``?dir=&recurse=&split=&full_info=``, move), extensions,
embeddings, model folders, i18n, features. Settings and user data live under
``<root>/user/comfyui/``, confined like every other file name. The answers have the
shapes of ComfyUI's ``server.py`` and ``app/user_manager.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web

from web.handlers import error_response, read_json
from web.keys import FRONTEND_DIR, LIMITS, REGISTRY, SETTINGS
from web.model_folders import list_models, model_kinds
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
    """Routes for the frontend's files (its endpoints are in ``routes``, always served)."""
    app[FRONTEND_DIR] = static_dir

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


def _data_dir(request: web.Request) -> Path:
    return _user_dir(request) / "data"


# The folders and files the ComfyUI frontend reads on every start. Before the user saves one they
# do not exist; ComfyUI answers 404, which the frontend takes as "none" but the browser logs as a
# failed request in the console. We answer what the frontend makes of the 404: no files.
FRONTEND_FOLDERS = frozenset({"workflows", "subgraphs"})
FRONTEND_FILE_DEFAULTS = {"comfy.templates.json": b"[]"}  # the legacy node templates: none


def _userdata_path(request: web.Request, name: str) -> Path:
    return confined_path(_data_dir(request), name)


def _file_info(path: Path, relative_to: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": path.relative_to(relative_to).as_posix(), "size": stat.st_size,
            "modified": stat.st_mtime, "created": stat.st_ctime}


def _flag(request: web.Request, name: str, default: str = "") -> bool:
    return request.query.get(name, default).lower() == "true"


@routes.get("/api/userdata")
async def list_userdata(request: web.Request) -> web.Response:
    """``?dir=workflows`` (required) ``&recurse=true`` ``&full_info=true`` ``&split=true``:
    file names relative to ``dir``; with ``full_info`` objects ``{path, size, modified,
    created}``; with ``split`` ``[path, *its parts]``."""
    directory = request.query.get("dir", "")
    if not directory:
        return error_response(400, "bad_request", "give ?dir=FOLDER (e.g. workflows)")
    try:
        folder = _userdata_path(request, directory)
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if not folder.is_dir():
        if directory.strip("/") in FRONTEND_FOLDERS and not folder.exists():
            return web.json_response([])
        return error_response(404, "not_found", f"no user data folder {directory!r}")
    pattern = "**/*" if _flag(request, "recurse") else "*"
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and not p.is_symlink())
    if _flag(request, "full_info"):
        return web.json_response([_file_info(p, folder) for p in files])
    names = [p.relative_to(folder).as_posix() for p in files]
    if _flag(request, "split"):
        return web.json_response([[name, *name.split("/")] for name in names])
    return web.json_response(names)


@routes.get("/api/v2/userdata")
async def list_userdata_v2(request: web.Request) -> web.Response:
    """``?path=``: everything below it, directories first, paths relative to the data root."""
    try:
        folder = _userdata_path(request, request.query.get("path", ""))
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    base = _data_dir(request).resolve()
    if not folder.exists():
        if folder == base or not request.query.get("path"):
            return web.json_response([])
        return error_response(404, "not_found", f"no user data folder {request.query.get('path')!r}")
    if not folder.is_dir():
        return error_response(400, "bad_request", "path is not a folder")
    entries: list[dict[str, Any]] = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            continue
        entry: dict[str, Any] = {"name": path.name, "path": path.relative_to(base).as_posix(),
                                 "type": "directory" if path.is_dir() else "file"}
        if path.is_file():
            stat = path.stat()
            entry.update(size=stat.st_size, modified=stat.st_mtime)
        entries.append(entry)
    entries.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
    return web.json_response(entries)


@routes.get("/api/userdata/user.css")
async def userdata_css(request: web.Request) -> web.StreamResponse:
    path = _data_dir(request) / "user.css"
    return web.FileResponse(path) if path.is_file() and not path.is_symlink() else await _user_css(request)


@routes.get("/api/userdata/{name}")
async def get_userdata(request: web.Request) -> web.StreamResponse:
    try:
        path = _userdata_path(request, request.match_info["name"])
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if not path.is_file():
        default = FRONTEND_FILE_DEFAULTS.get(request.match_info["name"])
        if default is not None and not path.exists():
            return web.Response(body=default, content_type="application/json")
        return error_response(404, "not_found", f"no user file {request.match_info['name']!r}")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"
                                           if not path.suffix == ".json" else "application/json"})


@routes.post("/api/userdata/{name}")
async def post_userdata(request: web.Request) -> web.Response:
    """The body is the file; ``?overwrite=false`` refuses an existing one (409);
    answers the relative path, or ``{path, size, modified, created}`` with ``full_info``."""
    try:
        path = _userdata_path(request, request.match_info["name"])
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if path.exists() and request.query.get("overwrite", "true") == "false":
        return error_response(409, "exists", f"{request.match_info['name']!r} exists; pass overwrite=true")
    data = await request.read()
    if len(data) > MAX_USERDATA_BYTES:
        return error_response(413, "too_large", "user data files are limited to 16 MiB")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return _saved(request, path)


def _saved(request: web.Request, path: Path) -> web.Response:
    base = _data_dir(request).resolve()
    if _flag(request, "full_info"):
        return web.json_response(_file_info(path, base))
    return web.json_response(path.relative_to(base).as_posix())


@routes.post("/api/userdata/{name}/move/{dest}")
async def move_userdata(request: web.Request) -> web.Response:
    """Rename a user file (``?overwrite=false`` refuses an existing destination: 409)."""
    try:
        source = _userdata_path(request, request.match_info["name"])
        target = _userdata_path(request, request.match_info["dest"])
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if not source.is_file():
        return error_response(404, "not_found", f"no user file {request.match_info['name']!r}")
    if target.exists() and request.query.get("overwrite", "true") == "false":
        return error_response(409, "exists", f"{request.match_info['dest']!r} exists; pass overwrite=true")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)
    return _saved(request, target)


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
    """The frontend's own ``extensions/**/*.js`` as URLs, then each ComfyUI pack's
    ``WEB_DIRECTORY`` scripts as ``/extensions/<pack>/<path>`` (our own plugins ship none)."""
    static_dir = request.app.get(FRONTEND_DIR)
    urls: list[str] = []
    if static_dir is not None and (static_dir / "extensions").is_dir():
        urls = sorted("/" + p.relative_to(static_dir).as_posix()
                      for p in (static_dir / "extensions").rglob("*.js") if p.is_file())
    for pack, folder in sorted(_pack_web_directories(request).items()):
        urls.extend(sorted(f"/extensions/{pack}/{p.relative_to(folder).as_posix()}"
                           for p in folder.rglob("*.js") if p.is_file() and not p.is_symlink()))
    return web.json_response(urls)


def _pack_web_directories(request: web.Request) -> dict[str, Path]:
    packs = getattr(request.app[REGISTRY], "foreign_packs", None)
    return dict(getattr(packs, "web_directories", None) or {})


@routes.get("/extensions/{pack}/{path:.+}")
async def pack_web_file(request: web.Request) -> web.StreamResponse:
    """A file of a ComfyUI pack's ``WEB_DIRECTORY`` (confined to it); registered before the
    frontend's own ``/extensions`` folder, whose files are answered from there otherwise."""
    pack, name = request.match_info["pack"], request.match_info["path"]
    folder = _pack_web_directories(request).get(pack)
    static_dir = request.app.get(FRONTEND_DIR)
    if folder is None:
        if static_dir is not None:
            try:
                path = confined_path(static_dir / "extensions", f"{pack}/{name}")
            except UnsafePathError as error:
                return error_response(400, "unsafe_path", str(error))
            if path.is_file():
                return web.FileResponse(path)
        return error_response(404, "not_found", f"no extension file {pack}/{name}")
    try:
        path = confined_path(folder, name)
    except UnsafePathError as error:
        return error_response(400, "unsafe_path", str(error))
    if not path.is_file():
        return error_response(404, "not_found", f"pack {pack!r} has no web file {name!r}")
    return web.FileResponse(path)


@routes.get("/api/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    """Embedding names: their paths in the embeddings folder without the suffix."""
    names = list_models(request.app[SETTINGS], "embeddings") or []
    return web.json_response([os.path.splitext(name)[0] for name in names])


@routes.get("/api/models")
async def model_types(request: web.Request) -> web.Response:
    return web.json_response(model_kinds(request.app[SETTINGS]))


@routes.get("/api/models/{folder}")
async def models_in(request: web.Request) -> web.Response:
    names = list_models(request.app[SETTINGS], request.match_info["folder"])
    if names is None:
        return error_response(404, "not_found", f"no model folder {request.match_info['folder']!r}; "
                              f"the folders are: {', '.join(model_kinds(request.app[SETTINGS]))}")
    return web.json_response(names)


@routes.get("/api/i18n")
async def i18n(request: web.Request) -> web.Response:
    return web.json_response({})


def server_features(max_upload_bytes: int) -> dict[str, Any]:
    """ComfyUI's feature flags (``/api/features`` and the websocket's ``feature_flags``):
    previews are plain JPEG/PNG frames, without the metadata frames ComfyUI can send."""
    return {"supports_preview_metadata": False, "max_upload_size": max_upload_bytes}


@routes.get("/api/features")
async def features(request: web.Request) -> web.Response:
    return web.json_response(server_features(request.app[LIMITS].max_upload_bytes))


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
