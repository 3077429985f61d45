"""Weight-only quantization (sgm.nets.quant): accuracy, state dicts, LoRA, device moves, options."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sgm.io.lora import kohya_unet_names, match_lora, patched
from sgm.nets.quant import (QuantConv2d, QuantLinear, WeightDtype, dequantize_weight, parse_weight_dtype,
                            quantize_module, quantize_weight, weight_bytes)
from sgm.nets.speed_names import WEIGHT_DTYPE_CHOICES
from tests.sgm.model_factories import tiny_unet

FORMATS = (WeightDtype.FP8_E4M3FN, WeightDtype.FP8_E5M2, WeightDtype.INT8)
# Relative L2 error of the tiny random UNet's output against fp32 (same inputs). Measured over
# seeds 0-2: int8 0.022-0.032, e4m3fn 0.10-0.12, e5m2 0.18-0.23 (a random UNet amplifies weight
# error; the trained embedded model: 0.007 / 0.018 / 0.046, bench/quantization.py). Bounds ~1.7x
# the worst seed: a wrong scale or a transposed channel axis gives errors near 1.
OUTPUT_TOLERANCE = {WeightDtype.INT8: 0.055, WeightDtype.FP8_E4M3FN: 0.2, WeightDtype.FP8_E5M2: 0.4}
# Per weight: int8 is within half a step of its channel's scale; fp8 within half an ulp, i.e. a
# relative 2**-4 (e4m3fn, 3 mantissa bits) or 2**-3 (e5m2, 2 bits) once scaled into the normal range.
RELATIVE_ROUNDING = {WeightDtype.FP8_E4M3FN: 2.0**-4, WeightDtype.FP8_E5M2: 2.0**-3}


def unet_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=generator)  # (B, 4, H/8, W/8)
    context = torch.randn(2, 7, 32, generator=generator)  # (B, S, context_dim)
    return x, torch.tensor([900.0, 50.0]), context


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return float((y.float() - reference.float()).norm() / reference.float().norm())


@pytest.mark.parametrize("weight_dtype", FORMATS, ids=lambda w: w.value)
def test_a_quantized_unet_stays_close_to_the_original_and_stores_one_byte_per_weight(weight_dtype) -> None:
    unet = tiny_unet("sd1")
    x, t, context = unet_inputs()
    with torch.no_grad():
        reference = unet(x, t, context)
        quantized = quantize_module(copy.deepcopy(unet), weight_dtype)
        y = quantized(x, t, context)
    layers = [m for m in quantized.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    assert len(layers) > 20 and all(m.weight.dtype == weight_dtype.storage for m in layers)
    # ends and the timestep MLP stay full precision (the UNet reads its dtype from time_embed.0)
    assert type(quantized.input_blocks[0][0]) is nn.Conv2d and type(quantized.out[2]) is nn.Conv2d
    assert quantized.time_embed[0].weight.dtype == torch.float32
    assert weight_bytes(quantized) < 0.4 * weight_bytes(unet)
    assert relative_error(y, reference) < OUTPUT_TOLERANCE[weight_dtype]
    assert relative_error(y, reference) > 0  # it did quantize


@pytest.mark.parametrize("weight_dtype", FORMATS, ids=lambda w: w.value)
def test_each_stored_weight_is_within_half_a_step_of_the_original(weight_dtype) -> None:
    weight = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(1)) * torch.logspace(-4, 0, 16)[:, None,
                                                                                                              None, None]
    stored, scale = quantize_weight(weight, weight_dtype.storage)
    back = dequantize_weight(stored, scale, torch.float32)
    if weight_dtype == WeightDtype.INT8:
        assert ((back - weight).abs() <= scale[:, None, None, None] / 2 * (1 + 1e-6)).all()
    else:  # channels four decades apart all keep fp8's relative precision (normal range after scaling)
        normal = weight.abs() >= scale[:, None, None, None] * torch.finfo(weight_dtype.storage).tiny
        error = ((back - weight).abs() / weight.abs())[normal]
        assert normal.float().mean() > 0.95 and error.max() <= RELATIVE_ROUNDING[weight_dtype] * (1 + 1e-6)


def test_int8_rounds_each_weight_to_the_nearest_step_of_its_output_channel() -> None:
    weight = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -0.02]])
    stored, scale = quantize_weight(weight, torch.int8)
    assert stored.dtype == torch.int8 and scale.shape == (2,)
    assert torch.allclose(scale, torch.tensor([1.0 / 127, 2.0 / 127]))
    assert stored.tolist() == [[64, -127, 32], [127, 0, -1]]  # 0.5*127 = 63.5 -> 64; -0.02*63.5 -> -1
    back = dequantize_weight(stored, scale, torch.float32)
    assert (back - weight).abs().max() <= scale.max() / 2 + 1e-7


def test_fp8_values_are_kept_exactly_without_a_scale_and_others_get_one() -> None:
    exact = torch.tensor([[0.5, -1.5, 0.0078125], [448.0, -0.25, 3.0]])  # all e4m3fn values
    stored, scale = quantize_weight(exact, torch.float8_e4m3fn)
    assert scale is None and torch.equal(stored.float(), exact)
    small = torch.full((2, 3), 1e-3)  # below e4m3fn's normal range: unscaled it would keep ~2 bits
    stored, scale = quantize_weight(small, torch.float8_e4m3fn)
    assert scale is not None and torch.allclose(dequantize_weight(stored, scale, torch.float32), small, rtol=1e-6)


def test_an_fp8_checkpoint_loaded_with_fp8_weights_keeps_its_stored_values(tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sgm.io.checkpoints import load_checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path / "fp32.safetensors", unet=tiny_unet("sd1"))
    with safe_open(str(path), "pt") as f:  # an fp8 file as ComfyUI writes them: matrices in fp8
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: v.to(torch.float8_e4m3fn) if k.endswith("weight") and v.dim() >= 2 else v for k, v in tensors.items()}
    save_file(tensors, str(tmp_path / "fp8.safetensors"), metadata=metadata)
    loaded = load_checkpoint(tmp_path / "fp8.safetensors", dtype=torch.bfloat16).unet
    quantize_module(loaded, WeightDtype.FP8_E4M3FN)
    layer = loaded.input_blocks[1][0].in_layers[2]
    stored = tensors["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"]
    assert isinstance(layer, QuantConv2d) and layer.weight_scale is None
    assert layer.weight.dtype == torch.float8_e4m3fn and torch.equal(layer.weight.view(torch.uint8),
                                                                      stored.view(torch.uint8))


@pytest.mark.parametrize("weight_dtype", FORMATS, ids=lambda w: w.value)
def test_state_dict_round_trip_and_device_or_dtype_moves_keep_the_stored_bytes(weight_dtype) -> None:
    quantized = quantize_module(tiny_unet("sd1"), weight_dtype)
    state = quantized.state_dict()
    key = "input_blocks.1.1.proj_in.weight"
    assert state[key].dtype == weight_dtype.storage
    assert ("input_blocks.1.1.proj_in.weight_scale" in state) == (weight_dtype == WeightDtype.INT8 or
                                                                    quantized.input_blocks[1][1].proj_in.weight_scale
                                                                    is not None)
    fresh = quantize_module(tiny_unet("sd1", seed=5), weight_dtype)
    fresh.load_state_dict(state)
    assert all(torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                           b.view(torch.uint8) if b.element_size() == 1 else b)
               for a, b in zip(state.values(), fresh.state_dict().values()))
    x, t, context = unet_inputs()
    with torch.no_grad():
        assert torch.equal(fresh(x, t, context), quantized(x, t, context))
    moved = copy.deepcopy(quantized).to(torch.bfloat16).to("meta")  # what the model cache and policy do
    layer = moved.input_blocks[1][1].proj_in
    assert layer.weight.device.type == "meta" and layer.weight.dtype == weight_dtype.storage
    assert layer.weight_scale is None or layer.weight_scale.dtype == torch.float32
    assert moved.input_blocks[1][1].norm.weight.dtype == torch.bfloat16  # the rest follows .to(dtype)


def _unet_lora(unet: nn.Module, names: list[str], rank: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    stems = kohya_unet_names(unet)
    state: dict[str, torch.Tensor] = {}
    for name in names:
        module = unet.get_submodule(name)
        fan_in = module.weight[0].shape
        state[f"{stems[name]}.lora_down.weight"] = torch.randn(rank, *fan_in, generator=generator) * 0.3
        up_shape = (module.weight.shape[0], rank) + ((1, 1) if module.weight.dim() == 4 else ())
        state[f"{stems[name]}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.3
        state[f"{stems[name]}.alpha"] = torch.tensor(2.0)
    return state


@pytest.mark.parametrize("weight_dtype", FORMATS, ids=lambda w: w.value)
def test_lora_on_quantized_layers_runs_beside_the_weights_and_unpatches_exactly(weight_dtype) -> None:
    names = ["input_blocks.1.1.transformer_blocks.0.attn1.to_q", "input_blocks.1.0.in_layers.2",
             "input_blocks.1.1.proj_in"]
    unet = tiny_unet("sd1")
    lora = _unet_lora(unet, names)
    x, t, context = unet_inputs()
    with torch.no_grad():
        with patched({"unet": unet}, [(match_lora(lora, unet).for_module("unet"), 0.8)]):
            reference = unet(x, t, context)  # LoRA merged into fp32 weights
    quantized = quantize_module(copy.deepcopy(unet), weight_dtype)
    before = {k: v.clone() for k, v in quantized.state_dict().items()}
    match = match_lora(lora, quantized)
    assert len(match.targets) == len(names)
    with torch.no_grad():
        plain = quantized(x, t, context)
        with patched({"unet": quantized}, [(match.for_module("unet"), 0.8)]):
            with_lora = quantized(x, t, context)
        after = quantized(x, t, context)
    assert torch.equal(after, plain)  # unpatched exactly: same outputs ...
    for key, value in quantized.state_dict().items():  # ... and the same stored bytes
        assert value.dtype == before[key].dtype and torch.equal(value.view(torch.uint8) if value.element_size() == 1
                                                                else value, before[key].view(torch.uint8)
                                                                if value.element_size() == 1 else before[key])
    assert not any("_low_rank" in m.__dict__ and m.__dict__["_low_rank"] for m in quantized.modules())
    # the low-rank path computes exactly W_q x + s * up(down(x)): the same as merging the LoRA
    # into an fp32 copy of the dequantized weights (up to float summation order)
    merged = copy.deepcopy(unet)
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, (QuantLinear, QuantConv2d)):
                merged.get_submodule(name).weight.copy_(module.dequantized_weight(torch.float32))
        with patched({"unet": merged}, [(match_lora(lora, merged).for_module("unet"), 0.8)]):
            merged_out = merged(x, t, context)
    assert relative_error(with_lora, merged_out) < 1e-5
    assert relative_error(with_lora, plain) > 0.01  # the LoRA does something
    assert relative_error(with_lora, reference) < OUTPUT_TOLERANCE[weight_dtype]


def test_weight_dtype_names_match_the_enum_and_bad_names_teach() -> None:
    assert WEIGHT_DTYPE_CHOICES == tuple(w.value for w in WeightDtype)
    with pytest.raises(ValueError, match=r"--weight-dtype 'fp4' is not one of default, fp8_e4m3fn, fp8_e5m2, int8"):
        parse_weight_dtype("fp4", "--weight-dtype")
    with pytest.raises(ValueError, match="fp8_e4m3fn_fast is fp8_e4m3fn here"):
        parse_weight_dtype("fp8_e4m3fn_fast")
    unet = quantize_module(tiny_unet("sd1"), "int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_module(unet, "fp8_e5m2")
    assert quantize_module(tiny_unet("sd1"), "default").input_blocks[1][0].in_layers[2].weight.dtype == torch.float32
