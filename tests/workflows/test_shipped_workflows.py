"""Every workflow in workflows/ validates and runs headlessly on the tiny fixture checkpoints.

Runs go through ``main.main(["run", ...])`` exactly as a user types them, with the
repository root pointed at the temporary installation; sampling steps and image sizes are
overridden with ``--set`` so each run takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.validation import validate_document
from engine.workflow import read_workflow_file
from tests.workflows.model_files import CHECKPOINTS

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
MODEL_WORKFLOWS = [p for p in WORKFLOWS if p.name != "example_math.json"]
UPSCALE_MODEL = ROOT / "models" / "upscale_models" / "tiny-shapes-2x.safetensors"  # what hires_fix.json uses
CONTROLNET_MODEL = ROOT / "models" / "controlnet" / "tiny-shapes-canny.safetensors"  # what controlnet.json uses
CONTROLNET_INPUT = ROOT / "input" / "controlnet-example.png"
# the size of each workflow's image under fast_overrides (64 unless it scales)
EXPECTED_SIZE = {"hires_fix": 128}


@pytest.fixture(autouse=True)
def shipped_upscale_model(installation: Path) -> None:
    """The shipped upscale model in the test installation, as in the repository's models/."""
    link = installation / "models" / "upscale_models" / UPSCALE_MODEL.name
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(UPSCALE_MODEL)


@pytest.fixture(autouse=True)
def shipped_controlnet(installation: Path) -> None:
    """The shipped ControlNet and its input image in the test installation, as in the repository."""
    for source, folder in ((CONTROLNET_MODEL, installation / "models" / "controlnet"),
                           (CONTROLNET_INPUT, installation / "input")):
        link = folder / source.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)


def fast_overrides(document: dict[str, Any]) -> list[str]:
    """--set arguments that make a shipped workflow cheap: 2 steps, 64x64 latents."""
    sets = []
    for node_id, entry in document["nodes"].items():
        if entry["type"] == "SampleLatent":
            sets += ["--set", f"{node_id}.steps=2"]
        elif entry["type"] == "EmptyLatent":
            sets += ["--set", f"{node_id}.width=64", "--set", f"{node_id}.height=64"]
        elif entry["type"] == "ScaleLatent":
            sets += ["--set", f"{node_id}.width=96", "--set", f"{node_id}.height=96"]
    return sets


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    import main

    code = main.main(argv)
    captured = capsys.readouterr()
    return code, [line for line in captured.out.splitlines() if line.endswith(".png")], captured.err


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_validates_against_the_installation(path: Path, registry: Any) -> None:
    report = validate_document(read_workflow_file(path), registry)
    assert report.ok, report.format()
    assert not report.warnings, report.format()


