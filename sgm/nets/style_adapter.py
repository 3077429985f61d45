"""TencentARC's T2I style adapter (Mou et al. 2023, "T2I-Adapter", sec. 3.4); its tokens join the text
conditioning in ``sgm.io.style_model_files.append_style`` (ComfyUI's StyleModelApply).

The adapter reads the hidden states of a CLIP ViT-L/14 image tower (the last layer's states, before the
post LayerNorm: ``ClipVisionOutput.last_hidden_state``, (B, 257, 1024)), appends ``num_token`` learned
query tokens, runs a small pre-norm transformer over the lot and keeps the queries' final states,
normalised and projected to the text encoder's width: (B, num_token, 768) extra context tokens for an
SD 1.x UNet's cross-attention.

Attribute names are those of ``t2iadapter_style_sd14v1.pth`` (``ldm.modules.encoders.adapter.StyleAdapter``,
``transformer_layes`` (sic)): ``style_embedding`` (1, N, W), ``ln_pre``, ``ln_post``, ``proj`` (W, C) and per
layer ``attn.in_proj_weight`` / ``in_proj_bias`` (q, k, v stacked, as ``nn.MultiheadAttention`` stores
them), ``attn.out_proj``, ``ln_1``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj`` (OpenAI CLIP's block, quick-GELU).
LayerNorms run in float32, as the original's do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sgm.nets.attention import ResidualAttentionBlock

StrengthType = Literal["multiply", "attn_bias"]
STRENGTH_TYPES: tuple[StrengthType, ...] = ("multiply", "attn_bias")


@dataclass(frozen=True)
class StyleAdapterConfig:
    """Sizes of one style adapter; the released SD 1.4 file is ``StyleAdapterConfig()``."""

    width: int = 1024  # CLIP ViT-L/14 hidden width
    context_dim: int = 768  # SD 1.x text width
    heads: int = 8  # not recorded in the file: the original's (and ComfyUI's) 8
    layers: int = 3
    num_token: int = 8


class _LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input's dtype (the original's fp16 guard)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class StyleAdapter(nn.Module):
    """``forward(hidden (B, T, width)) -> style tokens (B, num_token, context_dim)``."""

    def __init__(self, config: StyleAdapterConfig = StyleAdapterConfig()) -> None:
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"style adapter: width {config.width} is not a multiple of {config.heads} heads")
        self.config = config
        self.transformer_layes = nn.Sequential(*(ResidualAttentionBlock(config.width, config.heads)
                                                 for _ in range(config.layers)))
        self.style_embedding = nn.Parameter(torch.empty(1, config.num_token, config.width))
        self.ln_post = _LayerNorm32(config.width)
        self.ln_pre = _LayerNorm32(config.width)
        self.proj = nn.Parameter(torch.empty(config.width, config.context_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.ndim != 3 or hidden.shape[-1] != self.config.width:
            raise ValueError(
                f"style adapter: expected CLIP vision hidden states (B, T, {self.config.width}), got shape "
                f"{tuple(hidden.shape)}; encode the image with the CLIP vision model the style model was made for "
                f"(ViT-L/14, width 1024, for t2iadapter_style_sd14v1)")
        dtype = self.proj.dtype
        queries = self.style_embedding.to(dtype).expand(hidden.shape[0], -1, -1)  # (B, N, W)
        x = self.ln_pre(torch.cat([hidden.to(dtype), queries], dim=1))  # (B, T + N, W)
        x = self.transformer_layes(x)
        x = self.ln_post(x[:, -self.config.num_token:])  # (B, N, W): the queries' final states
        return x @ self.proj  # (B, N, context_dim)


def style_tokens(adapter: StyleAdapter, last_hidden_state: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """The adapter's tokens of one encoded image batch, all images' tokens in one row:
    (B, T, W) -> (1, B * num_token, context_dim), float32 on the CPU (as ComfyUI joins a batch of style images)."""
    with torch.no_grad():
        tokens = adapter(last_hidden_state.to(device))  # (B, N, C)
    return tokens.float().cpu().reshape(1, -1, tokens.shape[-1])
