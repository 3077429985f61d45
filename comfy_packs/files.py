"""``folder_paths``: ComfyUI's folders over our settings (``engine.settings.Settings``).

``folder_names_and_paths`` starts as our model folders (``settings.model_paths``: models/<kind>
and extra_model_paths.yaml's) plus the input/output/temp folders; packs may add kinds and
folders to it (``add_model_folder_path``) for their own loaders. Our own loaders keep reading
``settings.model_paths``.

The input, output and temp folders are those of the prompt the calling node runs in
(:func:`run_folder`): a worker with ``--worker-files send`` points its runs' output and temp
folders into a scratch folder whose files travel back to the server (``cluster.files``), so
a pack's SaveImage, PreviewImage and ``folder_paths.get_temp_directory()`` files do too.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Literal

from engine.model_paths import MODEL_EXTENSIONS, list_files, relative_name
from comfy_packs import state

supported_pt_extensions: set[str] = set(MODEL_EXTENSIONS) | {".pkl", ".sft"}


def build_folders() -> dict[str, tuple[list[str], set[str]]]:
    settings = state.installation().settings
    paths = settings.model_paths
    table: dict[str, tuple[list[str], set[str]]] = {}
    for kind in paths.kinds():
        table[kind] = ([str(f.path) for f in paths.folders(kind)], set(paths.extensions(kind)))
    table["unet"] = table.get("diffusion_models", ([], set(supported_pt_extensions)))  # ComfyUI's older names
    table["clip"] = table.get("text_encoders", ([], set(supported_pt_extensions)))
    table["custom_nodes"] = ([str(settings.custom_nodes_dir)], set())
    return table


FolderKind = Literal["input", "output", "temp"]


def run_folder(kind: FolderKind) -> str:
    """The ``kind`` folder for the node running on this thread: the one its prompt's services
    name (``services["output_dir"]``, ``services["settings"]``: ``input_dir``, ``root``/temp, as
    our SaveImage and PreviewImage read them), else the installation's (outside a run)."""
    current = state.running()
    services = current.ctx.services if current is not None and current.ctx is not None else {}
    settings = services.get("settings") or state.installation().settings
    if kind == "output":
        return str(services.get("output_dir") or settings.output_dir)
    if kind == "temp":
        return str(Path(settings.root) / "temp")
    if kind == "input":
        return str(settings.input_dir)
    raise ValueError(f"folder kind {kind!r} is not one of input, output, temp")


def run_folders() -> dict[str, str]:
    """``{"input": ..., "output": ..., "temp": ...}`` of :func:`run_folder`."""
    return {kind: run_folder(kind) for kind in ("input", "output", "temp")}


def filter_files_extensions(files: Iterable[str], extensions: Iterable[str]) -> list[str]:
    extensions = {e.lower() for e in extensions}
    return sorted(f for f in files if not extensions or os.path.splitext(f)[1].lower() in extensions)


def get_filename_list(table: dict[str, tuple[list[str], set[str]]], kind: str) -> list[str]:
    folders, extensions = _entry(table, kind)
    names: set[str] = set()
    for folder in folders:
        names.update(list_files(Path(folder), tuple(extensions) or ("",)))
    return sorted(names, key=str.lower)


def get_full_path(table: dict[str, tuple[list[str], set[str]]], kind: str, filename: str) -> str | None:
    relative = relative_name(filename)
    if relative is None or kind not in table:
        return None
    for folder in _entry(table, kind)[0]:
        path = Path(folder).joinpath(*relative.parts)
        if path.is_file():
            return str(path)
    return None


def _entry(table: dict[str, tuple[list[str], set[str]]], kind: str) -> tuple[list[str], set[str]]:
    entry = table.get(kind)
    if entry is None:
        raise KeyError(f"folder_paths: no model folder kind {kind!r}; the kinds are: {', '.join(sorted(table))}")
    return entry


def save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                    image_height: int = 0) -> tuple[str, str, int, str, str]:
    """ComfyUI's ``get_save_image_path``: (folder, file name, next counter, subfolder, prefix),
    with %width%, %height%, %year%, ... replaced; the folder must stay inside ``output_dir``."""
    now = time.localtime()
    replacements = {"%width%": str(image_width), "%height%": str(image_height), "%year%": str(now.tm_year),
                    "%month%": f"{now.tm_mon:02d}", "%day%": f"{now.tm_mday:02d}", "%hour%": f"{now.tm_hour:02d}",
                    "%minute%": f"{now.tm_min:02d}", "%second%": f"{now.tm_sec:02d}"}
    for key, value in replacements.items():
        filename_prefix = filename_prefix.replace(key, value)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((os.path.abspath(output_dir), os.path.abspath(folder))) != os.path.abspath(output_dir):
        raise ValueError(f"saving to {os.path.abspath(folder)} is outside the output folder {output_dir}; "
                         "give a filename_prefix without '..' or an absolute path")
    pattern = re.compile(rf"^{re.escape(filename)}_(\d+)_?")
    counters = [int(m.group(1)) for name in (os.listdir(folder) if os.path.isdir(folder) else [])
                if (m := pattern.match(name))]
    return folder, filename, max(counters, default=0) + 1, subfolder, filename_prefix


def annotated_path(name: str, default_dir: str | None, folders: dict[str, str]) -> str:
    """``name [input]`` / ``[output]`` / ``[temp]`` -> that folder's file; confined to it."""
    match = re.fullmatch(r"(.*?)\s*\[(input|output|temp)\]", name)
    folder = folders[match.group(2)] if match else (default_dir or folders["input"])
    name = match.group(1) if match else name
    relative = relative_name(name)
    if relative is None:
        raise ValueError(f"file name {name!r} must stay inside {folder} (no '..' or absolute paths)")
    return str(Path(folder).joinpath(*relative.parts))
