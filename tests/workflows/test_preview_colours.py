"""Live previews of the embedded model show the colours it is drawing (its latent space is its
own: SD's latent-to-RGB factors turned a red circle on blue into a green blob)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgm.data import shapes
from sgm.sampling.latent_preview import latent_to_rgb
from tests.workflows.model_files import EMBEDDED

pytestmark = pytest.mark.skipif(not EMBEDDED.is_file(), reason="the embedded model is not in models/checkpoints/")


def test_preview_of_a_red_circle_on_blue_is_red_on_blue() -> None:
    from sgm.io.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(EMBEDDED, load_text=False, dtype=torch.float32)
    spec = shapes.ShapeSpec(colour="red", shape="circle", size="large", position="center", background="blue")
    image = shapes.render(spec, 64, np.random.default_rng(0))  # (64, 64, 3) uint8
    pixels = torch.tensor(image).float().permute(2, 0, 1)[None] / 127.5 - 1  # (1, 3, 64, 64)
    with torch.no_grad():
        latent = checkpoint.vae.encode(pixels) * checkpoint.scale_factor  # (1, 4, 16, 16), diffusion space
    truth = torch.nn.functional.avg_pool2d(torch.tensor(image).float().permute(2, 0, 1), 4).permute(1, 2, 0)
    ours = torch.tensor(latent_to_rgb(latent, checkpoint.family).numpy()).float()  # (16, 16, 3)
    sd = torch.tensor(latent_to_rgb(latent, "sd1").numpy()).float()
    # the circle's centre is red (not SD's green), the corner blue, and the whole closer than SD's
    centre, corner = ours[8, 8], ours[1, 1]
    assert centre[0] > 150 and centre[0] > centre[1] + 40 and centre[0] > centre[2] + 40, centre
    assert corner[2] > corner[0] + 30 and corner[2] > corner[1] + 30, corner
    assert (ours - truth).abs().mean() < 0.6 * (sd - truth).abs().mean()
