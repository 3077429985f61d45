"""Pixel operations (``sgm.data.image_ops``): each checked on an image whose answer is known."""

from __future__ import annotations

import pytest
import torch

from sgm.data.image_ops import (blur, canny, feather_mask, grow_mask, inpaint_pixels_and_mask, latent_composite,
                                mask_bounds, mask_composite, pad_for_outpaint, sharpen)


def square(size: int = 32, lo: int = 8, hi: int = 24, value: float = 1.0) -> torch.Tensor:
    image = torch.zeros(1, size, size, 3)
    image[:, lo:hi, lo:hi] = value
    return image


def test_canny_finds_the_outline_of_a_square_one_pixel_thick() -> None:
    edges = canny(square(), 0.1, 0.2)
    assert edges.shape == (1, 32, 32) and set(edges.unique().tolist()) == {0.0, 1.0}
    assert edges[0, 12:20, 12:20].sum() == 0 and edges[0, :4].sum() == 0  # inside and far outside: nothing
    for row in (12, 16, 20):  # each row through the square crosses its left and right sides once
        cols = torch.nonzero(edges[0, row]).flatten().tolist()
        assert len(cols) == 2 and cols[0] in (7, 8) and cols[1] in (23, 24), cols
    for col in (12, 16, 20):
        rows = torch.nonzero(edges[0, :, col]).flatten().tolist()
        assert len(rows) == 2 and rows[0] in (7, 8) and rows[1] in (23, 24), rows


def test_canny_thresholds_and_hysteresis() -> None:
    faint = square(value=0.2)  # a step of 0.2: its gradient peaks at about 0.2 * 0.44 (blur, Sobel / 8)
    assert canny(faint, 0.2, 0.4).sum() == 0  # below the low threshold: no edges
    assert canny(faint, 0.01, 0.02).sum() > 0
    # A straight vertical edge whose contrast fades from 1 (top) to 0.2 (bottom): strong at the top only;
    # hysteresis follows it down while it stays above the low threshold. Alone, a weak edge is dropped.
    image = torch.zeros(1, 32, 32, 3)
    image[:, :, 16:] = torch.linspace(1.0, 0.2, 32)[None, :, None, None]
    strong_only, linked = canny(image, 0.2, 0.2)[0], canny(image, 0.05, 0.2)[0]
    assert strong_only[:4].sum() == 4 and strong_only[20:].sum() == 0
    assert linked.sum(dim=1).tolist() == [1.0] * 32 and torch.nonzero(linked)[:, 1].unique().tolist() == [16]
    assert canny(image * 0.2, 0.05, 0.2).sum() == 0


def test_blur_keeps_flat_images_and_spreads_a_point_symmetrically() -> None:
    flat = torch.full((1, 8, 8, 3), 0.25)
    assert torch.allclose(blur(flat, 2, 1.0), flat)
    point = torch.zeros(1, 9, 9, 1)
    point[0, 4, 4] = 1.0
    out = blur(point, 1, 1.0)[0, :, :, 0]
    assert out.sum() == pytest.approx(1.0) and out[4, 4] > out[4, 5] > out[3, 3] > 0
    assert out[4, 3] == pytest.approx(float(out[4, 5])) and out[3, 4] == pytest.approx(float(out[5, 4]))
    assert out[4, 6] == 0  # radius 1: a 3x3 kernel


def test_sharpen_keeps_flat_images_and_raises_contrast_at_an_edge() -> None:
    flat = torch.full((1, 8, 8, 3), 0.4)
    assert torch.allclose(sharpen(flat, 1, 1.0, 1.0), flat, atol=1e-6)
    step = torch.zeros(1, 8, 8, 1)
    step[:, 4:] = 0.5  # rows 4.. bright
    out = sharpen(step, 1, 1.0, 0.1)[0, :, 0, 0]
    assert out[4] > 0.6 and out[5] == pytest.approx(0.5) and out[3] == 0  # overshoot; the undershoot is clamped


def test_grow_mask_dilates_with_a_plus_or_a_square_and_erodes_back() -> None:
    mask = torch.zeros(1, 7, 7)
    mask[0, 3, 3] = 1.0
    plus = grow_mask(mask, 1, tapered_corners=True)
    assert plus.sum() == 5 and plus[0, 2, 2] == 0 and plus[0, 2, 3] == 1
    box = grow_mask(mask, 1, tapered_corners=False)
    assert box.sum() == 9 and box[0, 2, 2] == 1
    assert grow_mask(mask, 2, tapered_corners=True).sum() == 13  # a diamond of radius 2
    assert torch.equal(grow_mask(box, -1, tapered_corners=False), mask)
    assert mask.sum() == 1


