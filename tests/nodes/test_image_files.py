"""SaveImage's file writing: numbered names, never overwriting, atomic, workflow chunks."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.workflow import read_workflow_file
from nodes.images import comfy_prompt, next_number, write_png_atomically

DOCUMENT = {"version": 1, "nodes": {"1": {"type": "LoadCheckpoint", "inputs": {"ckpt_name": "x.safetensors"}},
                                    "2": {"type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": "ünïcode"}},
                                    "3": {"type": "Thing", "inputs": {"values": {"value": [1, 2]}}}}}


def picture(value: int = 10) -> Image.Image:
    return Image.new("RGB", (8, 8), (value, 20, 30))


def test_numbers_continue_after_the_highest_and_never_overwrite(tmp_path: Path) -> None:
    (tmp_path / "img_00007_.png").write_bytes(b"someone else's file")
    (tmp_path / "img_notanumber_.png").write_bytes(b"x")
    assert next_number(tmp_path, "img") == 8
    first = write_png_atomically(tmp_path, "img", picture(), {})
    second = write_png_atomically(tmp_path, "img", picture(), {})
    assert (first.name, second.name) == ("img_00008_.png", "img_00009_.png")
    assert (tmp_path / "img_00007_.png").read_bytes() == b"someone else's file"
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file is gone


def test_concurrent_writers_get_distinct_files(tmp_path: Path) -> None:
    paths: list[Path] = []
    lock = threading.Lock()

    def save(value: int) -> None:
        path = write_png_atomically(tmp_path, "race", picture(value), {})
        with lock:
            paths.append(path)

    threads = [threading.Thread(target=save, args=(v,)) for v in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 8
    colours = {Image.open(p).getpixel((0, 0))[0] for p in paths}
    assert colours == set(range(8))  # every writer's picture survived


def test_workflow_and_prompt_chunks_round_trip(tmp_path: Path) -> None:
    text = {"workflow": json.dumps(DOCUMENT), "prompt": json.dumps(comfy_prompt(DOCUMENT))}
    path = write_png_atomically(tmp_path, "wf", picture(), text)
    assert read_workflow_file(path) == DOCUMENT
    with Image.open(path) as image:
        prompt = json.loads(image.text["prompt"])
    assert prompt["2"] == {"class_type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": "ünïcode"}}
    assert prompt["3"]["inputs"]["values"] == [1, 2]


def test_to_png_images_maps_unit_floats_to_bytes() -> None:
    from nodes.images import to_png_images

    image = torch.tensor([[[[0.0, 0.5, 1.0]]]])  # (1, 1, 1, 3)
    (png,) = to_png_images(image)
    assert png.getpixel((0, 0)) == (0, 128, 255)


@pytest.mark.parametrize("prefix", ["../escape", "/abs/path"])
def test_save_refuses_prefixes_outside_the_output_folder(tmp_path: Path, prefix: str) -> None:
    from nodes.images import save_images

    with pytest.raises(ValueError, match="inside"):
        save_images(torch.zeros(1, 8, 8, 3), tmp_path, prefix, "output", None, "SaveImage")
