"""``main.py run WORKFLOW --sweep ... --workers 2`` equals the same sweep run locally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workflows.conftest import cli_root, installation  # noqa: F401 (fixtures)
from tests.workflows.test_shipped_workflows import ROOT, fast_overrides, run_cli

SWEEP = ["--sweep", "5.seed=1,2,3,4"]


def _events(path: Path) -> dict[int, list[tuple[str, str | None]]]:
    """Per run: what happened to each node (finished or cached count the same: a worker's
    first run executes what a local sweep found in its cache) and how the run ended."""
    runs: dict[int, list[tuple[str, str | None]]] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        kind = "node_done" if event["type"] in ("node_finished", "node_cached") else event["type"]
        if kind in ("node_done", "run_started", "run_finished", "run_failed"):
            runs.setdefault(event["run_index"], []).append((kind, event.get("node_id")))
    return {index: sorted(steps, key=str) for index, steps in runs.items()}


def _pixels(path: str) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return image.tobytes()


@pytest.mark.slow
def test_a_sweep_on_two_workers_writes_what_a_local_sweep_writes(
        cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    path = ROOT / "workflows" / "txt2img.json"
    overrides = fast_overrides(json.loads(path.read_text()))
    outputs = {}
    for name, extra in (("local", []), ("workers", ["--workers", "2"])):
        code, pngs, err = run_cli(["run", str(path), *overrides, *SWEEP, "--events", str(tmp_path / f"{name}.jsonl"),
                                   "--output-dir", str(tmp_path / name), "--quiet"], capsys)
        assert code == 0, err
        outputs[name] = pngs
    local, workers = outputs["local"], outputs["workers"]
    assert len(local) == len(workers) == 4
    # The same file names (numbered in the order the runs finish) and, seed by seed, the same images.
    assert sorted(Path(p).name for p in local) == sorted(Path(p).name for p in workers)
    assert sorted(p.name for p in (tmp_path / "workers").iterdir()) == sorted(Path(p).name for p in workers)
    assert [_pixels(p) for p in local] == [_pixels(p) for p in workers]
    assert _events(tmp_path / "local.jsonl") == _events(tmp_path / "workers.jsonl")
