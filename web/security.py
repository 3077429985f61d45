"""Request hardening: auth token, Origin/Host checks, confined file names, upload sniffing.

The threat model is a local server reachable by every web page the user visits: a
page on another origin must not queue work or read files (Origin check on every
state-changing request and websocket upgrade), a rebinding DNS name must not reach
it (Host check while no token is configured), and no request may name a file outside
the folder it is meant for.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Awaitable, Callable, Literal, MutableMapping
from urllib.parse import urlsplit

from aiohttp import web

TOKEN_COOKIE = "latentflow_token"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ImageKind = Literal["png", "jpeg", "webp"]


@dataclass(frozen=True)
class SecurityPolicy:
    """Who may talk to the server.

    ``token``: required on every API request when set (``Authorization: Bearer``,
    ``?token=`` or the cookie the server sets after a ``?token=`` visit).
    ``allowed_hosts``: Host header names accepted while no token is set (DNS rebinding).
    ``allowed_origins``: extra origins (``scheme://host:port``) allowed to make
    state-changing requests besides the server's own.
    """

    token: str | None = None
    allowed_hosts: frozenset[str] = LOCAL_HOSTS
    allowed_origins: frozenset[str] = frozenset()

    @classmethod
    def for_bind(cls, host: str, token: str | None = None, extra_origins: tuple[str, ...] = (),
                 extra_hosts: tuple[str, ...] = ()) -> "SecurityPolicy":
        """The policy for a server bound to ``host``; refuses a non-local bind without a token."""
        if not is_loopback(host) and not token:
            raise ValueError(
                f"binding to {host!r} exposes the server to the network; pass --auth-token SECRET "
                f"(or set LATENTFLOW_AUTH_TOKEN) so only clients that know it can use it")
        hosts = set(LOCAL_HOSTS) | {h.lower() for h in extra_hosts}
        if not is_loopback(host) and host not in ("0.0.0.0", "::"):
            hosts.add(host.lower())
        return cls(token or None, frozenset(hosts), frozenset(o.rstrip("/").lower() for o in extra_origins))


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """``example.com:8188`` -> ``example.com``; ``[::1]:8188`` -> ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def origin_allowed(origin: str, host_header: str, policy: SecurityPolicy) -> bool:
    """Same origin as the Host the request was sent to, or explicitly allowed."""
    if origin.rstrip("/").lower() in policy.allowed_origins:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, file://) and other schemes
    return parts.netloc.lower() == host_header.strip().lower()


def token_from(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query.get("token") or request.cookies.get(TOKEN_COOKIE)


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison of the bytes the client sent with the token.

    aiohttp decodes header bytes as UTF-8 with ``surrogateescape``, so a header sent in
    Latin-1 (``Bearer t\xf6k\xe9n``) holds lone surrogates that plain ``str.encode()``
    refuses; encoding them back with ``surrogateescape`` restores the bytes the client sent,
    which then simply do not match (401), instead of raising (500)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               token.encode("utf-8", "surrogateescape"))


def security_middleware(policy: SecurityPolicy) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Host check, Origin check and token check, in that order, before any handler runs."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host_header = request.headers.get("Host", "")
        if policy.token is None and host_name(host_header) not in policy.allowed_hosts:
            return _refuse(403, "host_not_allowed",
                           f"Host {host_header!r} is not allowed: open the editor at http://127.0.0.1 "
                           f"or http://localhost (this guards against DNS rebinding)")
        is_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        origin = request.headers.get("Origin")
        if (request.method not in SAFE_METHODS or is_upgrade) and origin is not None \
                and not origin_allowed(origin, host_header, policy):
            return _refuse(403, "cross_origin",
                           f"requests from origin {origin!r} are refused: only pages served by this "
                           f"server may change state (add --allow-origin {origin} to trust it)")
        if policy.token is not None and _needs_token(request):
            given = token_from(request)
            if given is None or not token_matches(given, policy.token):
                return _refuse(401, "unauthorized",
                               "this server requires its auth token: send 'Authorization: Bearer TOKEN' "
                               "or open the editor once with ?token=TOKEN")
        response = await handler(request)
        if policy.token is not None and request.query.get("token") and not response.prepared:
            response.set_cookie(TOKEN_COOKIE, policy.token, httponly=True, samesite="Strict")
        return response

    return middleware


def _needs_token(request: web.Request) -> bool:
    """The editor's own code is public; the API, the websocket and files are not."""
    path = request.path
    return not (path.startswith("/static/") or path in ("/", "/latentflow/", "/favicon.ico"))


def _refuse(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": code, "message": message}}, status=status)


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Defence in depth: no sniffing, no framing by other sites (error responses too)."""
    try:
        response = await handler(request)
    except web.HTTPException as error:
        _harden(error.headers)
        raise
    if not response.prepared:
        _harden(response.headers)
    return response


def _harden(headers: MutableMapping[str, str]) -> None:
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")


# --------------------------------------------------------------------------- file names


class UnsafePathError(ValueError):
    """A file name that would leave its folder (or is otherwise not acceptable)."""


def confined_path(base: Path, *parts: str) -> Path:
    """``base/part/...``, refusing anything that could leave ``base``.

    Refused: NUL bytes, absolute paths, backslashes, drive letters, ``..`` components,
    and symbolic links anywhere below ``base`` (a link could point anywhere).
    """
    relative: list[str] = []
    for part in parts:
        if part is None or part == "":
            continue
        if "\x00" in part:
            raise UnsafePathError("file names may not contain NUL bytes")
        if any(ord(char) < 32 or ord(char) == 127 for char in part):
            raise UnsafePathError(f"{part!r} contains control characters; use printable names")
        if "\\" in part or (len(part) >= 2 and part[1] == ":"):
            raise UnsafePathError(f"{part!r}: use forward slashes and relative names only")
        pure = PurePosixPath(part)
        if pure.is_absolute():
            raise UnsafePathError(f"{part!r} is an absolute path; give a name relative to the folder")
        for component in pure.parts:
            if component in ("..", "."):
                raise UnsafePathError(f"{part!r} contains {component!r}; names must stay inside their folder")
            relative.append(component)
    root = base.resolve()
    path = root.joinpath(*relative)
    current = root
    for component in relative:
        current = current / component
        if current.is_symlink():
            raise UnsafePathError(f"{'/'.join(relative)!r} goes through a symbolic link, which is not served")
    if not path.resolve().is_relative_to(root):
        raise UnsafePathError(f"{'/'.join(relative)!r} is outside its folder")
    return path


def safe_file_name(name: str) -> str:
    """A single file name (no folders), for uploads and saved workflows."""
    if not name or "\x00" in name:
        raise UnsafePathError("a file name is required and may not contain NUL bytes")
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise UnsafePathError(f"{name!r} contains control characters; use printable names")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise UnsafePathError(f"{name!r} is not a plain file name (no folders, no leading dot)")
    if len(name) > 200:
        raise UnsafePathError("file names are limited to 200 characters")
    return name


# --------------------------------------------------------------------------- uploads


def sniff_image(head: bytes) -> ImageKind | None:
    """The image format from its magic bytes (PNG, JPEG, WebP), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


IMAGE_SUFFIXES: dict[ImageKind, tuple[str, ...]] = {
    "png": (".png",), "jpeg": (".jpg", ".jpeg"), "webp": (".webp",),
}


@dataclass(frozen=True)
class Limits:
    """Request and upload size limits (bytes), history length and queue length."""

    max_body_bytes: int = 64 << 20
    max_upload_bytes: int = 32 << 20
    history_limit: int = 1000
    max_pending: int = 10_000  # queued prompts; beyond this POST /api/prompt answers 429
    # Summed request bytes of the pending prompts; past it POST /api/prompt answers 413.
    max_pending_bytes: int = 256 << 20
    # /api/queue and /api/history list a prompt in full up to this size; a bigger one lists its
    # nodes' types and inputs with big extra_data / meta / ui values replaced by their size.
    max_listed_prompt_bytes: int = 1 << 20
