"""ControlNet and T2I-Adapter: parity with diffusers on random weights at reduced width (fp32),
both file layouts, and the guider's control chain (strength, start/end window, stacking)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sgm.io.checkpoints import infer_unet_config
from sgm.io.controlnet_files import control_kind, load_control_file, load_control_model
from sgm.io.convert import unet_diffusers_to_original
from sgm.nets.controlnet import ControlLink, ControlNet, resize_hint
from sgm.nets.t2i_adapter import LightT2IAdapter, T2IAdapter
from sgm.nets.unet import ControlResiduals, UNetModel
from sgm.sampling.denoisers import DiscreteModelSampling as ModelSampling
from sgm.sampling.guiders import GuidedDenoiser
from sgm.sampling.sigma_ops import percent_to_sigma
from sgm.text.conditioning import Condition
from tests.sgm.model_factories import (
    TINY_CONTEXT_DIM,
    TINY_POOLED_DIM,
    randomize_,
    sdxl_vector,
    tiny_diffusers_unet,
    tiny_unet,
    tiny_unet_config,
)

TOLERANCE = 1e-4
# Head layouts of tiny_diffusers_unet(family) (diffusers counts heads per level; shapes cannot tell).
DIFFUSERS_HEADS = {"sd1": {"num_heads": 8}, "sd2": {"num_head_channels": 64}, "sdxl": {"num_head_channels": 16}}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


def our_unet(reference: torch.nn.Module, family: str) -> UNetModel:
    state = unet_diffusers_to_original(reference.state_dict())
    unet = UNetModel(**infer_unet_config(state, family, DIFFUSERS_HEADS[family]))
    unet.load_state_dict(state)
    return unet.eval()


def inputs(family: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    out = {
        "x": torch.randn(2, 4, 16, 16, generator=generator),  # (B, 4, h, w)
        "t": torch.tensor([3.0, 781.5]),
        "context": torch.randn(2, 7, TINY_CONTEXT_DIM, generator=generator),
        "hint": torch.rand(2, 3, 128, 128, generator=generator),  # (B, 3, 8h, 8w) image in [0, 1]
    }
    if family == "sdxl":
        out["pooled"] = torch.randn(2, TINY_POOLED_DIM, generator=generator)
        out["time_ids"] = torch.tensor([[512.0, 512, 0, 0, 512, 512], [1024, 768, 16, 8, 1024, 1024]])
    return out


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_controlnet_parity_with_diffusers_and_both_layouts(family: str, tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    reference_unet = tiny_diffusers_unet(family, seed=1)
    torch.manual_seed(2)
    reference = randomize_(diffusers.ControlNetModel.from_unet(reference_unet), seed=3, std=0.1).eval()
    data = inputs(family)
    extra, y = {}, None
    if family == "sdxl":
        extra = {"added_cond_kwargs": {"text_embeds": data["pooled"], "time_ids": data["time_ids"]}}
        y = sdxl_vector(data["pooled"], data["time_ids"])
    scale = 0.7
    with torch.no_grad():
        down, mid = reference(data["x"], data["t"], data["context"], controlnet_cond=data["hint"],
                              conditioning_scale=scale, return_dict=False, **extra)
        expected = reference_unet(data["x"], data["t"], data["context"], down_block_additional_residuals=down,
                                  mid_block_additional_residual=mid, **extra).sample
        plain = reference_unet(data["x"], data["t"], data["context"], **extra).sample

    assert control_kind(reference.state_dict()) == "controlnet-diffusers"
    controlnet = load_control_model(reference.state_dict(), hints=DIFFUSERS_HEADS[family])
    assert isinstance(controlnet, ControlNet)
    unet = our_unet(reference_unet, family)
    with torch.no_grad():
        residuals = controlnet(data["x"], data["hint"], data["t"], data["context"], y).scaled(scale)
        actual = unet(data["x"], data["t"], data["context"], y, control=residuals)
    for ours, theirs in zip(residuals.skips, down):
        assert relative_error(ours, theirs) <= TOLERANCE
    assert relative_error(residuals.middle, mid) <= TOLERANCE
    assert relative_error(actual, expected) <= TOLERANCE
    assert relative_error(expected, plain) > 1e-2  # the control does change the output

    # The same weights in the ldm layouts (cldm prefix, bare keys) load to identical tensors.
    state = controlnet.state_dict()
    # a full cldm checkpoint: the ControlNet beside the UNet and the schedule buffers
    others = {"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3), "betas": torch.zeros(1000)}
    save_file({**{f"control_model.{k}": v.contiguous() for k, v in state.items()}, **others},
              tmp_path / "cldm.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "bare.safetensors")
    for name in ("cldm", "bare"):
        loaded = load_control_file(tmp_path / f"{name}.safetensors", hints=DIFFUSERS_HEADS[family])
        assert loaded.state_dict().keys() == state.keys()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_t2i_adapter_parity_with_diffusers(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    reference_unet = tiny_diffusers_unet("sd1", seed=1)
    torch.manual_seed(4)
    reference = randomize_(diffusers.T2IAdapter(in_channels=1, channels=[32, 64], num_res_blocks=2,
                                                downscale_factor=8, adapter_type="full_adapter"), seed=5).eval()
    data = inputs("sd1")
    hint = data["hint"][:, :1]  # a one-channel (sketch / canny) hint
    with torch.no_grad():
        features = reference(hint)
        expected = reference_unet(data["x"], data["t"], data["context"],
                                  down_intrablock_additional_residuals=[f.clone() for f in features]).sample
        plain = reference_unet(data["x"], data["t"], data["context"]).sample

    assert control_kind(reference.state_dict()) == "t2i-adapter-diffusers"
    adapter = load_control_model(reference.state_dict(), hints={"unet_res_blocks": 1})
    assert isinstance(adapter, T2IAdapter) and adapter.channels == (32, 64) and adapter.hint_channels == 1
    unet = our_unet(reference_unet, "sd1")
    with torch.no_grad():
        ours = adapter(hint)
        residuals = adapter.residuals(data["x"], hint, data["t"], None, None)
        actual = unet(data["x"], data["t"], data["context"], control=residuals)
        # An RGB hint given to a grey-scale adapter is averaged to one channel.
        grey = adapter(data["hint"])
    assert all(relative_error(a, b) <= TOLERANCE for a, b in zip(ours, features))
    assert relative_error(actual, expected) <= TOLERANCE
    assert relative_error(expected, plain) > 1e-2
    assert torch.allclose(grey[0], adapter(data["hint"].mean(1, keepdim=True))[0])

    # The TencentARC layout (body.N.*) of the same weights loads to identical tensors.
    state = adapter.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "t2i.safetensors")
    loaded = load_control_file(tmp_path / "t2i.safetensors", hints={"unet_res_blocks": 1})
    assert control_kind(state) == "t2i-adapter"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_t2i_adapter_xl_parity_with_diffusers(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    reference_unet = tiny_diffusers_unet("sdxl", seed=1)
    torch.manual_seed(6)
    reference = randomize_(diffusers.T2IAdapter(in_channels=3, channels=[32, 64, 64, 64], num_res_blocks=2,
                                                downscale_factor=16, adapter_type="full_adapter_xl"), seed=7).eval()
    data = inputs("sdxl")
    extra = {"added_cond_kwargs": {"text_embeds": data["pooled"], "time_ids": data["time_ids"]}}
    y = sdxl_vector(data["pooled"], data["time_ids"])
    with torch.no_grad():
        features = reference(data["hint"])
        expected = reference_unet(data["x"], data["t"], data["context"], **extra,
                                  down_intrablock_additional_residuals=[f.clone() for f in features]).sample
        plain = reference_unet(data["x"], data["t"], data["context"], **extra).sample

    adapter = load_control_model(reference.state_dict(), hints={"unet_res_blocks": 1})
    assert isinstance(adapter, T2IAdapter) and adapter.xl and adapter.hint_channels == 3
    unet = our_unet(reference_unet, "sdxl")
    with torch.no_grad():
        residuals = adapter.residuals(data["x"], data["hint"], data["t"], None, None)
        actual = unet(data["x"], data["t"], data["context"], y, control=residuals)
    assert residuals.middle is not None  # the last feature goes after the middle block
    assert relative_error(actual, expected) <= TOLERANCE
    assert relative_error(expected, plain) > 1e-2


def test_light_t2i_adapter_parity_with_diffusers(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(1)  # a three-level SD1-like UNet: the light adapter's features are 32, 64, 64 wide
    reference_unet = randomize_(diffusers.UNet2DConditionModel(
        sample_size=16, cross_attention_dim=TINY_CONTEXT_DIM, norm_num_groups=32, block_out_channels=(32, 64, 64),
        layers_per_block=1, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")), seed=1).eval()
    torch.manual_seed(8)
    reference = randomize_(diffusers.T2IAdapter(in_channels=3, channels=[32, 64], num_res_blocks=2,
                                                downscale_factor=8, adapter_type="light_adapter"), seed=9).eval()
    data = inputs("sd1")
    with torch.no_grad():
        features = reference(data["hint"])
        expected = reference_unet(data["x"], data["t"], data["context"],
                                  down_intrablock_additional_residuals=[f.clone() for f in features]).sample
        plain = reference_unet(data["x"], data["t"], data["context"]).sample
    assert relative_error(expected, plain) > 1e-2
    assert control_kind(reference.state_dict()) == "t2i-adapter-light-diffusers"
    adapter = load_control_model(reference.state_dict(), hints={"unet_res_blocks": 1})
    assert isinstance(adapter, LightT2IAdapter) and adapter.channels == (32, 64, 64)
    unet = our_unet(reference_unet, "sd1")
    with torch.no_grad():
        actual = unet(data["x"], data["t"], data["context"],
                      control=adapter.residuals(data["x"], data["hint"], data["t"], None, None))
    assert relative_error(actual, expected) <= TOLERANCE
    state = adapter.state_dict()
    assert control_kind(state) == "t2i-adapter-light"
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "light.safetensors")
    loaded = load_control_file(tmp_path / "light.safetensors", hints={"unet_res_blocks": 1})
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


# ------------------------------------------------------------------ the guider's control chain


def tiny_controlnet(seed: int) -> ControlNet:
    config = tiny_unet_config("sd1")
    config.pop("out_channels")
    torch.manual_seed(seed)
    return randomize_(ControlNet(**config), seed, std=0.1).eval()  # type: ignore[return-value]


def denoise(unet: UNetModel, control: ControlLink | None, x: torch.Tensor, sigma: torch.Tensor,
            cfg: float = 1.0) -> tuple[torch.Tensor, GuidedDenoiser]:
    context = torch.randn(1, 7, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(9))
    positive = [Condition(context, control=control)]
    negative = [Condition(context * 0, control=control)] if cfg != 1.0 else None
    guider = GuidedDenoiser(unet, ModelSampling(), positive, negative, cfg=cfg)
    with torch.no_grad():
        return guider(x, sigma), guider


def test_guider_control_strength_window_and_stacking() -> None:
    unet = tiny_unet("sd1", seed=1)
    first, second = tiny_controlnet(2), tiny_controlnet(3)
    hint_a = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    hint_b = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(5))  # resized to 128x128
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(6)) * 5
    sigma = torch.full((2,), 5.0)
    ms = ModelSampling()

    plain, _ = denoise(unet, None, x, sigma)
    off, _ = denoise(unet, ControlLink(first, hint_a, strength=0.0), x, sigma)
    assert torch.equal(off, plain)  # strength 0 is no control at all
    on, guider = denoise(unet, ControlLink(first, hint_a, strength=0.8), x, sigma)
    assert (on - plain).abs().max() > 1e-3

    # The residuals the guider added are the ControlNet's, scaled by the strength.
    scal = ms.scalings(sigma, 4)
    x_in, t = x * scal.c_in, ms.timestep(sigma)
    context = torch.randn(1, 7, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(9)).expand(2, -1, -1)
    with torch.no_grad():
        hint = resize_hint(hint_a, 128, 128, 2)
        residuals = first(x_in, hint, t, context).scaled(0.8)
        direct = scal.c_skip * x + scal.c_out * unet(x_in, t, context, control=residuals)
    assert torch.allclose(on, direct, atol=1e-5)

    # Start/end window: a control active for [0.5, 1] of sampling acts at low sigma only.
    boundary = percent_to_sigma(ms, 0.5)
    late = ControlLink(first, hint_a, strength=0.8, start=0.5, end=1.0)
    high_sigma, low_sigma = torch.full((2,), boundary * 1.5), torch.full((2,), boundary / 1.5)
    assert torch.equal(denoise(unet, late, x, high_sigma)[0], denoise(unet, None, x, high_sigma)[0])
    assert torch.allclose(denoise(unet, late, x, low_sigma)[0],
                          denoise(unet, ControlLink(first, hint_a, strength=0.8), x, low_sigma)[0])

    # Two stacked controls equal the sum of their residuals.
    stacked = ControlLink(second, hint_b, strength=0.5, previous=ControlLink(first, hint_a, strength=0.8))
    both, _ = denoise(unet, stacked, x, sigma)
    with torch.no_grad():
        summed = residuals + second(x_in, resize_hint(hint_b, 128, 128, 2), t, context).scaled(0.5)
        expected = scal.c_skip * x + scal.c_out * unet(x_in, t, context, control=summed)
    assert torch.allclose(both, expected, atol=1e-5)

    # cond and uncond sharing one chain go through the UNet (and the ControlNet) in one call.
    _, guider = denoise(unet, stacked, x, sigma, cfg=3.0)
    assert guider.unet_calls == 1


def test_jobs_with_different_controls_are_not_batched() -> None:
    unet = tiny_unet("sd1", seed=1)
    hint = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    link = ControlLink(tiny_controlnet(2), hint)
    context = torch.randn(1, 7, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(9))
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    sigma = torch.full((1,), 3.0)
    guider = GuidedDenoiser(unet, ModelSampling(), [Condition(context, control=link)], [Condition(context * 0)],
                            cfg=4.0)
    with torch.no_grad():
        guided = guider(x, sigma)
        # reference: each branch alone (the negative has no control)
        cond = GuidedDenoiser(unet, ModelSampling(), [Condition(context, control=link)])(x, sigma)
        uncond = GuidedDenoiser(unet, ModelSampling(), [Condition(context * 0)])(x, sigma)
    assert guider.unet_calls == 2
    assert torch.allclose(guided, uncond + 4.0 * (cond - uncond), atol=1e-5)


def test_control_residuals_add_and_inpaint_input() -> None:
    a = ControlResiduals(skips=(torch.ones(1), None), middle=None)
    b = ControlResiduals(skips=(torch.ones(1), torch.ones(1)), middle=torch.ones(1), inputs=(None, torch.ones(1)))
    total = a + b
    assert total.skips[0].item() == 2 and total.skips[1].item() == 1 and total.middle.item() == 1
    assert total.inputs[1].item() == 1

    # A 9-channel inpainting UNet: the ControlNet takes the 4-channel noisy latent only.
    unet = tiny_unet("sd1", seed=1, in_channels=9)
    link = ControlLink(tiny_controlnet(2), torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(4)))
    context = torch.randn(1, 7, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(9))
    concat = torch.rand(1, 5, 16, 16, generator=torch.Generator().manual_seed(3))
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        with_control = GuidedDenoiser(unet, ModelSampling(), [Condition(context, control=link)],
                                      inpaint_concat=concat)(x, torch.full((1,), 2.0))
        without = GuidedDenoiser(unet, ModelSampling(), [Condition(context)], inpaint_concat=concat)(
            x, torch.full((1,), 2.0))
    assert with_control.shape == (1, 4, 16, 16) and (with_control - without).abs().max() > 1e-4


def test_control_with_areas_timestep_ranges_and_dual_cfg() -> None:
    from sgm.sampling.guidance_extra import RANGE_KEY, DualCFGDenoiser, TimestepRangeDenoiser
    from sgm.text.conditioning import Area

    unet = tiny_unet("sd1", seed=1)
    hint = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    link = ControlLink(tiny_controlnet(2), hint, strength=0.9)
    context = torch.randn(1, 7, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(9))
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    sigma = torch.full((1,), 2.0)
    ms = ModelSampling()
    with torch.no_grad():
        # An area condition sees the hint's matching crop: equal to controlling a cropped latent.
        area = Condition(context, area=Area(x=8, y=0, width=8, height=16), control=link)
        combined = GuidedDenoiser(unet, ms, [Condition(context), area])(x, sigma)
        scal, t = ms.scalings(sigma, 4), ms.timestep(sigma)
        full = scal.c_skip * x + scal.c_out * unet(x * scal.c_in, t, context)
        x_area = x[..., 8:] * scal.c_in
        residuals = link.model(x_area, hint[..., 64:], t, context).scaled(0.9)  # the hint's right half
        in_area = scal.c_skip * x[..., 8:] + scal.c_out * unet(x_area, t, context, control=residuals)
        assert torch.allclose(combined[..., :8], full[..., :8], atol=1e-5)
        assert torch.allclose(combined[..., 8:], (full[..., 8:] + in_area) / 2, atol=1e-5)

        # Timestep-ranged and dual-CFG guidance carry the control in their conditions.
        controlled = GuidedDenoiser(unet, ms, [Condition(context, control=link)])(x, sigma)
        ranged = TimestepRangeDenoiser(unet, ms, [Condition(context, control=link, extra={RANGE_KEY: (0.0, 1.0)})])
        assert torch.allclose(ranged(x, sigma), controlled, atol=1e-6)
        dual = DualCFGDenoiser(unet, ms, [Condition(context, control=link)], [Condition(context, control=link)],
                               [Condition(context, control=link)], 3.0, 2.0)
        assert torch.allclose(dual(x, sigma), controlled, atol=1e-5)  # three equal branches: their estimate