def test_feather_mask_ramps_each_side() -> None:
    out = feather_mask(torch.ones(1, 4, 8), left=4, top=0, right=2, bottom=1)
    assert out[0, 0, :4].tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert out[0, 0, 6:].tolist() == pytest.approx([1.0, 0.5])
    assert out[0, 3, 3] == pytest.approx(1.0) and out[0, 3, 0] == pytest.approx(0.25)  # bottom=1: last row x 1


def test_mask_composite_operations_are_clipped_and_clamped() -> None:
    dst = torch.full((1, 4, 4), 0.5)
    src = torch.ones(1, 3, 3)
    added = mask_composite(dst, src, 2, 2, "add")
    assert added[0, 2:, 2:].eq(1.0).all() and added[0, :2].eq(0.5).all() and added[0, 2:, :2].eq(0.5).all()
    assert mask_composite(dst, src, 1, 1, "subtract")[0, 1:, 1:].eq(0.0).all()
    assert mask_composite(dst, src * 0.5, 0, 0, "multiply")[0, 0, 0] == pytest.approx(0.25)
    # and / or / xor round first: 0.5 rounds to 0 (round half to even)
    assert mask_composite(dst, src, 0, 0, "xor")[0, 0, 0] == 1.0 and mask_composite(dst, src, 0, 0, "and")[0, 0, 0] == 0
    assert mask_composite(dst, src, 9, 9, "add").eq(0.5).all()  # entirely outside: unchanged


def test_mask_bounds() -> None:
    mask = torch.zeros(2, 10, 12)
    mask[0, 2, 3] = 1.0
    mask[1, 6, 9] = 0.5
    assert mask_bounds(mask) == (3, 2, 7, 5)
    assert mask_bounds(torch.zeros(1, 4, 4)) is None


def test_pad_for_outpaint_pads_grey_and_feathers_the_seam() -> None:
    image = torch.rand(1, 10, 12, 3, generator=torch.Generator().manual_seed(0))
    out, mask = pad_for_outpaint(image, left=8, top=0, right=0, bottom=4, feathering=3)
    assert out.shape == (1, 14, 20, 3) and torch.equal(out[:, :10, 8:], image)
    assert out[0, 12, 0].tolist() == [0.5, 0.5, 0.5]
    assert mask.shape == (1, 14, 20) and mask[0, :, :8].eq(1).all() and mask[0, 10:].eq(1).all()
    # inside: distance to the left side (padded) or the bottom (padded); top and right are not padded
    assert mask[0, 0, 8:11].tolist() == pytest.approx([1.0, (2 / 3) ** 2, (1 / 3) ** 2])
    assert mask[0, 9, 15] == pytest.approx((2 / 3) ** 2)  # 1 pixel from the bottom (distance 10 - 9)
    assert mask[0, 4, 15] == 0
    _, plain = pad_for_outpaint(image, 0, 0, 8, 0, feathering=6)  # 2 x 6 >= 10: no feathering
    assert plain[0, :, :12].eq(0).all()


def test_latent_composite_pastes_and_feathers() -> None:
    dst, src = torch.zeros(1, 1, 6, 6), torch.ones(1, 1, 4, 4)
    out = latent_composite(dst, src, 4, 2)
    assert out[0, 0, 2:, 4:].eq(1).all() and out.sum() == 8 and dst.sum() == 0  # clipped at the edge
    feathered = latent_composite(dst, src, 1, 1, feather=2)[0, 0]
    # every side is inside: rows and columns ramp 0.5, 1, 1, 0.5
    assert feathered[1, 1] == pytest.approx(0.25) and feathered[2, 2] == 1 and feathered[1, 2] == pytest.approx(0.5)
    assert feathered[4, 4] == pytest.approx(0.25) and feathered[0].sum() == 0
    corner = latent_composite(dst, src, 0, 0, feather=2)[0, 0]  # top and left sides are the destination's own
    assert corner[0, 0] == 1 and corner[3, 3] == pytest.approx(0.25)


def test_inpaint_pixels_are_grey_where_masked_and_the_mask_grows() -> None:
    pixels = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 16, 16)
    mask[0, 8, 8] = 0.9
    blanked, grown = inpaint_pixels_and_mask(pixels, mask, grow_by=3)
    assert blanked[0, 8, 8].tolist() == [0.5, 0.5, 0.5] and torch.equal(blanked[0, 7, 7], pixels[0, 7, 7])
    assert grown.sum() == 9 and grown[0, 7:10, 7:10].eq(1).all()
    _, same = inpaint_pixels_and_mask(pixels, mask, grow_by=0)
    assert same.sum() == 1
    _, even = inpaint_pixels_and_mask(pixels, mask, grow_by=6)  # an even box reaches one pixel further down-right
    assert even.shape == (1, 16, 16) and even.sum() == 36 and even[0, 6, 6] == 1 and even[0, 11, 11] == 1
    assert even[0, 5, 5] == 0
