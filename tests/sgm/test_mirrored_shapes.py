"""The ``shapes-mirrored`` dataset (the shipped LoRA's training data): every image is the plain
shapes image flipped left-right, and its caption still names the original side."""

from __future__ import annotations

import numpy as np

from sgm.data import ShapesDataset, build_dataset
from sgm.training.shapes_eval import analyse


def test_mirrored_items_are_the_plain_items_flipped_with_the_same_caption() -> None:
    plain, mirrored = build_dataset("shapes", 64, seed=4), build_dataset("shapes-mirrored", 64, seed=4)
    assert isinstance(mirrored, ShapesDataset) and mirrored.mirrored and not plain.mirrored
    for index in range(6):
        a, b = plain[index], mirrored[index]
        assert a["caption"] == b["caption"]
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"])[..., ::-1])


def test_a_mirrored_image_shows_the_shape_on_the_other_side_of_its_caption() -> None:
    dataset = ShapesDataset(seed=9, mirrored=True)
    checked = 0
    for index in range(40):
        spec, _ = dataset.spec(index)
        if "left" not in spec.position:
            continue
        image = np.asarray(dataset[index]["image"])  # (3, H, W) in [-1, 1]
        pixels = ((np.transpose(image, (1, 2, 0)) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        reading = analyse(pixels)
        assert reading.position == spec.position.replace("left", "right"), (spec.caption(), reading)
        checked += 1
    assert checked >= 5
