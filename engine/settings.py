"""Folders and limits of one installation, built once in main.py and passed down.

No module reads these from globals: node packs receive them through their ``NODES``
factory, nodes through ``ctx.services["settings"]``, the server through its app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from engine.model_paths import ModelPaths


@dataclass(frozen=True)
class Settings:
    root: Path = Path(".")
    models_dir: Path = Path("models")
    output_dir: Path = Path("output")
    input_dir: Path = Path("input")
    workflows_dir: Path = Path("workflows")
    custom_nodes_dir: Path = Path("custom_nodes")
    cache_max_entries: int = 512
    cache_max_bytes: int | None = 8 << 30  # results (latents, images, models) kept across runs
    extra: dict[str, str] = field(default_factory=dict)
    extra_model_paths: tuple[Path, ...] = ()  # extra_model_paths.yaml files (ComfyUI's format)

    @classmethod
    def for_root(cls, root: Path, **overrides: object) -> "Settings":
        root = Path(root)
        base = dict(root=root, models_dir=root / "models", output_dir=root / "output",
                    input_dir=root / "input", workflows_dir=root / "workflows",
                    custom_nodes_dir=root / "custom_nodes")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)  # type: ignore[arg-type]

    def model_folder(self, kind: str) -> Path:
        """``models/<kind>`` (checkpoints, vae, loras, embeddings, unet, text_encoders): the
        default folder only; :attr:`model_paths` has every folder of a kind."""
        return self.models_dir / kind

    @cached_property
    def model_paths(self) -> ModelPaths:
        """Every model folder by kind: ``models/<kind>/`` plus those the
        ``extra_model_paths`` files add. Built on first use (a bad file raises
        :class:`engine.model_paths.ModelPathsError`), then kept with these settings."""
        return ModelPaths.build(self.models_dir, self.extra_model_paths)
