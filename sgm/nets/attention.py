"""Attention and transformer blocks shared by the UNet (ldm/sgm layout and key names).

Module attribute names are those of the released single-file checkpoints
(``transformer_blocks.N.attn1.to_q``, ``ff.net.0.proj``, ``norm1..3``, ``proj_in``/``proj_out``)
so a checkpoint's state dict loads without renaming. Attention always runs through
``torch.nn.functional.scaled_dot_product_attention`` which picks the fused kernel for the
device and dtype (flash / memory-efficient on CUDA, the blocked CPU kernel elsewhere).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sgm.nets.interrupt import check_interrupt

# Above this many queries, attention runs in query chunks with an interrupt point between
# them: at 4096x4096 pixels one SD self-attention call is 262k x 262k and takes minutes on a
# CPU. A chunk's score matrix (batch x heads x chunk x keys) is kept under CHUNK_SCORES
# elements, which also bounds memory where the kernel materialises the scores. Each query
# row is independent, so chunking changes no result.
CHUNK_ABOVE = 16384
CHUNK_SCORES = 1 << 25  # 128 MiB of float32 scores per chunk


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention`` of q: (B, H, Tq, d), k/v: (B, H, Tk, d) -> (B, H, Tq, dv),
    in query chunks (checking for interrupts between them) when Tq is large."""
    length = q.shape[-2]
    if length <= CHUNK_ABOVE:
        return F.scaled_dot_product_attention(q, k, v)
    rows = max(1, q[..., :1, :1].numel() * k.shape[-2])  # score elements per query
    chunk = max(16, min(4096, CHUNK_SCORES // rows))
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for start in range(0, length, chunk):
        check_interrupt()
        out[..., start:start + chunk, :] = F.scaled_dot_product_attention(q[..., start:start + chunk, :], k, v)
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention over packed heads.

    q: (B, Tq, heads * d), k/v: (B, Tk, heads * d) -> (B, Tq, heads * d).
    """
    batch, _, inner = q.shape
    dim_head = inner // heads
    q, k, v = (t.view(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = chunked_attention(q, k, v)  # (B, heads, Tq, d)
    return out.transpose(1, 2).reshape(batch, -1, inner)


class CrossAttention(nn.Module):
    """Self-attention (``context=None``) or cross-attention onto ``context``."""

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        # Set only while a model patch runs (PAG / SAG: ``sgm.sampling.guidance_patches``; HyperTile, ToMe:
        # ``sgm.nets.attention_patches``): replaces ``attention(q, k, v, heads)`` -> (B, Tq, heads * d) here.
        self.attention_override: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, query_dim); context: (B, S, context_dim) or None for self-attention
        context = x if context is None else context
        attend = attention if self.attention_override is None else self.attention_override
        out = attend(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """``net.0`` GEGLU, ``net.1`` dropout, ``net.2`` output projection (original key names)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and GEGLU feed-forward, each residual."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.use_checkpoint = use_checkpoint
        # Set only while an extension runs (GLIGEN's fuser, ``sgm.nets.gligen.gligen_applied``):
        # a map of the tokens between self- and cross-attention.
        self.between_attentions: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            # Recompute activations in backward: trades ~30% compute for most activation memory.
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        if self.between_attentions is not None:
            x = self.between_attentions(x)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on ``context``.

    ``use_linear`` selects SD2/SDXL's linear ``proj_in``/``proj_out`` (applied after
    flattening) instead of SD1's 1x1 convolutions; the two are the same map with the weight
    stored as (C, C) or (C, C, 1, 1).
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
        use_linear: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        inner_dim = n_heads * d_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        if use_linear:
            self.proj_in: nn.Module = nn.Linear(in_channels, inner_dim)
            self.proj_out: nn.Module = nn.Linear(inner_dim, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout, context_dim, use_checkpoint)
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, C, H, W); context: (B, S, context_dim)
        batch, _, height, width = x.shape
        # For a channels_last x, (B, C, H, W) <-> (B, H*W, C) are free views; for a
        # contiguous x they are copies either way. Keeping x's layout end to end avoids
        # mixed-layout adds and convolutions, which are several times slower on CPU.
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, -1)  # (B, H*W, inner)
        if self.use_linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            check_interrupt()
            h = block(h, context)
        if self.use_linear:
            h = self.proj_out(h)
        h = h.reshape(batch, height, width, -1).permute(0, 3, 1, 2)  # (B, C, H, W), NHWC strides
        if not channels_last:
            h = h.contiguous()
        if not self.use_linear:
            h = self.proj_out(h)
        return h + x


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), CLIP's GELU approximation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """OpenAI CLIP's pre-norm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with a
    quick-GELU MLP; x: (B, N, C) tokens, attention over each item's N tokens (batch first). The
    parameter names (``attn.in_proj_weight``, ``mlp.c_fc`` ...) are those of the released union
    ControlNet and T2I style adapter files."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(channels, channels * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(channels * 4, channels))
        self.ln_2 = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))
