"""Imports flow web -> engine <- nodes -> sgm; checked on the source, without importing it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "engine": {"torch", "aiohttp", "nodes", "web", "sgm", "PIL", "numpy", "comfy_packs", "cluster", "ray"},
    # execution backends (worker processes, Ray actors) over the engine; torch only through the nodes
    "cluster": {"torch", "aiohttp", "nodes", "web", "sgm", "comfy_packs"},
    "sgm": {"engine", "nodes", "web", "aiohttp", "comfy_packs"},
    "nodes": {"web", "aiohttp", "comfy_packs"},
    "web": {"nodes", "sgm", "comfy_packs"},  # packs reach the server through registry.foreign_packs
    "comfy_packs": {"web"},  # ComfyUI packs: a layer over engine, nodes and sgm (its shims included)
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            names.update(alias.name.split(".")[0] for alias in item.names)
        elif isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
            names.add(item.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_modules(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    assert not offenders, "layering violated:\n" + "\n".join(offenders)
