"""LoRA training: low-rank adapters on a frozen UNet's attention projections.

Adapters attach through forward hooks (the UNet's modules and state-dict keys stay
untouched): for each adapted ``nn.Linear`` with weight W (out, in),

    y = W x + b + (alpha / r) * up(down(x))       down: (r, in), up: (out, r), up = 0 at start

(Hu et al. 2021, eq. 3), so training starts exactly at the base model.

Adapted modules: every ``transformer_blocks.N.attn1`` / ``attn2`` projection ``to_q``, ``to_k``,
``to_v`` and ``to_out.0`` of the UNet (ldm names such as
``input_blocks.1.1.transformer_blocks.0.attn1.to_q``).

Saved key layout (kohya / sd-scripts): ``<stem>.lora_down.weight`` (r, in),
``<stem>.lora_up.weight`` (out, r) and ``<stem>.alpha`` (a 0-d float tensor), where ``<stem>``
comes from :func:`sgm.io.lora.kohya_unet_names`: the **diffusers** module path with ``_``
(``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``) wherever the
ldm layout maps onto diffusers (SD 1.x / 2.x and our tiny UNets), else the ldm path with ``_``
(``lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q``). ``sgm.io.lora.match_lora``
reads both forms back, as do A1111 and ComfyUI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgm.training.diffusion import DiffusionConfig, DiffusionTask

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def attention_projection_names(unet: nn.Module) -> list[str]:
    """ldm names of the UNet's attention projections (``...attn1.to_q``, ``...attn2.to_out.0``)."""
    return [name for name, module in unet.named_modules()
            if isinstance(module, nn.Linear) and ".attn" in name and name.endswith(ATTENTION_PROJECTIONS)]


class LoRALayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.lora_down = nn.Linear(in_features, rank, bias=False)
        self.lora_up = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.rank, self.alpha = rank, alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_up(self.lora_down(x.to(self.lora_down.weight.dtype))) * (self.alpha / self.rank)


class LoRAAdapters(nn.Module):
    """One :class:`LoRALayer` per adapted module, hooked onto ``unet`` until :meth:`remove`."""

    def __init__(self, unet: nn.Module, rank: int = 4, alpha: float = 4.0, names: list[str] | None = None) -> None:
        super().__init__()
        self.names = names if names is not None else attention_projection_names(unet)
        if not self.names:
            raise ValueError("the UNet has no attention projections to adapt (no transformer blocks?)")
        modules = dict(unet.named_modules())
        # ModuleDict keys may not contain ".": store "a.b" as "a__b".
        self.layers = nn.ModuleDict({
            name.replace(".", "__"): LoRALayer(modules[name].in_features, modules[name].out_features, rank, alpha)
            for name in self.names
        })
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.names]

    def _hook(self, name: str) -> Callable[..., torch.Tensor]:
        layer = self.layers[name.replace(".", "__")]

        def add_adapter(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            return output + layer(inputs[0]).to(output.dtype)

        return add_adapter

    def remove(self) -> None:
        """Detach from the UNet (its outputs are the base model's again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def kohya_state_dict(self, unet: nn.Module) -> dict[str, torch.Tensor]:
        """Tensors in the kohya layout (see the module docstring)."""
        from sgm.io.lora import kohya_unet_names

        stems = kohya_unet_names(unet)
        tensors: dict[str, torch.Tensor] = {}
        for name in self.names:
            layer = self.layers[name.replace(".", "__")]
            stem = stems[name]
            tensors[f"{stem}.lora_down.weight"] = layer.lora_down.weight.detach().float().cpu().contiguous()
            tensors[f"{stem}.lora_up.weight"] = layer.lora_up.weight.detach().float().cpu().contiguous()
            tensors[f"{stem}.alpha"] = torch.tensor(float(layer.alpha))
        return tensors


def save_lora(path: str | Path, adapters: LoRAAdapters, unet: nn.Module, *, base_model: str = "") -> Path:
    """Write the adapters as a kohya-layout ``.safetensors`` with sd-scripts-style metadata."""
    from safetensors.torch import save_file

    first = next(iter(adapters.layers.values()))
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(first.rank),
                "ss_network_alpha": str(first.alpha), "ss_base_model": base_model,
                "latentflow.lora_targets": json.dumps(adapters.names)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(adapters.kohya_state_dict(unet), str(path), metadata=metadata)
    return path


class LoRATask(DiffusionTask):
    """Diffusion training where only the adapters learn; text comes from the checkpoint's encoder."""

    def __init__(self, unet: nn.Module, vae: nn.Module, encode_text: Callable[[list[str]], torch.Tensor],
                 config: DiffusionConfig, adapters: LoRAAdapters, *, latent_size: int,
                 preview_prompts: list[str] | None = None) -> None:
        super().__init__(unet, vae, None, config, preview_prompts=preview_prompts, train_text=False,
                         latent_size=latent_size)
        unet.requires_grad_(False)
        self.adapters = adapters
        self._encode_text = encode_text

    def modules(self) -> dict[str, nn.Module]:
        return {"lora": self.adapters}

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"lora.{name}", p) for name, p in self.adapters.named_parameters()]

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        with torch.no_grad():  # the text encoder is frozen: no graph needed
            return self._encode_text(captions)

    def extra_state(self) -> dict[str, Any]:
        return {}
