"""ComfyUI's SaveImageWebsocket, SaveAnimatedWEBP, SaveAnimatedPNG and LoadImageOutput
(nodes.comfy.save_extra): decoded files checked frame by frame against the batch."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from engine.api import NodeContext, Progress
from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 5, "height": 3}},
          "2": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["1", 0]}}}
WORKFLOW = {"nodes": [{"id": 1, "type": "EmptyImage"}], "links": []}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.for_root(tmp_path)


@pytest.fixture
def found(settings: Settings) -> dict[str, Any]:
    return {spec.id: spec.function for spec in build_nodes(Runtime(settings, device="cpu"))}


def context(settings: Settings, progress: list[Progress] | None = None) -> NodeContext:
    services = {"settings": settings, "output_dir": settings.output_dir, "prompt": PROMPT,
                "extra_pnginfo": {"workflow": WORKFLOW}}
    return NodeContext("9", threading.Event(), lambda _, p: progress.append(p) if progress is not None else None,
                       services)


def batch(frames: int = 3, height: int = 3, width: int = 5, seed: int = 0) -> torch.Tensor:
    """Distinct 8-bit frames (B, H, W, 3) in [0, 1], so every frame survives encoding."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, height, width, 3), generator=generator).float() / 255


def decoded(path: Path) -> tuple[list[np.ndarray], list[int], Image.Image]:
    image = Image.open(path)
    frames, durations = [], []
    for frame in ImageSequence.Iterator(image):
        frames.append(np.asarray(frame.convert("RGB")))
        durations.append(frame.info.get("duration"))
    return frames, durations, image


def as_bytes(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().to(torch.uint8).numpy()


def test_animated_webp_lossless_has_every_frame_duration_and_workflow(found, settings) -> None:
    images = batch()
    result = found["SaveAnimatedWEBP"](images=images, filename_prefix="anim/clip", fps=8.0, lossless=True,
                                       quality=80, method="fastest", ctx=context(settings))
    assert result.ui["animated"] == [True]
    [entry] = result.ui["images"]
    assert (entry["filename"], entry["subfolder"], entry["type"]) == ("clip_00001_.webp", "anim", "output")
    path = settings.output_dir / "anim" / "clip_00001_.webp"
    frames, durations, image = decoded(path)
    assert image.format == "WEBP" and image.size == (5, 3) and len(frames) == 3
    assert durations == [125, 125, 125]  # 1000 / 8 ms
    assert all(np.array_equal(f, e) for f, e in zip(frames, as_bytes(images)))  # lossless: exact pixels
    exif = image.getexif()
    assert exif[0x0110] == "prompt:" + json.dumps(PROMPT)
    assert exif[0x010F] == "workflow:" + json.dumps(WORKFLOW)
    again = found["SaveAnimatedWEBP"](images=images, filename_prefix="anim/clip", fps=8.0, lossless=True,
                                      quality=80, method="fastest", ctx=context(settings))
    assert again.ui["images"][0]["filename"] == "clip_00002_.webp"  # never overwrites


def test_animated_webp_lossy_quality_changes_size_and_stays_close(found, settings) -> None:
    images = torch.linspace(0, 1, 32).view(1, 1, 32, 1).expand(2, 32, 32, 3).clone()
    images[1] = 1 - images[1]
    sizes = []
    for quality in (5, 95):
        result = found["SaveAnimatedWEBP"](images=images, filename_prefix=f"q{quality}", fps=3.0, lossless=False,
                                           quality=quality, method="slowest", ctx=None)
        path = settings.output_dir / result.ui["images"][0]["filename"]
        frames, durations, _ = decoded(path)
        assert len(frames) == 2 and durations == [333, 333]  # int(1000 / 3)
        error = np.abs(frames[1].astype(int) - as_bytes(images)[1].astype(int)).mean()
        assert error < 12, (quality, error)
        sizes.append(path.stat().st_size)
    assert sizes[0] < sizes[1]


def test_animated_png_frames_duration_compression_and_text(found, settings) -> None:
    images = batch(frames=4, height=6, width=7, seed=1)
    paths = []
    for level in (0, 9):
        result = found["SaveAnimatedPNG"](images=images, filename_prefix="apng", fps=25.0, compress_level=level,
                                          ctx=context(settings))
        assert result.ui["animated"] == [True] and result.ui["images"][0]["type"] == "output"
        paths.append(settings.output_dir / result.ui["images"][0]["filename"])
    assert [p.name for p in paths] == ["apng_00001_.png", "apng_00002_.png"]
    frames, durations, image = decoded(paths[0])
    assert image.format == "PNG" and image.size == (7, 6) and image.n_frames == 4 and len(frames) == 4
    assert durations == [40, 40, 40, 40]
    assert all(np.array_equal(f, e) for f, e in zip(frames, as_bytes(images)))
    assert json.loads(image.info["prompt"]) == PROMPT and json.loads(image.info["workflow"]) == WORKFLOW
    assert np.array_equal(decoded(paths[1])[0][3], as_bytes(images)[3])
    flat = torch.full((2, 32, 32, 3), 0.5)
    flat[1] = 0.25
    sizes = [settings.output_dir.joinpath(found["SaveAnimatedPNG"](
        images=flat, filename_prefix=f"flat{level}", fps=6.0, compress_level=level, ctx=None).ui["images"][0]
        ["filename"]).stat().st_size for level in (0, 9)]
    assert sizes[1] < sizes[0] / 4  # level 9 compresses flat frames, 0 stores them


def test_one_frame_is_not_animated(found, settings) -> None:
    result = found["SaveAnimatedPNG"](images=batch(frames=1), filename_prefix="still", fps=6.0, compress_level=4,
                                      ctx=None)
    assert result.ui["animated"] == [False]
    assert Image.open(settings.output_dir / "still_00001_.png").size == (5, 3)


def test_animation_prefix_may_not_leave_the_output_folder(found) -> None:
    with pytest.raises(ValueError, match=r"SaveAnimatedWEBP: filename_prefix '../x' must name a file inside"):
        found["SaveAnimatedWEBP"](images=batch(), filename_prefix="../x", fps=6.0, lossless=True, quality=80,
                                  method="default", ctx=None)


def test_save_image_websocket_sends_png_previews_and_writes_nothing(found, settings) -> None:
    images = batch(frames=2, seed=3)
    sent: list[Progress] = []
    assert found["SaveImageWebsocket"](images=images, ctx=context(settings, sent)) is None
    assert [(p.value, p.max) for p in sent] == [(1, 2), (2, 2)]
    for progress, expected in zip(sent, as_bytes(images)):
        assert progress.preview.startswith(b"\x89PNG")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(progress.preview)).convert("RGB")), expected)
    assert not settings.output_dir.exists() or not any(settings.output_dir.rglob("*"))


