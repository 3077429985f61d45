"""Control-LoRA (Stability AI's ``control-lora-*.safetensors``): a ControlNet whose copies of the UNet's
weights differ from them by exact rank-r matrices, written as a control-LoRA file (marker, ``.up`` /
``.down`` factors, full hint encoder / zero convolutions / biases / norms), is rebuilt from the UNet it is
applied to and gives that ControlNet's residuals; the guider completes it with the UNet being sampled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sgm.io.checkpoints import CheckpointError
from sgm.io.controlnet_files import control_kind, controlnet_from_unet, load_control_file
from sgm.io.control_lora import CONTROL_LORA_MARKER, ControlLoRA, unet_head_layout
from sgm.nets.controlnet import ControlLink, ControlNet
from sgm.nets.unet import UNetModel
from sgm.sampling.denoisers import DiscreteModelSampling as ModelSampling
from sgm.sampling.guiders import GuidedDenoiser
from sgm.text.conditioning import Condition
from tests.sgm.model_factories import TINY_CONTEXT_DIM, TINY_POOLED_DIM, randomize_, sdxl_vector, tiny_unet

RANK = 4
TOLERANCE = 1e-5
# Weights the file stores in full although they are matrices (as real files store the first convolution's
# neighbours' norms and biases in full): the loader must take them as they are.
FULL_MATRICES = ("input_blocks.0.0.weight",)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


def control_lora_pair(unet: UNetModel, seed: int) -> tuple[ControlNet, dict[str, torch.Tensor]]:
    """A full ControlNet for ``unet`` whose encoder matrices are the UNet's plus a rank-``RANK`` product,
    and the control-LoRA tensors that describe it (biases and norms: every other one changed and
    stored in full, the rest left as the UNet's and absent from the file)."""
    generator = torch.Generator().manual_seed(seed)
    controlnet = controlnet_from_unet(unet, hints=unet_head_layout(unet))
    randomize_(controlnet.input_hint_block, seed, std=0.1)
    randomize_(controlnet.zero_convs, seed + 1, std=0.1)
    randomize_(controlnet.middle_block_out, seed + 2, std=0.1)
    unet_state = unet.state_dict()
    tensors: dict[str, torch.Tensor] = {CONTROL_LORA_MARKER: torch.tensor([])}
    vectors = 0
    with torch.no_grad():
        for key, param in controlnet.state_dict(keep_vars=True).items():
            if key not in unet_state:  # hint encoder, zero convolutions: full
                tensors[key] = param.detach().clone()
            elif param.ndim >= 2 and key not in FULL_MATRICES:
                out, rest = param.shape[0], param.shape[1:]
                up = torch.randn(out, RANK, *([1] * (param.ndim - 2)), generator=generator) * 0.05
                down = torch.randn(RANK, *rest, generator=generator) * 0.05
                param.add_((up.flatten(1) @ down.flatten(1)).reshape(param.shape))
                layer = key[:-len(".weight")]
                tensors[f"{layer}.up"], tensors[f"{layer}.down"] = up, down
            elif param.ndim >= 2 or vectors % 2 == 0:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
                tensors[key] = param.detach().clone()
                vectors += param.ndim == 1
            else:
                vectors += 1  # left as the UNet's: not in the file
    return controlnet.eval(), tensors


def sdxl_inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pooled = torch.randn(batch, TINY_POOLED_DIM, generator=generator)
    time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]]).repeat(batch, 1)
    return {"x": torch.randn(batch, 4, 16, 16, generator=generator), "t": torch.tensor([20.0, 700.0][:batch]),
            "context": torch.randn(batch, 7, TINY_CONTEXT_DIM, generator=generator),
            "hint": torch.rand(batch, 3, 128, 128, generator=generator), "y": sdxl_vector(pooled, time_ids)}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_control_lora_rebuilds_the_full_controlnet(family: str, tmp_path: Path) -> None:
    unet = tiny_unet(family, seed=1)
    full, tensors = control_lora_pair(unet, seed=2)
    assert any(k.endswith(".up") for k in tensors) and "input_blocks.0.0.weight" in tensors
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "control-lora-test-rank4.safetensors")
    assert control_kind(tensors) == "control-lora"
    lora = load_control_file(tmp_path / "control-lora-test-rank4.safetensors")
    assert isinstance(lora, ControlLoRA) and lora.hint_channels == 3

    data = sdxl_inputs()
    y = data["y"] if family == "sdxl" else None
    controlnet = lora.for_unet(unet)
    with torch.no_grad():
        expected = full(data["x"], data["hint"], data["t"], data["context"], y)
        actual = controlnet(data["x"], data["hint"], data["t"], data["context"], y)
        # The UNet's own encoder (no low-rank difference) gives other residuals: the differences matter.
        base = controlnet_from_unet(unet, hints=unet_head_layout(unet))
        base.load_state_dict({k: v for k, v in full.state_dict().items() if k not in unet.state_dict()},
                             strict=False)
        without = base(data["x"], data["hint"], data["t"], data["context"], y)
    for ours, theirs, other in zip((*actual.skips, actual.middle), (*expected.skips, expected.middle),
                                   (*without.skips, without.middle)):
        assert relative_error(ours, theirs) <= TOLERANCE
    assert relative_error(without.middle, expected.middle) > 1e-3
    # Weights the file leaves alone are the UNet's own tensors (shared, not copied).
    assert controlnet.time_embed[0].bias is not None
    shared = [k for k in controlnet.state_dict() if k in unet.state_dict() and k not in tensors
              and not any(k.startswith(layer + ".") for layer in lora.low_rank_layers)]
    assert shared and all(controlnet.state_dict()[k].data_ptr() == unet.state_dict()[k].data_ptr() for k in shared)


