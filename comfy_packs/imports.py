"""How a ComfyUI pack is imported: the shims on ``sys.path``, ``nodes`` meaning ComfyUI's
``nodes`` only inside the pack, no silent ``pip install``, and import failures explained.

- The shim folder (``comfy_packs/shims``: ``folder_paths``, ``server``, ``comfy.*``,
  ``comfy_extras``, ``comfy_api``, ``comfy_execution``, ``node_helpers``, ``latent_preview``)
  goes on ``sys.path`` when the first ComfyUI pack is loaded, never before; it holds no
  module named like one of ours.
- ``nodes``: our repository's top-level ``nodes`` package is imported already, so a pack's
  ``import nodes`` would get ours. Every module whose file lies in a ComfyUI pack's folder is
  executed with its own ``__builtins__`` whose ``__import__`` answers ``nodes`` with
  ComfyUI's (``comfyui_nodes`` in the shim folder); functions defined there keep those
  builtins, so imports inside functions at run time are answered the same way. Everything
  else in the process, our own plugins included, gets our ``nodes``.
  ``importlib.import_module("nodes")`` in a pack is not redirected.
- While a pack imports or runs, an audit hook refuses ``pip install`` subprocesses: a pack's
  requirements are never installed behind the user's back.
"""

from __future__ import annotations

import builtins
import difflib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any

from engine.registry import import_plugin_file

SHIM_DIR = Path(__file__).resolve().parent / "shims"
NODES_ALIAS = "comfyui_nodes"  # the shim module packs get as `nodes`
# Top-level modules of ComfyUI itself: a pack missing one of these needs ComfyUI's internals.
COMFYUI_MODULES = {
    "comfy", "comfy_extras", "comfy_execution", "comfy_api", "comfy_api_nodes", "comfy_config", "folder_paths",
    "server", "nodes", "execution", "latent_preview", "node_helpers", "app", "cuda_malloc", "comfyui_version",
    "protocol", "new_updater", "main", "utils", "hook_breaker_ac10a0", "model_management",
}

_pack_folders: list[Path] = []
_lock = threading.Lock()
_guard = threading.local()
_activated = False


class PipInstallRefused(RuntimeError):
    """A pack tried to install packages."""


def activate() -> None:
    """Put the shims on ``sys.path``, the pack finder on ``sys.meta_path``, the pip guard in place."""
    global _activated
    with _lock:
        if _activated:
            return
        sys.path.insert(0, str(SHIM_DIR))
        sys.meta_path.insert(0, PackFinder())
        sys.addaudithook(_refuse_pip)
        _activated = True


def refresh_shims() -> None:
    """A new installation was bound: shims that read it at import time read it again (in place,
    so packs holding the modules see the new values), and ``PromptServer.instance`` starts empty."""
    import importlib

    from comfy_packs.server import PackServer

    PackServer.instance = PackServer()
    for name in ("folder_paths", NODES_ALIAS):
        if name in sys.modules:
            importlib.reload(sys.modules[name])


