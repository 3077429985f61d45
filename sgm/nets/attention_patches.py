"""Block patches that change the UNet's self-attention (``attn1``) while they are bound
(``sgm.nets.unet_patches.unet_patches_applied``), through ``CrossAttention.attention_override``.

* :class:`HyperTile` -- tfernd's HyperTile (2023): self-attention at the highest resolutions runs
  within tiles (their count per side picked at random among a few divisors, per call), which costs
  much less at large sizes.
* :class:`TokenMerging` -- ToMe for SD (Bolya & Hoffman 2023, "Token Merging for Fast Stable
  Diffusion"): similar query tokens of the full-resolution self-attention are averaged before it and
  the result copied back to them after.

Two such patches compose: each one's ``attend(q, k, v, heads, inner)`` calls the attention it
replaced (``inner``: the previous patch's, or plain attention).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from sgm.nets.attention import BasicTransformerBlock, attention
from sgm.nets.unet import BlockHooks

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def override_self_attention(unet: nn.Module,
                            attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, Attend], torch.Tensor]
                            ) -> Callable[[], None]:
    """Make every self-attention layer (``attn1``) of ``unet`` compute ``attend(q, k, v, heads, inner)``,
    ``inner`` being what the layer computed before; returns the undo."""
    layers = [m.attn1 for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    before = [layer.attention_override for layer in layers]
    for layer, previous in zip(layers, before):
        inner: Attend = attention if previous is None else previous
        layer.attention_override = (lambda inner_: lambda q, k, v, heads: attend(q, k, v, heads, inner_))(inner)

    def detach() -> None:
        for layer, override in zip(layers, before):
            layer.attention_override = override

    return detach


# ---------------------------------------------------------------------------- HyperTile


def tile_count(size: int, min_tile: int, options: int, rng: random.Random) -> int:
    """Into how many tiles to cut ``size`` tokens: size // d for d one of the ``options`` smallest
    divisors of ``size`` that are >= ``min_tile`` (capped at size), picked by ``rng``."""
    min_tile = min(min_tile, size)
    divisors = [d for d in range(min_tile, size + 1) if size % d == 0][:max(1, options)]
    return size // rng.choice(divisors)


@dataclass(frozen=True)
class HyperTile:
    """HyperTile (tfernd, 2023): self-attention over the full-resolution tokens (and down to ``max_depth``
    levels below) is computed within tiles of about ``tile_size`` image pixels, the tiles' count per side
    chosen at random among ``swap_size`` options at each call (a fixed ``seed`` per sampling);
    ``scale_depth`` doubles the tile size per level. Cross-attention is untouched."""

    tile_size: int = 256
    swap_size: int = 2
    max_depth: int = 0
    scale_depth: bool = False
    seed: int = 0

    def bind(self, unet: nn.Module, model_sampling: Any) -> BlockHooks:
        return _HyperTileHooks(self, unet)


def _to_tiles(t: torch.Tensor, height: int, width: int, nh: int, nw: int) -> torch.Tensor:
    """(B, height*width, C) row-major tokens -> (B*nh*nw, (height/nh)*(width/nw), C), tile by tile."""
    batch, _, channels = t.shape
    t = t.reshape(batch, nh, height // nh, nw, width // nw, channels).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(batch * nh * nw, -1, channels)


def _from_tiles(t: torch.Tensor, height: int, width: int, nh: int, nw: int) -> torch.Tensor:
    channels = t.shape[-1]
    t = t.reshape(-1, nh, nw, height // nh, width // nw, channels).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(-1, height * width, channels)


class _HyperTileHooks(BlockHooks):
    def __init__(self, patch: HyperTile, unet: nn.Module) -> None:
        self.patch, self.unet = patch, unet
        self.rng = random.Random(patch.seed)
        self.levels: list[tuple[int, int]] = []  # token grid per depth, of the current UNet call

    def after_input_block(self, h: torch.Tensor, index: int, timesteps: torch.Tensor) -> torch.Tensor:
        if index == 0:  # the latent's size: each level below halves it (stride-2 convolutions round up)
            height, width = h.shape[-2:]
            self.levels = []
            for _ in range(self.patch.max_depth + 1):
                self.levels.append((height, width))
                height, width = -(-height // 2), -(-width // 2)
        return h

    def attach(self) -> Callable[[], None]:
        return override_self_attention(self.unet, self.attend)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
               inner: Attend = attention) -> torch.Tensor:
        tokens = q.shape[1]
        depth = next((i for i, (h, w) in enumerate(self.levels) if h * w == tokens), None)
        if depth is None:
            return inner(q, k, v, heads)
        height, width = self.levels[depth]
        factor = 2 ** depth if self.patch.scale_depth else 1
        latent_tile = max(32, self.patch.tile_size) // 8 * factor
        nh = tile_count(height, latent_tile, self.patch.swap_size, self.rng)
        nw = tile_count(width, latent_tile, self.patch.swap_size, self.rng)
        if nh * nw == 1:
            return inner(q, k, v, heads)
        tiled = [_to_tiles(t, height, width, nh, nw) for t in (q, k, v)]
        return _from_tiles(inner(*tiled, heads), height, width, nh, nw)


# ---------------------------------------------------------------------------- token merging


@dataclass(frozen=True)
class MergePlan:
    """Which tokens of a (B, N, C) sequence ToMe merges: ``src`` / ``dst`` (N_src,) / (N_dst,) token
    indices, and per batch row the src positions that stay (``kept``, (B, N_src - r)), those merged
    (``moved``, (B, r)) and the dst position each moved token joins (``into``, (B, r))."""

    src: torch.Tensor
    dst: torch.Tensor
    kept: torch.Tensor
    moved: torch.Tensor
    into: torch.Tensor

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N - r, C): kept src tokens, then each dst token averaged with those merged into it."""
        channels = x.shape[-1]
        src, dst = x[:, self.src], x[:, self.dst]
        kept = src.gather(1, self.kept[..., None].expand(-1, -1, channels))
        moved = src.gather(1, self.moved[..., None].expand(-1, -1, channels))
        dst = dst.scatter_reduce(1, self.into[..., None].expand(-1, -1, channels), moved, reduce="mean")
        return torch.cat([kept, dst], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N - r, C) -> (B, N, C): every token gets the row it was merged into (or its own)."""
        batch, _, channels = y.shape
        n_kept = self.kept.shape[1]
        kept, dst = y[:, :n_kept], y[:, n_kept:]
        src = y.new_empty(batch, self.src.numel(), channels)
        src.scatter_(1, self.kept[..., None].expand(-1, -1, channels), kept)
        src.scatter_(1, self.moved[..., None].expand(-1, -1, channels),
                     dst.gather(1, self.into[..., None].expand(-1, -1, channels)))
        out = y.new_empty(batch, self.src.numel() + self.dst.numel(), channels)
        out[:, self.src] = src
        out[:, self.dst] = dst
        return out


def plan_token_merge(metric: torch.Tensor, height: int, width: int, r: int,
                     generator: torch.Generator | None) -> MergePlan:
    """Bipartite soft matching on a height x width token grid (Bolya & Hoffman 2023, "Token Merging for
    Fast Stable Diffusion", sec. 3-4): one token of every 2x2 cell is a destination (random with
    ``generator``, the top-left one without), every other token a source; the ``r`` sources most
    cosine-similar (by ``metric`` (B, N, C)) to some destination are merged into their best one."""
    device = metric.device
    cells_y, cells_x = height // 2, width // 2
    if generator is None:
        pick = torch.zeros(cells_y, cells_x, dtype=torch.long)
    else:
        pick = torch.randint(4, (cells_y, cells_x), generator=generator)
    is_dst = torch.zeros(height, width, dtype=torch.bool)
    rows = torch.arange(cells_y)[:, None] * 2 + pick // 2
    cols = torch.arange(cells_x)[None, :] * 2 + pick % 2
    is_dst[rows, cols] = True
    flat = is_dst.reshape(-1)
    dst, src = flat.nonzero().reshape(-1).to(device), (~flat).nonzero().reshape(-1).to(device)
    r = min(r, src.numel())
    unit = metric / metric.norm(dim=-1, keepdim=True)
    scores = unit[:, src] @ unit[:, dst].transpose(-1, -2)  # (B, N_src, N_dst) cosine similarity
    best, best_dst = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)  # most similar sources first
    moved, kept = order[:, :r], order[:, r:]
    return MergePlan(src, dst, kept, moved, best_dst.gather(1, moved))


@dataclass(frozen=True)
class TokenMerging:
    """ToMe for SD at ``ratio``: in every full-resolution self-attention, ``ratio`` of the query tokens
    are merged (averaged) into similar ones before attention and the result copied back to them after,
    so attention runs over fewer queries. Similarity is measured on the keys, as ToMe does (Bolya et
    al. 2023, "Token Merging: Your ViT But Faster", sec. 3). Destination cells are random (``seed``)
    for even batches, top-left for odd ones."""

    ratio: float
    seed: int = 0

    def bind(self, unet: nn.Module, model_sampling: Any) -> BlockHooks:
        return _TokenMergingHooks(self, unet)


class _TokenMergingHooks(BlockHooks):
    def __init__(self, patch: TokenMerging, unet: nn.Module) -> None:
        self.patch, self.unet = patch, unet
        self.generator = torch.Generator().manual_seed(patch.seed)
        self.grid: tuple[int, int] = (0, 0)

    def after_input_block(self, h: torch.Tensor, index: int, timesteps: torch.Tensor) -> torch.Tensor:
        if index == 0:
            self.grid = (int(h.shape[-2]), int(h.shape[-1]))
        return h

    def attach(self) -> Callable[[], None]:
        return override_self_attention(self.unet, self.attend)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
               inner: Attend = attention) -> torch.Tensor:
        height, width = self.grid
        r = int(q.shape[1] * self.patch.ratio)
        if q.shape[1] != height * width or r <= 0:
            return inner(q, k, v, heads)
        plan = plan_token_merge(k, height, width, r, None if q.shape[0] % 2 else self.generator)
        return plan.unmerge(inner(plan.merge(q), k, v, heads))
