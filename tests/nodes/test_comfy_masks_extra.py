"""ComfyUI's colour-to-mask, alpha, Porter-Duff and mask preview nodes (nodes.comfy.masks_extra) with
hand-computed values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime


def test_image_color_to_mask_matches_rounded_8_bit_colours(nodes: dict[str, Any]) -> None:
    image = torch.zeros(2, 1, 3, 3)
    image[0, 0, 0] = torch.tensor([1.0, 0.5, 0.0])  # 0.5 x 255 = 127.5 rounds to 128: 0xFF8000
    image[1, 0, 2] = torch.tensor([1.0, 128.4 / 255, 0.0])
    image[1, 0, 1] = torch.tensor([1.0, 127.4 / 255, 0.0])  # 127: another colour
    out = nodes["ImageColorToMask"](image=image, color=0xFF8000)
    assert out.tolist() == [[[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]]
    assert nodes["ImageColorToMask"](image=image, color=0).sum() == 2 + 1


def test_join_and_split_image_with_alpha(nodes: dict[str, Any]) -> None:
    image = torch.full((2, 4, 4, 3), 0.5)
    joined = nodes["JoinImageWithAlpha"](image=image, alpha=torch.full((1, 2, 2), 0.25))  # resized, repeated
    assert joined.shape == (2, 4, 4, 4) and torch.allclose(joined[..., 3], torch.tensor(0.75))
    assert torch.equal(joined[..., :3], image)
    more = nodes["JoinImageWithAlpha"](image=image[:1], alpha=torch.stack([torch.zeros(4, 4), torch.ones(4, 4)]))
    assert more.shape[0] == 2 and more[0, ..., 3].eq(1).all() and more[1, ..., 3].eq(0).all()
    colours, mask = nodes["SplitImageWithAlpha"](image=joined)
    assert torch.equal(colours, image) and torch.allclose(mask, torch.tensor(0.25))
    colours, mask = nodes["SplitImageWithAlpha"](image=image)
    assert mask.shape == (2, 4, 4) and not mask.any()  # no alpha: opaque


@pytest.mark.parametrize(("mode", "colour", "mask"), [
    # source white at alpha 0.5 (mask 0.5) over destination grey 0.4 at alpha 1 (mask 0)
    ("SRC_OVER", 0.5 + 0.5 * 0.4, 0.0),  # Cs + (1 - As) Cd = 0.5 + 0.2; alpha 1
    ("DST_OVER", 0.4, 0.0),  # Cd + (1 - Ad) Cs = 0.4
    ("SRC_IN", 1.0, 0.5),  # Cs Ad = 0.5 at alpha 0.5 -> straight 1
    ("DST_IN", 0.4, 0.5),  # Cd As = 0.2 at alpha 0.5 -> 0.4
    ("DST_OUT", 0.4, 0.5),  # (1 - As) Cd = 0.2 at alpha 0.5
    ("SRC_OUT", 0.0, 1.0),  # (1 - Ad) As = 0: transparent
    ("XOR", 0.4, 0.5),  # (1 - Ad) Cs + (1 - As) Cd = 0.2 at alpha 0.5
    ("SRC_ATOP", 0.7, 0.0), ("DST_ATOP", 0.4, 0.5),
    ("MULTIPLY", 0.4, 0.5),  # Cs Cd = 0.2 at As Ad = 0.5
    ("SCREEN", 0.5 + 0.4 - 0.2, 0.0), ("ADD", 0.9, 0.0), ("CLEAR", 0.0, 1.0),
    ("SRC", 1.0, 0.5), ("DST", 0.4, 0.0),
    ("DARKEN", 0.6, 0.0),  # (1 - Ad) Cs + (1 - As) Cd + min(Cs, Cd) = 0 + 0.2 + 0.4
    ("LIGHTEN", 0.7, 0.0),  # 0.2 + max(0.5, 0.4) = 0.7
])
def test_porter_duff_modes(nodes: dict[str, Any], mode: str, colour: float, mask: float) -> None:
    source, source_alpha = torch.ones(1, 2, 2, 3), torch.full((1, 2, 2), 0.5)
    destination, destination_alpha = torch.full((1, 2, 2, 3), 0.4), torch.zeros(1, 2, 2)
    image, alpha = nodes["PorterDuffImageComposite"](source=source, source_alpha=source_alpha,
                                                     destination=destination, destination_alpha=destination_alpha,
                                                     mode=mode)
    assert image.shape == (1, 2, 2, 3) and alpha.shape == (1, 2, 2)
    assert torch.allclose(image, torch.tensor(colour), atol=1e-6), mode
    assert torch.allclose(alpha, torch.tensor(mask), atol=1e-6), mode


def test_porter_duff_fits_sizes_and_batches(nodes: dict[str, Any]) -> None:
    image, alpha = nodes["PorterDuffImageComposite"](
        source=torch.ones(3, 2, 2, 3), source_alpha=torch.zeros(1, 2, 2),  # opaque white, resized to 4 x 4
        destination=torch.zeros(2, 4, 4, 3), destination_alpha=torch.zeros(2, 8, 8), mode="SRC_OVER")
    assert image.shape == (1, 4, 4, 3) and alpha.shape == (1, 4, 4)  # the smallest batch: 1
    assert torch.allclose(image, torch.tensor(1.0)) and torch.allclose(alpha, torch.tensor(0.0))
    with pytest.raises(ValueError, match="PorterDuffImageComposite: source has 4 channels, destination 3"):
        nodes["PorterDuffImageComposite"](source=torch.ones(1, 2, 2, 4), source_alpha=torch.zeros(1, 2, 2),
                                          destination=torch.ones(1, 2, 2, 3), destination_alpha=torch.zeros(1, 2, 2),
                                          mode="SRC")


def test_mask_preview_writes_a_grey_preview(tmp_path: Path) -> None:
    from PIL import Image

    settings = Settings.for_root(tmp_path)
    found = {spec.id: spec.function for spec in build_nodes(Runtime(settings, device="cpu"))}
    mask = torch.zeros(2, 3, 4)
    mask[1, 0, 0] = 1.0
    result = found["MaskPreview"](mask=mask)
    entries = result.ui["images"]
    assert [e["type"] for e in entries] == ["temp", "temp"]
    second = Image.open(entries[1]["path"])
    assert second.size == (4, 3) and second.getpixel((0, 0)) == (255, 255, 255)
    assert second.getpixel((1, 0)) == (0, 0, 0)
    assert Path(entries[0]["path"]).parent == Path(settings.root) / "temp"
