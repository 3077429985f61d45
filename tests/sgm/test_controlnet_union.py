"""Union ControlNet (controlnet-union-sdxl-1.0 / ProMax): parity with diffusers' ControlNetUnionModel on
random weights at reduced width (fp32), for one control type and for "auto", in the released file layout
(diffusers names) and in the cldm layout; the guider runs a typed union ControlNet like any other."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sgm.io.controlnet_files import control_kind, is_union, load_control_file, load_control_model
from sgm.nets.controlnet import ControlLink, resize_hint
from sgm.nets.controlnet_union import UNION_TYPES, TypedUnionControlNet, UnionControlNet, union_type_index
from sgm.sampling.denoisers import DiscreteModelSampling as ModelSampling
from sgm.sampling.guiders import GuidedDenoiser
from sgm.text.conditioning import Condition
from tests.sgm.model_factories import (
    TINY_CONTEXT_DIM,
    TINY_POOLED_DIM,
    randomize_,
    sdxl_vector,
    tiny_diffusers_unet_kwargs,
    tiny_unet,
)

TOLERANCE = 1e-4
HINTS = {"num_head_channels": 16}  # the tiny SDXL UNet's head layout (shapes cannot tell)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


def reference_union(num_types: int = 8, seed: int = 3) -> torch.nn.Module:
    """diffusers' ControlNetUnionModel shaped like the tiny SDXL UNet (the token transformer 32 wide,
    8 heads; the hint encoder 16/32/96/256 as in the released models), random weights."""
    diffusers = pytest.importorskip("diffusers")
    kwargs = {k: v for k, v in tiny_diffusers_unet_kwargs("sdxl").items() if k not in ("sample_size", "up_block_types")}
    torch.manual_seed(seed)
    model = diffusers.ControlNetUnionModel(**kwargs, conditioning_embedding_out_channels=(16, 32, 96, 256),
                                           num_control_type=num_types, num_trans_channel=32, num_trans_head=8,
                                           num_trans_layer=1, num_proj_channel=32)
    return randomize_(model, seed, std=0.1).eval()


def inputs(batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pooled = torch.randn(batch, TINY_POOLED_DIM, generator=generator)
    time_ids = torch.tensor([[1024.0, 768, 16, 8, 1024, 1024]]).repeat(batch, 1)
    return {
        "x": torch.randn(batch, 4, 16, 16, generator=generator),  # (B, 4, h, w)
        "t": torch.tensor([481.5] * batch),
        "context": torch.randn(batch, 7, TINY_CONTEXT_DIM, generator=generator),
        "hint": torch.rand(batch, 3, 128, 128, generator=generator),  # (B, 3, 8h, 8w) in [0, 1]
        "pooled": pooled,
        "time_ids": time_ids,
        "y": sdxl_vector(pooled, time_ids),
    }


def reference_residuals(reference: torch.nn.Module, data: dict[str, torch.Tensor], type_vector: torch.Tensor,
                        index: int, rows: slice = slice(None)) -> list[torch.Tensor]:
    """diffusers' residuals (down..., mid) for one hint of type ``index`` (``type_vector``: (B, T) 0/1)."""
    with torch.no_grad():
        down, mid = reference(
            data["x"][rows], data["t"][rows], data["context"][rows], controlnet_cond=[data["hint"][rows]],
            control_type=type_vector, control_type_idx=[index], conditioning_scale=1.0, return_dict=False,
            added_cond_kwargs={"text_embeds": data["pooled"][rows], "time_ids": data["time_ids"][rows]})
    return [*down, mid]


