"""Where model files live: each kind (checkpoints, vae, loras, ...) has folders and extensions.

The layout is ComfyUI's: ``models/<kind>/`` under the installation (or ``--base-directory``),
plus the folders that ``extra_model_paths.yaml`` files add, so an existing ComfyUI or A1111
install's models are used where they lie. A file is named relative to the folder it is in,
with ``/`` between subfolders (``sd15/model.safetensors``); resolving a name searches the
kind's folders in order and never leaves them.

A :class:`ModelPaths` is a frozen value built from :class:`engine.settings.Settings`
(``settings.model_paths``); nothing here is global.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

from engine.api import Choice

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # what sgm.io reads

# kind -> folders under models/, in search order (ComfyUI's names and order)
DEFAULT_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "configs": ("configs",),
    "loras": ("loras",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "vae_approx": ("vae_approx",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
}

# older names ComfyUI still accepts for a kind (in extra_model_paths.yaml and in node code)
ALIASES = {"unet": "diffusion_models", "clip": "text_encoders"}

EXTENSIONS = {"configs": (".yaml",)}

# how one file of a kind is called in messages
NOUNS = {
    "checkpoints": "checkpoint", "configs": "model config", "loras": "LoRA", "vae": "VAE",
    "text_encoders": "text encoder", "diffusion_models": "diffusion model",
    "clip_vision": "CLIP vision model", "style_models": "style model", "embeddings": "embedding",
    "vae_approx": "preview decoder", "controlnet": "ControlNet model", "gligen": "GLIGEN model",
    "upscale_models": "upscale model", "hypernetworks": "hypernetwork", "photomaker": "PhotoMaker model",
}

DEFAULT_SOURCE = "default"


class ModelPathsError(ValueError):
    """An ``extra_model_paths.yaml`` that cannot be used (names the file, section, key and fix)."""


@dataclass(frozen=True)
class ModelFolder:
    """One folder of one kind; ``source`` is ``default`` or ``<file> [<section>]``."""

    kind: str
    path: Path
    source: str = DEFAULT_SOURCE
    is_default: bool = False


def canonical_kind(kind: str) -> str:
    """``unet`` -> ``diffusion_models``, ``clip`` -> ``text_encoders``; other names unchanged."""
    return ALIASES.get(kind, kind)


@dataclass(frozen=True)
class ModelPaths:
    """Kind -> folders (in search order) and the file extensions listed for it."""

    folders_by_kind: tuple[tuple[str, tuple[ModelFolder, ...]], ...]
    config_files: tuple[Path, ...] = ()

    @classmethod
    def build(cls, models_dir: Path, config_files: Sequence[Path] = ()) -> "ModelPaths":
        """The default ``models_dir/<folder>`` layout plus every folder the YAML files add
        (``is_default`` entries first, then defaults, then the rest, each in file order)."""
        models_dir = Path(models_dir)
        first: dict[str, list[ModelFolder]] = {}
        last: dict[str, list[ModelFolder]] = {}
        for path in config_files:
            for folder in read_extra_model_paths(Path(path)):
                (first if folder.is_default else last).setdefault(folder.kind, []).append(folder)
        kinds = list(DEFAULT_FOLDERS) + [k for k in [*first, *last] if k not in DEFAULT_FOLDERS]
        table = []
        for kind in dict.fromkeys(kinds):
            defaults = [ModelFolder(kind, models_dir / name) for name in DEFAULT_FOLDERS.get(kind, ())]
            ordered: list[ModelFolder] = []
            for folder in [*first.get(kind, []), *defaults, *last.get(kind, [])]:
                if all(folder.path != seen.path for seen in ordered):
                    ordered.append(folder)
            table.append((kind, tuple(ordered)))
        return cls(tuple(table), tuple(Path(p) for p in config_files))

    # ------------------------------------------------------------------ lookup

    def kinds(self) -> list[str]:
        """Every kind, ComfyUI's first, then those only the YAML files name."""
        return [kind for kind, _ in self.folders_by_kind]

    def has_kind(self, kind: str) -> bool:
        """Whether ``kind`` (or its older name) is a kind here (``/api/models/{kind}``: 404 if not)."""
        return canonical_kind(kind) in self.kinds()

    def folders(self, kind: str) -> tuple[ModelFolder, ...]:
        kind = canonical_kind(kind)
        for name, folders in self.folders_by_kind:
            if name == kind:
                return folders
        return ()

    def extensions(self, kind: str) -> tuple[str, ...]:
        return EXTENSIONS.get(canonical_kind(kind), MODEL_EXTENSIONS)

    def files(self, *kinds: str) -> list[str]:
        """Names of the files of these kinds in all their folders (``sub/name``), sorted;
        a name found in two folders is listed once (the first folder wins when loading)."""
        names: set[str] = set()
        for kind in kinds:
            for folder in self.folders(kind):
                names.update(list_files(folder.path, self.extensions(kind)))
        return sorted(names, key=str.lower)

    def resolve(self, kinds: str | Iterable[str], name: str) -> Path | None:
        """The file ``name`` in the first folder of these kinds that holds it, or None.

        The name must stay inside the folder: absolute names, ``..`` and backslashes are
        refused. The check is on the name, so a model symlinked into a folder still loads."""
        relative = relative_name(name)
        if relative is None:
            return None
        for kind in [kinds] if isinstance(kinds, str) else kinds:
            for folder in self.folders(kind):
                path = folder.path.joinpath(*relative.parts)
                if path.is_file():
                    return path
        return None

    def catalogue(self) -> dict[str, list[str]]:
        """Kind -> file names, for ``GET /api/models`` (the keys) and ``/api/models/{kind}``."""
        return {kind: self.files(kind) for kind in self.kinds()}

    # ------------------------------------------------------------------ messages

    def not_found_message(self, kinds: str | Sequence[str], name: str) -> str:
        """Why ``name`` is not usable and where to put it, e.g. "checkpoint 'sd15.safetensors'
        not found: put it in models/checkpoints/ (...); available: ..."."""
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        kind = canonical_kind(kinds[0]) if kinds else "checkpoints"
        noun = NOUNS.get(kind, f"{kind} file")
        if relative_name(name) is None:
            return (f"{noun} name {name!r} is not allowed: give a name relative to the "
                    f"{kind} folder, without '..', backslashes or a leading '/'")
        folders = [f for k in dict.fromkeys(canonical_kind(k) for k in kinds) for f in self.folders(k)]
        builtin = [shown(f.path) for f in folders if f.source == DEFAULT_SOURCE]
        extra = [f"{shown(f.path)} ({f.source})" for f in folders if f.source != DEFAULT_SOURCE]
        where = f"put it in {' or '.join(builtin) if builtin else 'one of these folders'}"
        if extra:
            where += f" (or a folder listed in extra_model_paths.yaml: {', '.join(extra)})"
        else:
            where += f" (or add your own folder under '{kind}:' in extra_model_paths.yaml)"
        available = self.files(*kinds)
        listed = ", ".join(repr(n) for n in available[:8]) + (
            f" and {len(available) - 8} more" if len(available) > 8 else "")
        return f"{noun} {name!r} not found: {where}; available: {listed or 'none'}"