def test_guider_completes_a_control_lora_with_the_sampled_unet() -> None:
    unet = tiny_unet("sdxl", seed=1)
    full, tensors = control_lora_pair(unet, seed=3)
    lora = ControlLoRA({k: v for k, v in tensors.items() if k != CONTROL_LORA_MARKER})
    data = sdxl_inputs(batch=1)
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    sigma = torch.full((1,), 3.0)

    def denoise(model: torch.nn.Module) -> tuple[torch.Tensor, GuidedDenoiser]:
        condition = Condition(data["context"], y=data["y"], control=ControlLink(model, hint, strength=0.7))
        guider = GuidedDenoiser(unet, ModelSampling(), [condition])
        with torch.no_grad():
            return guider(data["x"], sigma), guider

    expected, _ = denoise(full)
    actual, guider = denoise(lora)
    assert torch.allclose(actual, expected, atol=1e-5)
    with torch.no_grad():
        guider(data["x"], sigma)
    assert sum(isinstance(v, ControlNet) for v in guider._control_cache.values()) == 1  # built once per sampling
    with torch.no_grad():
        plain = GuidedDenoiser(unet, ModelSampling(), [Condition(data["context"], y=data["y"])])(data["x"], sigma)
    assert (actual - plain).abs().max() > 1e-4
    # Run directly, it says what it needs.
    with pytest.raises(RuntimeError, match="completed by the UNet"):
        lora.residuals(data["x"], hint, sigma, data["context"], data["y"])


def test_control_lora_for_another_family_or_damaged_file_is_refused() -> None:
    _, tensors = control_lora_pair(tiny_unet("sdxl", seed=1), seed=2)
    tensors.pop(CONTROL_LORA_MARKER)
    with pytest.raises(ValueError, match="made for another model family"):
        ControlLoRA(tensors).for_unet(tiny_unet("sd1", seed=1))  # an SDXL control-LoRA on an SD1 UNet
    wider = tiny_unet("sdxl", seed=1, model_channels=64)  # same blocks, other widths
    with pytest.raises((ValueError, CheckpointError), match="do not fit|has shape"):
        ControlLoRA(tensors).for_unet(wider)
    half = {k: v for k, v in tensors.items() if k != "input_blocks.1.0.in_layers.2.down"}
    with pytest.raises(ValueError, match="without their other half.*in_layers.2"):
        ControlLoRA(half)