def our_residuals(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        residuals = model.residuals(data["x"], data["hint"], data["t"], data["context"], data["y"])
    return [*residuals.skips, residuals.middle]


def assert_close(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert relative_error(a, b) <= TOLERANCE


def test_union_parity_with_diffusers_for_one_type_and_auto(tmp_path: Path) -> None:
    reference = reference_union()
    data = inputs()
    # The released single file (diffusion_pytorch_model_promax.safetensors) holds diffusers' names.
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "union.safetensors")
    assert is_union(reference.state_dict()) and control_kind(reference.state_dict()) == "controlnet-diffusers"
    union = load_control_file(tmp_path / "union.safetensors", hints=HINTS)
    assert isinstance(union, UnionControlNet) and union.num_control_types == 8

    # One control type: canny (index 3).
    canny = union_type_index("canny/lineart/anime_lineart/mlsd")
    assert canny == (3,)
    one_hot = torch.zeros(1, 8)
    one_hot[0, 3] = 1
    expected = reference_residuals(reference, data, one_hot, 3)
    typed = union.with_type(canny)
    assert isinstance(typed, TypedUnionControlNet) and typed.net is union  # shared, not copied
    actual = our_residuals(typed, data)
    assert_close(actual, expected)
    # The type matters: depth gives other residuals (task embedding and type embedding differ).
    depth = our_residuals(union.with_type((UNION_TYPES["depth"],)), data)
    assert relative_error(depth[-1], actual[-1]) > 1e-3

    # "auto": no type. ComfyUI then skips the token transformer (the encoded hint is added as it is) and
    # embeds an all-zero type vector; diffusers computes the same when the token projection is zero.
    projection_off = copy.deepcopy(reference)
    torch.nn.init.zeros_(projection_off.spatial_ch_projs.weight)
    torch.nn.init.zeros_(projection_off.spatial_ch_projs.bias)
    expected_auto = reference_residuals(projection_off, data, torch.zeros(1, 8), 0)
    auto = our_residuals(union, data)  # the loaded model runs as "auto"
    assert_close(auto, expected_auto)
    assert_close(our_residuals(union.with_type(union_type_index("auto")), data), expected_auto)
    assert relative_error(auto[-1], actual[-1]) > 1e-3


def test_union_rows_are_independent_and_layouts_load_alike(tmp_path: Path) -> None:
    """A batch of two: each row equals diffusers' batch of one (diffusers' sequence-first attention mixes
    the rows of a batch; ComfyUI and we attend over each item's condition tokens only)."""
    reference = reference_union()
    data = inputs(batch=2, seed=5)
    union = load_control_model(reference.state_dict(), hints=HINTS)
    typed = union.with_type((UNION_TYPES["openpose"],))
    actual = our_residuals(typed, data)
    for row in range(2):
        one_hot = torch.zeros(1, 8)
        one_hot[0, 0] = 1
        expected = reference_residuals(reference, data, one_hot, 0, slice(row, row + 1))
        assert_close([a[row:row + 1] for a in actual], expected)

    # The cldm layout of the same weights (bare, with the cldm prefix, ComfyUI's in_proj name) loads alike.
    state = union.state_dict()
    assert any(k.startswith("transformer_layes.0.attn.in_proj_weight") for k in state)
    comfy_names = {k.replace(".attn.in_proj_", ".attn.in_proj."): v.contiguous() for k, v in state.items()}
    save_file(comfy_names, tmp_path / "bare.safetensors")
    save_file({f"control_model.{k}": v.contiguous() for k, v in state.items()}, tmp_path / "cldm.safetensors")
    for name in ("bare", "cldm"):
        loaded = load_control_file(tmp_path / f"{name}.safetensors", hints=HINTS)
        assert isinstance(loaded, UnionControlNet)
        assert loaded.state_dict().keys() == state.keys()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_six_type_union_refuses_promax_types() -> None:
    union = load_control_model(reference_union(num_types=6, seed=4).state_dict(), hints={**HINTS, "union_heads": 4})
    assert union.num_control_types == 6 and union.transformer_layes[0].attn.num_heads == 4
    union.with_type((UNION_TYPES["segment"],))  # index 5: known
    with pytest.raises(ValueError, match="'tile'.*ProMax"):
        union.with_type(union_type_index("tile"))
    with pytest.raises(ValueError, match="unknown union ControlNet type 'sketch'"):
        union_type_index("sketch")


def test_guider_runs_a_typed_union_controlnet() -> None:
    reference = reference_union()
    union = load_control_model(reference.state_dict(), hints=HINTS)
    typed = union.with_type((UNION_TYPES["depth"],))
    unet = tiny_unet("sdxl", seed=1)
    data = inputs()
    hint = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(7))
    ms = ModelSampling()
    sigma = torch.full((1,), 4.0)
    condition = Condition(data["context"], y=data["y"], control=ControlLink(typed, hint, strength=0.6))
    with torch.no_grad():
        guided = GuidedDenoiser(unet, ms, [condition])(data["x"], sigma)
        scal, t = ms.scalings(sigma, 4), ms.timestep(sigma)
        x_in = data["x"] * scal.c_in
        residuals = union(x_in, resize_hint(hint, 128, 128, 1), t, data["context"], data["y"], (1,)).scaled(0.6)
        direct = scal.c_skip * data["x"] + scal.c_out * unet(x_in, t, data["context"], data["y"], control=residuals)
        plain = GuidedDenoiser(unet, ms, [Condition(data["context"], y=data["y"])])(data["x"], sigma)
    assert torch.allclose(guided, direct, atol=1e-5)
    assert (guided - plain).abs().max() > 1e-4
