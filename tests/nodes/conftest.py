"""Fixtures of the node tests: the built-in nodes' /object_info and their functions, on an
empty installation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime


@pytest.fixture(scope="module")
def object_info(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from engine.registry import NodeRegistry

    registry = NodeRegistry()
    runtime = Runtime(Settings.for_root(tmp_path_factory.mktemp("root")), device="cpu")
    registry.register_pack(build_nodes(runtime), "nodes.builtin")
    return registry.object_info()


@pytest.fixture()
def nodes(tmp_path: Path) -> dict[str, Any]:
    runtime = Runtime(Settings.for_root(tmp_path), device="cpu")
    return {spec.id: spec.function for spec in build_nodes(runtime)}