def test_load_image_output_lists_annotated_names_and_loads_them(settings) -> None:
    specs = {spec.id: spec for spec in build_nodes(Runtime(settings, device="cpu"))}
    (settings.output_dir / "sub").mkdir(parents=True)
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[1, 2, 3] = 0  # one transparent pixel: mask 1 there
    Image.fromarray(rgba, "RGBA").save(settings.output_dir / "sub" / "a.png")
    Image.new("RGB", (4, 4), (0, 0, 255)).save(settings.output_dir / "b.png")
    (settings.output_dir / "notes.txt").write_text("not an image")
    spec = specs["LoadImageOutput"]
    widget = spec.input("image").widget
    assert widget.options() == ["b.png [output]", "sub/a.png [output]"]
    options = widget.spec_options()
    assert options["image_folder"] == "output" and options["remote"]["route"] == "/internal/files/output"
    image, mask = spec.function(image="sub/a.png [output]")
    assert image.shape == (1, 2, 3, 3) and torch.allclose(image[0, 0, 0], torch.tensor([200 / 255, 0, 0]))
    assert mask.shape == (1, 2, 3) and mask.sum() == 1 and mask[0, 1, 2] == 1
    image, mask = spec.function(image="b.png")  # a plain name is read from output/ too
    assert image[0, 0, 0].tolist() == [0.0, 0.0, 1.0] and not mask.any()
    first = spec.fingerprint(image="b.png [output]")
    assert first is not None and first[0] == str(settings.output_dir / "b.png")
    with pytest.raises(FileNotFoundError, match=r"LoadImageOutput: image 'gone.png \[output\]' is not in"):
        spec.function(image="gone.png [output]")
    with pytest.raises(FileNotFoundError, match="is not in"):
        spec.function(image="../input/x.png [output]")
