"""The shipped demos teach what their node does, measured on the embedded model with the shapes
analyser: img2img keeps the input picture's layout and changes what the prompt changes (the
colour), and a larger denoise moves the result further from the input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sgm.training.shapes_eval import analyse
from tests.workflows.model_files import EMBEDDED

ROOT = Path(__file__).resolve().parents[2]
INPUT = ROOT / "input" / "example.png"

pytestmark = pytest.mark.skipif(not EMBEDDED.is_file(), reason="the embedded model is not in models/checkpoints/")


def run_img2img(tmp_path: Path, denoise: float, capsys: pytest.CaptureFixture[str]) -> np.ndarray:
    import main
    from PIL import Image

    out = tmp_path / f"denoise-{denoise}"
    code = main.main(["run", str(ROOT / "workflows" / "img2img.json"), "--set", f"5.denoise={denoise}",
                      "--output-dir", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    (png,) = out.glob("*.png")
    return np.asarray(Image.open(png).convert("RGB"))


def test_img2img_keeps_the_input_layout_and_changes_the_prompted_colour(tmp_path, capsys) -> None:
    from PIL import Image

    document = json.loads((ROOT / "workflows" / "img2img.json").read_text())
    assert document["nodes"]["4"]["inputs"]["image"] == INPUT.name
    prompt = document["nodes"]["2"]["inputs"]["text"]
    source = np.asarray(Image.open(INPUT).convert("RGB"))
    given = analyse(source)
    assert given.colour != "red" and "red" in prompt  # the prompt changes one attribute: the colour

    shipped = document["nodes"]["5"]["inputs"]["denoise"]
    result = analyse(run_img2img(tmp_path, shipped, capsys))
    expected = replace(given, colour="red")
    for name in ("background", "colour", "shape", "size", "position"):
        assert getattr(result, name) == getattr(expected, name), (name, result, given)
    # the square stays where the input has it (within 3 px on each side)
    assert np.abs(np.subtract(result.box, given.box)).max() < 3, (result.box, given.box)


def test_more_denoise_moves_further_from_the_input(tmp_path, capsys) -> None:
    from PIL import Image

    source = np.asarray(Image.open(INPUT).convert("RGB")).astype(float)
    low, high = (np.abs(run_img2img(tmp_path, d, capsys).astype(float) - source).mean() for d in (0.2, 1.0))
    assert high > low + 2, (low, high)
