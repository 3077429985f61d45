"""Small packs written here in ComfyUI's style, loaded through main.build_registry."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import main
from engine.scheduler import Executor
from engine.settings import Settings
from engine.validation import validate_document


def write_pack(custom_nodes: Path, name: str, files: dict[str, str]) -> Path:
    folder = custom_nodes / name
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


class Installation:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.custom_nodes = root / "custom_nodes"
        self.custom_nodes.mkdir(parents=True, exist_ok=True)
        self.settings = Settings.for_root(root)
        self.registry: Any = None
        self.executor: Executor | None = None
        self.events: list[Any] = []

    def pack(self, name: str, files: dict[str, str]) -> Path:
        return write_pack(self.custom_nodes, name, files)

    def load(self) -> Any:
        self.registry = main.build_registry(custom_nodes=self.custom_nodes, entry_points=False, settings=self.settings)
        self.executor = Executor(self.registry, services={"settings": self.settings})
        return self.registry

    def run(self, prompt: dict[str, Any]) -> Any:
        report = validate_document(prompt, self.registry)
        assert report.ok, report.format()
        return self.executor.run(report.workflow, on_event=self.events.append,
                                 services={"prompt": prompt, "extra_pnginfo": {"workflow": {"w": 1}}})

    def failure(self, source_part: str) -> str:
        return "\n".join(f.message for f in self.registry.failures if source_part in f.source)


@pytest.fixture
def install(tmp_path: Path) -> Installation:
    return Installation(tmp_path)