@pytest.mark.parametrize("path", MODEL_WORKFLOWS, ids=[p.stem for p in MODEL_WORKFLOWS])
def test_workflow_runs_headlessly_and_saves_pngs_that_carry_it(
        path: Path, cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    document = json.loads(path.read_text())
    out = tmp_path / "out"
    code, pngs, err = run_cli(["run", str(path), *fast_overrides(document), "--output-dir", str(out), "--quiet"],
                              capsys)
    assert code == 0, err
    assert len(pngs) == 1 and Path(pngs[0]).parent == out, pngs
    with Image.open(pngs[0]) as image:
        size = image.size
        assert image.mode == "RGB"
    expected = EXPECTED_SIZE.get(path.stem, 64)
    assert size == (expected, expected)
    embedded = read_workflow_file(pngs[0])
    assert embedded["nodes"].keys() == document["nodes"].keys()
    sampler = next(i for i, n in document["nodes"].items() if n["type"] == "SampleLatent")
    assert embedded["nodes"][sampler]["inputs"]["steps"] == 2  # the workflow as it ran, overrides included


def test_inpaint_workflow_runs_on_a_9_channel_inpainting_checkpoint(
        cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "workflows" / "inpaint.json"
    document = json.loads(path.read_text())
    code, pngs, err = run_cli(["run", str(path), *fast_overrides(document),
                               "--set", f"1.ckpt_name={CHECKPOINTS['sd1-inpaint']}",
                               "--output-dir", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    assert len(pngs) == 1


def test_seed_sweep_reruns_only_sampler_decode_and_save(
        cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "workflows" / "txt2img.json"
    document = json.loads(path.read_text())
    events = tmp_path / "events.jsonl"
    code, pngs, err = run_cli(["run", str(path), *fast_overrides(document), "--sweep", "5.seed=1,2,3",
                               "--events", str(events), "--output-dir", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0, err
    assert len(set(pngs)) == 3  # one new numbered file per seed, none overwritten
    runs: dict[str, dict[str, set[str]]] = {}
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event["type"] in ("node_finished", "node_cached"):
            runs.setdefault(event["run_id"], {"node_finished": set(), "node_cached": set()})[event["type"]].add(
                event["node_id"])
    first, *later = runs.values()
    assert first["node_finished"] == set(document["nodes"])
    assert len(later) == 2
    for run in later:
        assert run["node_finished"] == {"5", "6", "7"}  # SampleLatent, Decode, SaveImage
        assert run["node_cached"] == {"1", "2", "3", "4"}


def test_saved_png_reruns_its_workflow(cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image
    import numpy as np

    path = ROOT / "workflows" / "txt2img.json"
    document = json.loads(path.read_text())
    out = tmp_path / "out"
    code, first, err = run_cli(["run", str(path), *fast_overrides(document), "--output-dir", str(out), "--quiet"],
                               capsys)
    assert code == 0, err
    code, second, err = run_cli(["run", first[0], "--output-dir", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert second[0] != first[0]  # a new numbered file, the first one untouched
    with Image.open(first[0]) as a, Image.open(second[0]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # same workflow, same seed: same picture
    assert read_workflow_file(second[0]) == read_workflow_file(first[0])


def test_missing_checkpoint_is_reported_before_running(
        cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "workflows" / "txt2img.json"
    code, pngs, err = run_cli(["run", str(path), "--set", "1.ckpt_name=nope.safetensors",
                               "--output-dir", str(tmp_path), "--quiet"], capsys)
    assert code == 1 and not pngs
    assert "nope.safetensors" in err and "tiny-shapes.safetensors" in err  # names the choices


def test_a_broken_checkpoint_fails_the_run_with_the_node_and_the_reason(
        cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = cli_root / "models" / "checkpoints" / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file at all")
    try:
        path = ROOT / "workflows" / "txt2img.json"
        code, pngs, err = run_cli(["run", str(path), "--set", "1.ckpt_name=broken.safetensors",
                                   "--output-dir", str(tmp_path), "--quiet"], capsys)
    finally:
        broken.unlink()
    assert code == 3 and not pngs
    assert "node 1 (LoadCheckpoint) failed" in err and "cannot load broken.safetensors" in err
    assert "damaged or incomplete" in err


@pytest.mark.parametrize("strength, position", [(1.0, "bottom right"), (0.0, "top left")])
def test_controlnet_workflow_draws_the_shape_where_the_edges_are(
        strength: float, position: str, cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The prompt asks for the top left, the edge map shows the bottom right: with the shipped
    ControlNet the star follows the edges (on the embedded model); at strength 0, the prompt."""
    import numpy as np
    from PIL import Image

    from sgm.training.shapes_eval import analyse

    path = ROOT / "workflows" / "controlnet.json"
    code, pngs, err = run_cli(["run", str(path), "--set", f"12.strength={strength}", "--output-dir", str(tmp_path),
                               "--quiet"], capsys)
    assert code == 0, err
    with Image.open(pngs[0]) as image:
        analysis = analyse(np.asarray(image.convert("RGB")))
    assert (analysis.position, analysis.colour, analysis.background) == (position, "yellow", "blue"), analysis

