"""Data: the shapes renderer and captions, image folders, augmentation, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sgm.data import ImageFolderDataset, Preprocess, ShapesDataset, flip_caption, make_loader
from sgm.data import shapes
from sgm.data.transforms import CropMode


def test_caption_names_every_attribute() -> None:
    spec = shapes.ShapeSpec("yellow", "star", "large", "center", "purple")
    assert spec.caption() == "a large yellow star in the center on a purple background"
    assert shapes.ShapeSpec("red", "circle", "small", "top left", "orange").caption() == (
        "a small red circle at the top left on an orange background"
    )


def test_render_puts_the_shape_where_the_caption_says() -> None:
    spec = shapes.ShapeSpec("red", "square", "large", "bottom right", "blue")
    image = shapes.render(spec)  # (64, 64, 3), no jitter
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == shapes.COLOURS["blue"]
    assert tuple(image[50, 50]) == shapes.COLOURS["red"]  # the grid centre of "bottom right"
    red = np.all(image == shapes.COLOURS["red"], axis=-1)
    ys, xs = np.nonzero(red)
    assert xs.min() > 32 and ys.min() > 32  # nothing in the other quadrants
    assert 24 <= xs.max() - xs.min() + 1 <= 27  # a large square is ~26 pixels wide


def test_held_out_combinations_never_appear_in_training() -> None:
    held_out = set(shapes.held_out_combos())
    assert len(held_out) == shapes.HELD_OUT_COUNT
    dataset = ShapesDataset(seed=3)
    captions = {dataset[i]["caption"] for i in range(3000)}
    assert not captions & {spec.caption() for spec in held_out}
    # ... while every single attribute value still does appear.
    text = " ".join(captions)
    for word in [*shapes.COLOURS, *shapes.SHAPES, *shapes.SIZES]:
        assert word in text


def test_shapes_items_are_a_pure_function_of_seed_and_index() -> None:
    a, b, c = ShapesDataset(seed=1), ShapesDataset(seed=1), ShapesDataset(seed=2)
    assert torch.equal(a[17]["image"], b[17]["image"]) and a[17]["caption"] == b[17]["caption"]
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(5))
    item = a[0]["image"]
    assert item.shape == (3, 64, 64) and item.min() >= -1 and item.max() <= 1


def test_loader_resumes_at_an_index_and_workers_do_not_change_batches() -> None:
    dataset = ShapesDataset(seed=5)
    batches = iter(make_loader(dataset, 4))
    first, second = next(batches), next(batches)
    resumed = next(iter(make_loader(dataset, 4, start_index=4, workers=2)))
    assert torch.equal(second["image"], resumed["image"])
    assert second["caption"] == resumed["caption"] and first["caption"] != second["caption"]


def test_flip_caption_swaps_left_and_right_only_as_words() -> None:
    assert flip_caption("a red circle at the top left") == "a red circle at the top right"
    assert flip_caption("Right of the LEFT tree, leftover") == "Left of the RIGHT tree, leftover"


def _write_folder(root, count: int) -> None:
    for index in range(count):
        pixels = np.zeros((40, 60, 3), dtype=np.uint8)
        pixels[:, :30] = (255, 0, 0)  # left half red, right half black
        Image.fromarray(pixels).save(root / f"img{index}.png")
        (root / f"img{index}.txt").write_text(f"photo {index} with red on the left\n")


def test_image_folder_resizes_crops_and_flips_with_the_caption(tmp_path) -> None:
    _write_folder(tmp_path, 3)
    dataset = ImageFolderDataset(tmp_path, Preprocess(size=32, crop=CropMode.CENTER, flip_probability=0.5), seed=0)
    seen = {}
    for index in range(12):
        item = dataset[index]
        assert item["image"].shape == (3, 32, 32)
        left_is_red = bool(item["image"][0, 16, 2] > 0.5)
        # The caption always describes the pixels: flipped images say "right".
        assert ("left" in item["caption"]) == left_is_red
        seen[left_is_red] = True
    assert len(seen) == 2  # both flipped and unflipped items occurred
    # Every epoch visits each file once, in a seeded order.
    assert sorted(dataset.file_index(i) for i in range(3)) == [0, 1, 2]
    assert sorted(dataset.file_index(i) for i in range(3, 6)) == [0, 1, 2]


def test_image_folder_without_captions_is_an_error_naming_the_file(tmp_path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "lonely.png")
    with pytest.raises(FileNotFoundError, match="lonely.png has no caption file lonely.txt"):
        ImageFolderDataset(tmp_path)
    assert ImageFolderDataset(tmp_path, default_caption="a photo")[0]["caption"] == "a photo"
