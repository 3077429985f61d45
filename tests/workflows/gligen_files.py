"""A GLIGEN file in the released layout for a given UNet (random weights, gates open), so
GLIGEN workflows run on the embedded model or a tiny SD 1.x stand-in."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sgm.nets.attention import BasicTransformerBlock
from sgm.nets.gligen import GatedSelfAttentionDense, PositionNet


def write_tiny_gligen(path: Path, unet: nn.Module, phrase_dim: int, *, seed: int = 0, gate: float = 0.5) -> Path:
    """``position_net.*`` plus ``<block>.fuser.*`` for every transformer block of ``unet``."""
    torch.manual_seed(seed)
    context_dim = int(unet.context_dim)
    tensors: dict[str, torch.Tensor] = {}
    net = PositionNet(phrase_dim, context_dim, hidden=64)
    tensors.update({f"position_net.{k}": v for k, v in net.state_dict().items()})
    for name, module in unet.named_modules():
        if isinstance(module, BasicTransformerBlock):
            width = module.attn1.to_q.in_features
            fuser = GatedSelfAttentionDense(width, context_dim, module.attn1.heads, width // module.attn1.heads)
            with torch.no_grad():
                fuser.alpha_attn.fill_(gate)
                fuser.alpha_dense.fill_(gate)
            tensors.update({f"{name}.fuser.{k}": v for k, v in fuser.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(path))
    return path
