"""workflows/outpaint.json on the embedded model: the padded border is painted as a continuation
of the picture (its background colour) while the original centre is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import main

ROOT = Path(__file__).resolve().parents[2]


def test_outpainting_continues_the_background_and_keeps_the_centre(tmp_path: Path) -> None:
    assert main.main(["run", str(ROOT / "workflows" / "outpaint.json"), "--output-dir", str(tmp_path)]) == 0
    (png,) = sorted(tmp_path.glob("outpaint_*.png"))
    out = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    source = np.asarray(Image.open(ROOT / "input" / "example.png").convert("RGB"), dtype=np.float32)
    assert out.shape == (64, 64, 3)
    background = np.median(source[:4].reshape(-1, 3), axis=0)  # the source's blue
    border = np.concatenate([out[:6].reshape(-1, 3), out[-6:].reshape(-1, 3),
                             out[:, :6].reshape(-1, 3), out[:, -6:].reshape(-1, 3)])
    assert np.linalg.norm(np.median(border, axis=0) - background) < 30  # painted as more of the background
    centre = np.median(out[26:38, 26:38].reshape(-1, 3), axis=0)
    source_centre = np.median(source[26:38, 26:38].reshape(-1, 3), axis=0)
    assert centre.argmax() == source_centre.argmax() == 1  # the square is still there (green, through the VAE)
    assert np.linalg.norm(centre - background) > 100
