"""Shuffle ControlNets (control_v11e_sd15_shuffle): recognised by file name as ComfyUI does, their
residuals averaged over the feature map, in the model and through the guider."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sgm.io.controlnet_files import load_control_file, wants_global_average_pooling
from sgm.io.state_dict import CheckpointError
from sgm.nets.controlnet import ControlLink, global_average_pool, resize_hint
from sgm.sampling.denoisers import DiscreteModelSampling as ModelSampling
from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet
from tests.sgm.test_controlnet import denoise, tiny_controlnet


@pytest.mark.parametrize(("name", "pooled"), [
    ("control_v11e_sd15_shuffle.pth", True), ("control_v11e_sd15_shuffle_fp16.safetensors", True),
    ("sd15/control_v11e_sd15_shuffle.safetensors", True), ("shuffle_sd15.pth", False),
    ("control_v11e_sd15_shuffle_v2.pth", False), ("control_v11p_sd15_canny.pth", False),
])
def test_shuffle_is_recognised_by_name(name: str, pooled: bool) -> None:
    assert wants_global_average_pooling(name) is pooled


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 16, 16, generator=g), torch.rand(2, 3, 128, 128, generator=g),
            torch.tensor([500.0, 500.0]), torch.randn(2, 7, TINY_CONTEXT_DIM, generator=g))


def test_loaded_shuffle_model_pools_its_residuals(tmp_path: Path) -> None:
    state = tiny_controlnet(2).state_dict()
    for name in ("control_v11e_sd15_shuffle.safetensors", "control_v11p_sd15_canny.safetensors"):
        save_file(state, str(tmp_path / name))
    shuffle = load_control_file(tmp_path / "control_v11e_sd15_shuffle.safetensors")
    plain = load_control_file(tmp_path / "control_v11p_sd15_canny.safetensors")
    assert shuffle.global_average_pooling and not plain.global_average_pooling
    assert not load_control_file(tmp_path / "control_v11e_sd15_shuffle.safetensors",
                                 global_average_pooling=False).global_average_pooling
    x, hint, t, context = inputs()
    with torch.no_grad():
        raw = plain.residuals(x, hint, t, context, None)
        pooled = shuffle.residuals(x, hint, t, context, None)
    assert len(pooled.skips) == len(raw.skips) > 2
    for got, full in zip((*pooled.skips, pooled.middle), (*raw.skips, raw.middle)):
        assert got.shape == full.shape
        # Each channel holds the mean of the unpooled map, everywhere.
        expected = full.mean(dim=(2, 3))[:, :, None, None].expand_as(full)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert full.std(dim=(2, 3)).max() > 1e-4  # the plain map is not constant: pooling did something


def test_explicit_pooling_of_a_non_controlnet_is_refused(tmp_path: Path) -> None:
    from sgm.nets.t2i_adapter import T2IAdapter

    torch.manual_seed(0)
    adapter = T2IAdapter(hint_channels=3, channels=(32, 64, 64, 64), num_res_blocks=2)
    save_file(adapter.state_dict(), str(tmp_path / "t2iadapter_shuffle.safetensors"))
    loaded = load_control_file(tmp_path / "t2iadapter_shuffle.safetensors")  # by name: adapters are not pooled
    assert not getattr(loaded, "global_average_pooling", False)
    with pytest.raises(CheckpointError, match="applies to plain ControlNets, this file is a T2IAdapter"):
        load_control_file(tmp_path / "t2iadapter_shuffle.safetensors", global_average_pooling=True)


def test_guider_adds_the_pooled_residuals() -> None:
    unet = tiny_unet("sd1", seed=1)
    model = tiny_controlnet(3)
    model.global_average_pooling = True
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(6)) * 5
    sigma = torch.full((2,), 5.0)
    ms = ModelSampling()
    on, _ = denoise(unet, ControlLink(model, hint, strength=0.7), x, sigma)
    scal = ms.scalings(sigma, 4)
    x_in, t = x * scal.c_in, ms.timestep(sigma)
    context = torch.randn(1, 7, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(9)).expand(2, -1, -1)
    with torch.no_grad():
        raw = model(x_in, resize_hint(hint, 128, 128, 2), t, context)
        pooled = scal.c_skip * x + scal.c_out * unet(x_in, t, context, control=global_average_pool(raw).scaled(0.7))
        unpooled = scal.c_skip * x + scal.c_out * unet(x_in, t, context, control=raw.scaled(0.7))
    torch.testing.assert_close(on, pooled, rtol=1e-5, atol=1e-5)
    assert (on - unpooled).abs().max() > 1e-3
