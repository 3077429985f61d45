"""ComfyUI's model folder names and the files in them (``/api/models``, ``/api/embeddings``,
``/internal/folder_paths``): a thin view of ``settings.model_paths``
(:class:`engine.model_paths.ModelPaths`, which knows the default layout, the legacy
``clip``/``unet`` names and the folders ``extra_model_paths.yaml`` adds)."""

from __future__ import annotations

from engine.settings import Settings


def model_kinds(settings: Settings) -> list[str]:
    return settings.model_paths.kinds()


def list_models(settings: Settings, name: str) -> list[str] | None:
    """Files of kind ``name`` in all its folders (``sub/name``, sorted); None when ``name``
    is not a model folder name."""
    paths = settings.model_paths
    return paths.files(name) if paths.has_kind(name) else None


def folder_paths(settings: Settings) -> dict[str, list[str]]:
    """Kind -> its folders, in search order."""
    paths = settings.model_paths
    return {kind: [str(folder.path) for folder in paths.folders(kind)] for kind in paths.kinds()}
