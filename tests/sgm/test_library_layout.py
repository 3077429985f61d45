"""sgm/ is laid out by stage: each wing imports only the wings below it, and no module circles.

Checked on the source (every import, including the ones inside functions), without importing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top; a module may import its own wing and any wing of a lower rank.
WING_RANK = {
    "devices": 0, "data": 0,
    "nets": 1,
    "text": 2,
    "sampling": 3,
    "io": 4,
    "training": 5,
    "tools": 6,
    "models": 7,
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def wing_of(module: str) -> str | None:
    """``sgm.text.encoders`` -> ``text``; ``sgm.devices`` -> ``devices``; ``sgm`` (the facade) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def import_graph(root: Path, package: str = "sgm") -> nx.DiGraph:
    """module -> module it imports, for every module of ``package`` under ``root``."""
    paths = sorted((root / package).rglob("*.py"))
    modules = {module_name(path, root) for path in paths}
    graph = nx.DiGraph()
    for path in paths:
        source = module_name(path, root)
        graph.add_node(source)
        for item in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(item, ast.Import):
                targets = [alias.name for alias in item.names]
            elif isinstance(item, ast.ImportFrom) and item.level == 0 and item.module:
                # `from sgm.data import shapes` imports the submodule sgm.data.shapes
                targets = [f"{item.module}.{a.name}" if f"{item.module}.{a.name}" in modules else item.module
                           for a in item.names]
            elif isinstance(item, ast.ImportFrom) and item.level:
                raise AssertionError(f"{path}: relative import; write the absolute sgm.* path")
            for target in targets:
                if target in modules and target != source:
                    graph.add_edge(source, target)
    return graph


def layout_problems(root: Path, package: str = "sgm") -> list[str]:
    graph = import_graph(root, package)
    problems = []
    for module in sorted(graph):
        wing = wing_of(module)
        if wing is not None and wing not in WING_RANK:
            problems.append(f"{module} is in no wing: put it under one of {sorted(WING_RANK)}")
    for source, target in sorted(graph.edges):
        low, high = wing_of(source), wing_of(target)
        if low is None or high is None or low not in WING_RANK or high not in WING_RANK:
            continue
        if WING_RANK[high] > WING_RANK[low]:
            problems.append(f"{source} ({low}) imports {target} ({high}), a wing above it")
    for cycle in nx.simple_cycles(graph):
        problems.append("import circle: " + " -> ".join([*cycle, cycle[0]]))
    return problems


def test_sgm_wings_import_only_downwards_and_without_circles() -> None:
    problems = layout_problems(ROOT)
    assert not problems, "sgm/ layout broken:\n" + "\n".join(problems)


def test_every_wing_is_a_package_of_modules() -> None:
    graph = import_graph(ROOT)
    wings = {wing_of(module) for module in graph} - {None}
    assert wings == set(WING_RANK), f"wings on disk {sorted(wings)} vs declared {sorted(WING_RANK)}"


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_an_upward_import_a_circle_and_a_stray_module(tmp_path: Path) -> None:
    _write(tmp_path, {
        "sgm/__init__.py": "",
        "sgm/nets/__init__.py": "",
        "sgm/nets/unet.py": "def f():\n    from sgm.sampling.samplers import x\n",  # lazy, still upward
        "sgm/sampling/__init__.py": "",
        "sgm/sampling/samplers.py": "import sgm.sampling.guiders\n",
        "sgm/sampling/guiders.py": "from sgm.sampling import samplers\nfrom sgm.nets import unet\n",
        "sgm/flat.py": "",
    })
    problems = layout_problems(tmp_path)
    assert "sgm.nets.unet (nets) imports sgm.sampling.samplers (sampling), a wing above it" in problems
    assert any(p.startswith("import circle:") and "sgm.sampling.guiders" in p and "sgm.sampling.samplers" in p
               for p in problems), problems
    assert any(p.startswith("sgm.flat is in no wing") for p in problems), problems
    assert not any("guiders (sampling) imports sgm.nets.unet" in p for p in problems)  # downward is fine


def test_public_names_resolve_lazily() -> None:
    import subprocess
    import sys

    code = ("import sys, sgm; assert 'torch' not in sys.modules, 'import sgm pulled in torch'; "
            "from sgm import load_checkpoint, save_checkpoint, convert, AutoencoderKL, DiffusionModel, "
            "UNetModel, Condition, SAMPLERS, SCHEDULERS; "
            "from sgm.io.checkpoints import load_checkpoint as direct; assert load_checkpoint is direct; "
            "assert 'euler' in SAMPLERS and 'karras' in SCHEDULERS; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