def shim_module_names() -> list[str]:
    """The modules the shims offer (``comfy.utils``, ``folder_paths``, ...)."""
    names = []
    for path in sorted(SHIM_DIR.rglob("*.py")):
        parts = list(path.relative_to(SHIM_DIR).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts and not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return ["nodes" if n == NODES_ALIAS else n for n in names]


# --------------------------------------------------------------------------- the pack's builtins


def _pack_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level == 0 and name == "nodes":
        return builtins.__import__(NODES_ALIAS, globals, locals, fromlist, 0)
    return builtins.__import__(name, globals, locals, fromlist, level)


PACK_BUILTINS: dict[str, Any] = {**vars(builtins), "__import__": _pack_import}


def in_pack(path: str | None) -> bool:
    if not path:
        return False
    resolved = Path(path).resolve()
    return any(resolved == folder or folder in resolved.parents for folder in _pack_folders)


class _PackLoader(importlib.abc.Loader):
    """Delegates to the file's own loader; gives the module the pack's builtins first."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["__builtins__"] = PACK_BUILTINS
        with guarded():
            self._inner.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class PackFinder(importlib.abc.MetaPathFinder):
    """Finds modules as the rest of ``sys.meta_path`` does; wraps those in a pack's folder."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if not _pack_folders:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not in_pack(spec.origin) or isinstance(spec.loader, _PackLoader):
            return None
        spec.loader = _PackLoader(spec.loader)
        return spec


def import_pack(module_name: str, location: Path) -> types.ModuleType:
    """Import the pack at ``location`` (its ``__init__.py`` or single file) as ``module_name``."""
    folder = location.parent.resolve() if location.name == "__init__.py" else location.resolve()
    with _lock:
        if folder not in _pack_folders:
            _pack_folders.append(folder)
    return import_plugin_file(module_name, location, wrap_loader=_PackLoader)


# --------------------------------------------------------------------------- no silent installs


class guarded:
    """While active on this thread, ``pip install`` subprocesses are refused."""

    def __enter__(self) -> None:
        _guard.depth = getattr(_guard, "depth", 0) + 1

    def __exit__(self, *exc: Any) -> None:
        _guard.depth -= 1


def forget_refused() -> None:
    _guard.refused = None


def _refuse_pip(event: str, args: tuple[Any, ...]) -> None:
    if getattr(_guard, "depth", 0) <= 0:
        return
    if event == "import" and args and str(args[0]).split(".")[0] == "pip":  # pip.main([...]) in-process
        _guard.refused = "import pip"
        raise PipInstallRefused(
            "a ComfyUI pack imported pip (to install packages): packs' requirements are never installed here; "
            "install what it needs yourself (pip install -r <pack>/requirements.txt) and restart")
    if event not in ("subprocess.Popen", "os.system", "os.posix_spawn"):
        return
    command = args[1] if event != "os.system" and len(args) > 1 else args[0]
    text = command.decode() if isinstance(command, bytes) else (
        " ".join(str(a) for a in command) if isinstance(command, (list, tuple)) else str(command))
    if "pip" in text and "install" in text:
        _guard.refused = text
        raise PipInstallRefused(
            f"a ComfyUI pack tried to run {text!r}: packs' requirements are never installed here; "
            "install what it needs yourself (pip install -r <pack>/requirements.txt) and restart")


# --------------------------------------------------------------------------- failures


def explain(error: BaseException, pack: str, pack_dir: Path) -> str:
    """Why a pack failed to import, with the missing module and the closest thing we offer."""
    refused, _guard.refused = getattr(_guard, "refused", None), None
    note = (f" (while importing, it tried to install packages ({refused!r}), which was refused: install its "
            f"requirements yourself{_requirements_note(pack_dir)})") if refused else ""
    return _explain(error, pack, pack_dir) + note


def _explain(error: BaseException, pack: str, pack_dir: Path) -> str:
    offered = shim_module_names()
    if isinstance(error, ModuleNotFoundError) and error.name:
        top = error.name.split(".")[0]
        if top in COMFYUI_MODULES or error.name in offered:
            close = difflib.get_close_matches(error.name, offered, n=3, cutoff=0.4)
            return (f"ComfyUI pack {pack!r} needs ComfyUI's internal module {error.name!r}, which is not offered "
                    f"here; closest offered: {', '.join(close) or 'none'} (all offered: {', '.join(offered)})")
        if (pack_dir / top).exists() or (pack_dir / f"{top}.py").exists() or top in sys.modules:
            return (f"ComfyUI pack {pack!r} failed to import its own module {error.name!r} (missing from the "
                    f"pack, or provided by another pack that is not installed): {error}")
        return (f"ComfyUI pack {pack!r} needs the Python package {error.name!r}, which is not installed"
                f"{_requirements_note(pack_dir)}; install it yourself and restart (a pack's requirements are "
                "never installed automatically)")
    if isinstance(error, ImportError) and error.name and error.name.split(".")[0] in COMFYUI_MODULES:
        missing = str(error).split("'")[1] if str(error).count("'") >= 2 else "?"
        return (f"ComfyUI pack {pack!r} needs {error.name}.{missing}, which the shim {error.name!r} does not "
                f"offer{_offers(error.name)}")
    obj = getattr(error, "obj", None)
    if isinstance(error, AttributeError) and isinstance(obj, types.ModuleType) and _is_shim(obj):
        return (f"ComfyUI pack {pack!r} needs {obj.__name__}.{error.name}, which the shim does not offer"
                f"{_offers(obj.__name__)}")
    return f"ComfyUI pack {pack!r} failed to import: {type(error).__name__}: {error}"


def _is_shim(module: types.ModuleType) -> bool:
    return str(getattr(module, "__file__", "") or "").startswith(str(SHIM_DIR))


def _offers(module_name: str) -> str:
    module = sys.modules.get(NODES_ALIAS if module_name == "nodes" else module_name)
    if module is None:
        return ""
    names = sorted(n for n in vars(module) if not n.startswith("_") and not isinstance(vars(module)[n], types.ModuleType))
    return f"; it offers: {', '.join(names[:40])}" + (" ..." if len(names) > 40 else "")


def _requirements_note(pack_dir: Path) -> str:
    requirements = pack_dir / "requirements.txt"
    if not requirements.is_file():
        return ""
    lines = [line.strip() for line in requirements.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip() and not line.strip().startswith("#")]
    return f" (its requirements.txt, not installed, lists: {', '.join(lines[:12])}{' ...' if len(lines) > 12 else ''})"
