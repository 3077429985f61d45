"""Stability AI's control-LoRA files: a ControlNet stored as low-rank differences from the UNet.

A control-LoRA (``control-lora-canny-rank128.safetensors`` ...; marked by a ``lora_controlnet``
key) holds ``<layer>.up`` / ``<layer>.down`` pairs for the ControlNet's copies of UNet weights and
full tensors for the rest (hint encoder, zero convolutions, norms). :class:`ControlLoRA` keeps
those tensors; the guider completes it with the UNet it samples with (``for_unet``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sgm.io.checkpoints import assign_weights, controlnet_config
from sgm.nets.controlnet import ControlNet
from sgm.nets.unet import ControlResiduals

CONTROL_LORA_MARKER = "lora_controlnet"  # the key that marks a control-LoRA file


def unet_head_layout(unet: nn.Module) -> dict[str, int]:
    """``num_heads`` or ``num_head_channels`` of a built UNet, read from its attention layers
    (the head count cannot be read from weight shapes): equal head counts at every width mean
    ``num_heads``, otherwise heads of a fixed width."""
    layout = {(m.heads, m.to_q.out_features) for m in unet.modules()
              if hasattr(m, "heads") and isinstance(getattr(m, "to_q", None), nn.Linear)}
    if not layout:
        return {}
    heads = {h for h, _ in layout}
    if len(heads) == 1:
        return {"num_heads": heads.pop()}
    return {"num_head_channels": min(width // h for h, width in layout)}


def low_rank_delta(up: torch.Tensor, down: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """up (out, r[, 1, 1]) @ down (r, in[, k, k]) -> the weight difference of ``shape`` (fp32)."""
    return (up.flatten(1).float() @ down.flatten(1).float()).reshape(shape)


class ControlLoRA(nn.Module):
    """A control-LoRA file: the ControlNet is the UNet's encoder plus low-rank differences
    (LoRA, Hu et al. 2021: W_control = W_unet + up @ down, rank 128 or 256 in the released files).

    tensors: ``<layer>.up`` / ``<layer>.down`` pairs (the ControlNet's ``<layer>.weight`` is the
    UNet's plus ``up @ down``) and full tensors under their ControlNet names (hint encoder, zero
    convolutions and, where the file has them, biases and norms that replace the UNet's).
    ``for_unet(unet)`` builds that ControlNet for the UNet being sampled (with its LoRAs, as
    ComfyUI builds it when sampling starts); the guider does this once per sampling.
    """

    depends_on_input = True

    def __init__(self, tensors: dict[str, torch.Tensor], what: str = "control-LoRA") -> None:
        super().__init__()
        self.what = what
        self._names: dict[str, str] = {}
        for key, tensor in tensors.items():
            name = key.replace(".", "__")
            self.register_buffer(name, tensor)
            self._names[key] = name
        ups = {k[:-len(".up")] for k in tensors if k.endswith(".up")}
        downs = {k[:-len(".down")] for k in tensors if k.endswith(".down")}
        if ups != downs:
            raise ValueError(f"{what}: low-rank layers without their other half: {sorted(ups ^ downs)[:5]}")
        if "input_hint_block.0.weight" not in tensors:
            raise ValueError(f"{what}: a control-LoRA holds its hint encoder (input_hint_block.0.weight); not found")
        self.low_rank_layers = tuple(sorted(ups))

    def tensor(self, key: str) -> torch.Tensor:
        return getattr(self, self._names[key])

    @property
    def hint_channels(self) -> int:
        return int(self.tensor("input_hint_block.0.weight").shape[1])

    def for_unet(self, unet: nn.Module, hints: dict[str, Any] | None = None) -> ControlNet:
        """The ControlNet of this control-LoRA on ``unet`` (its device and dtype; the UNet's weights
        are shared where the file does not change them). ``hints``: head layout where reading it
        from the UNet's attention layers is not wanted."""

        state = unet.state_dict()
        config = controlnet_config({**state, "input_hint_block.0.weight": self.tensor("input_hint_block.0.weight")},
                                   hints if hints is not None else unet_head_layout(unet))
        with torch.device("meta"):
            model = ControlNet(**config)
        expected = model.state_dict(keep_vars=True)
        param = next(unet.parameters())
        tensors: dict[str, torch.Tensor] = {}
        for key, target in expected.items():
            layer = key.rpartition(".")[0]
            if key in self._names:
                tensors[key] = self.tensor(key)
            elif key.endswith(".weight") and layer in self.low_rank_layers:
                if key not in state:
                    raise ValueError(f"{self.what}: {layer} has a low-rank difference but the UNet has no {key}")
                base = state[key]
                up, down = self.tensor(layer + ".up"), self.tensor(layer + ".down")
                if up.shape[0] != base.shape[0] or down[0].numel() != base[0].numel():
                    raise ValueError(
                        f"{self.what}: {layer}.up/.down {tuple(up.shape)} x {tuple(down.shape)} do not fit this "
                        f"UNet's {key} {tuple(base.shape)} (a control-LoRA made for another model family?)")
                delta = low_rank_delta(self.tensor(layer + ".up").to(param.device),
                                       self.tensor(layer + ".down").to(param.device), base.shape)
                tensors[key] = (base.float() + delta).to(param.dtype)
            elif key in state:
                tensors[key] = state[key]
        unused = [k for k in self._names if k not in expected and k.rpartition(".")[0] not in self.low_rank_layers]
        if unused:
            raise ValueError(f"{self.what}: tensors the ControlNet for this model does not have: {unused[:5]} "
                             "(a control-LoRA made for another model family?)")
        return assign_weights(model, tensors, device=param.device, dtype=param.dtype,  # type: ignore[return-value]
                              what=f"{self.what} on this model")

    def residuals(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                  context: torch.Tensor | None, y: torch.Tensor | None) -> ControlResiduals:
        raise RuntimeError(f"{self.what} is a control-LoRA: it is completed by the UNet it is sampled with "
                           "(the guider calls for_unet); call for_unet(unet).residuals(...) instead")
