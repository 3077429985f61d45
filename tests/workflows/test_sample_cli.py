"""``python main.py sample``: the txt2img graph built in memory and run through the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from engine.workflow import read_workflow_file
from nodes.sample_cli import parse_size
from tests.workflows.model_files import CHECKPOINTS


def sample(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    import main

    code = main.main(["sample", *argv])
    captured = capsys.readouterr()
    return code, [line for line in captured.out.splitlines() if line.endswith(".png")], captured.err


def test_sample_writes_n_images_carrying_the_graph(cli_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, pngs, err = sample(["--prompt", "a small red circle at the top left on a blue background", "--n", "2",
                              "--steps", "2", "--seed", "5", "--sampler", "euler", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert len(pngs) == 2 and all(Path(p).parent == tmp_path for p in pngs)
    assert "seed 5" in err
    with Image.open(pngs[0]) as image:
        assert image.size == (64, 64)  # the embedded model's size by default
    document = read_workflow_file(pngs[0])
    assert document["nodes"]["1"]["inputs"]["ckpt_name"] == "tiny-shapes.safetensors"
    assert document["nodes"]["5"]["inputs"]["seed"] == 5 and document["nodes"]["4"]["inputs"]["batch_size"] == 2
    assert document["nodes"]["2"]["inputs"]["text"].startswith("a small red circle")


def test_sample_other_checkpoint_and_size(cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, pngs, err = sample(["--prompt", "a cat", "--negative", "blurry", "--checkpoint", CHECKPOINTS["sd2"],
                              "--size", "64x48", "--steps", "2", "--cfg", "3", "--scheduler", "normal",
                              "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    with Image.open(pngs[0]) as image:
        assert image.size == (64, 48)
    assert read_workflow_file(pngs[0])["nodes"]["3"]["inputs"]["text"] == "blurry"
    assert "trained on 64x64" not in err  # the warning is the embedded model's


def test_sample_warns_when_the_embedded_model_is_asked_for_another_size(
        cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, pngs, err = sample(["--prompt", "a red circle", "--size", "128", "--steps", "1", "--out", str(tmp_path)],
                             capsys)
    assert code == 0, err
    assert "warning: the embedded model was trained on 64x64 images only; at 128x128" in err
    assert "workflows/hires_fix.json" in err
    code, _, err = sample(["--prompt", "a red circle", "--steps", "1", "--out", str(tmp_path)], capsys)
    assert code == 0 and "warning" not in err


def test_sample_reports_bad_arguments(cli_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, pngs, err = sample(["--prompt", "x", "--size", "60", "--out", str(tmp_path)], capsys)
    assert code == 2 and "multiples of 8" in err and not pngs
    code, pngs, err = sample(["--prompt", "x", "--checkpoint", "missing.safetensors", "--out", str(tmp_path)], capsys)
    assert code == 1 and "missing.safetensors" in err and "tiny-shapes.safetensors" in err


def test_parse_size() -> None:
    assert parse_size("512") == (512, 512)
    assert parse_size("768X512") == (768, 512)
    for bad in ("abc", "8", "512x", "1x2x3"):
        with pytest.raises(ValueError):
            parse_size(bad)