@dataclass(frozen=True)
class ModelChoice(Choice):
    """A choice among model files of some kinds; a name that is not there gets a message
    saying which folders to put it in (and the closest name, from validation's hint)."""

    models: ModelPaths | None = None
    kinds: tuple[str, ...] = ()

    def options(self) -> list[str]:
        return self.models.files(*self.kinds) if self.models is not None else super().options()

    def check(self, value: Any) -> str | None:
        problem = super().check(value)
        if problem is None or not isinstance(value, str) or self.models is None:
            return problem
        return self.models.not_found_message(self.kinds, value)


def model_choice(models: ModelPaths, *kinds: str, tooltip: str = "", default: str | None = None) -> ModelChoice:
    """The widget of an input naming a file of ``kinds`` (e.g. ``model_choice(paths, "checkpoints")``)."""
    return ModelChoice(models=models, kinds=kinds, tooltip=tooltip, default=default)


# --------------------------------------------------------------------------- files and names


def relative_name(name: str) -> PurePosixPath | None:
    """``name`` as a path inside its folder, or None when it could leave it (absolute, drive
    letter, backslash, ``..`` component, NUL) or names nothing."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        return None
    if os.path.isabs(name) or (len(name) >= 2 and name[1] == ":"):
        return None
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p != "."]
    if not parts or ".." in parts:
        return None
    return PurePosixPath(*parts)


def list_files(folder: Path, extensions: Sequence[str]) -> list[str]:
    """Relative ``/`` names of the files with these extensions under ``folder``, following
    symlinked subfolders once (a missing folder has none; hidden files are skipped)."""
    if not folder.is_dir():
        return []
    names = []
    visited: set[str] = set()
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in visited:  # a link loop, or two links to one folder
            subdirs.clear()
            continue
        visited.add(real)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        base = Path(directory).relative_to(folder)
        for file_name in files:
            if file_name.startswith(".") or not file_name.lower().endswith(tuple(extensions)):
                continue
            if (Path(directory) / file_name).is_file():  # skips dangling links
                names.append((base / file_name).as_posix())
    return sorted(names)


def shown(path: Path) -> str:
    """A folder as messages show it: relative to the working directory when inside it."""
    try:
        text = str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        text = str(path)
    return text.rstrip("/") + "/"


# --------------------------------------------------------------------------- extra_model_paths.yaml


def read_extra_model_paths(path: Path) -> list[ModelFolder]:
    """The folders an ``extra_model_paths.yaml`` (ComfyUI's format) adds, in file order.

    Top-level keys are sections (``comfyui:``, ``a111:``, any name). In a section,
    ``base_path`` (optional; ``~`` and ``$VARS`` expanded; relative to the YAML file's folder)
    prefixes every path, ``is_default: true`` puts the section's folders before the
    defaults, and every other key is a kind with one path, several paths on separate lines
    (``|`` block), or a YAML list. Paths without a base_path are relative to the file's folder.
    """
    import yaml  # PyYAML: only needed when a config file is used

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ModelPathsError(f"{path}: cannot read extra model paths ({error.strerror or error}); "
                              f"check the path given to --extra-model-paths-config") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ModelPathsError(
            f"{path}: not valid YAML{where}: {problem}; fix the syntax there: sections at the top "
            f"level, each kind indented under its section with spaces, e.g. 'a111:' then "
            f"'    checkpoints: models/Stable-diffusion'") from None
    if config is None:
        return []
    if not isinstance(config, dict):
        raise ModelPathsError(f"{path}: expected sections ('comfyui:', 'a111:', ...) at the top level, "
                              f"got {type(config).__name__}; see extra_model_paths.yaml.example")
    here = path.resolve().parent
    folders: list[ModelFolder] = []
    for section, entries in config.items():
        if entries is None:
            continue  # an empty or fully commented-out section
        where = f"{path} [{section}]"
        if not isinstance(entries, dict):
            raise ModelPathsError(
                f"{where}: a section must map kinds to folders (e.g. 'checkpoints: models/checkpoints'), "
                f"got {type(entries).__name__} {entries!r}; indent its entries under '{section}:'")
        base = here
        if "base_path" in entries:
            value = entries["base_path"]
            if not isinstance(value, str) or not value.strip():
                raise ModelPathsError(f"{where}: base_path must be a folder path, got {value!r}; write "
                                      f"e.g. 'base_path: /path/to/stable-diffusion-webui/'")
            base = here / os.path.expandvars(os.path.expanduser(value.strip()))
        is_default = entries.get("is_default", False)
        if not isinstance(is_default, bool):
            raise ModelPathsError(f"{where}: is_default must be true or false, got {is_default!r}")
        for key, value in entries.items():
            if key in ("base_path", "is_default"):
                continue
            if not isinstance(key, str) or not key.strip():
                raise ModelPathsError(f"{where}: key {key!r} is not a model kind; use a folder kind such "
                                      f"as checkpoints, vae, loras, embeddings")
            for entry in _paths_of(value, f"{where} {key}"):
                folder = Path(os.path.normpath(base / os.path.expandvars(os.path.expanduser(entry))))
                folders.append(ModelFolder(canonical_kind(key.strip()), folder, f"{path.name} [{section}]",
                                           is_default))
    return folders


def _paths_of(value: Any, where: str) -> list[str]:
    """One path, a multi-line string of paths, or a list of paths, as a list of paths."""
    if isinstance(value, str):
        lines = value.split("\n")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        lines = value
    else:
        raise ModelPathsError(
            f"{where}: expected a folder path or several on separate lines ('|' block), got "
            f"{type(value).__name__} {value!r}; write e.g. 'loras: |' then one folder per indented line")
    return [line.strip() for line in lines if line.strip()]
