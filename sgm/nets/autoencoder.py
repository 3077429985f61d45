"""The KL-regularised autoencoder of latent diffusion (ldm ``AutoencoderKL``).

Key names are those under ``first_stage_model.`` in released checkpoints:
``encoder.down.N.block.M``, ``encoder.mid.attn_1.{norm,q,k,v,proj_out}`` (1x1 convolutions),
``quant_conv``, ``post_quant_conv``, ``decoder.up.N...``. Images are (B, C, H, W) in [-1, 1];
latents are unscaled (multiply by the family's ``scale_factor`` before diffusion).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sgm.nets.attention import chunked_attention
from sgm.nets.interrupt import check_interrupt


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Two GroupNorm-SiLU-conv stages with a residual (``nin_shortcut`` when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        check_interrupt()
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; q/k/v/proj_out are 1x1 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, H*W, C): one head over every pixel
        q, k, v = (t.flatten(2).transpose(1, 2)[:, None] for t in (self.q(h), self.k(h), self.v(h)))
        h = chunked_attention(q, k, v)[:, 0]
        h = h.transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 convolution with ldm's asymmetric (right/bottom) zero padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest 2x upsampling and a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block``, optional ``attn`` and ``downsample``/``upsample``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_interrupt()
        h = self.block_1(x)
        check_interrupt()
        h = self.attn_1(h)
        check_interrupt()
        return self.block_2(h)


def _run_level(level: _Level, h: torch.Tensor) -> torch.Tensor:
    for index, block in enumerate(level.block):
        check_interrupt()  # a block at full resolution can take seconds on a large image
        h = block(h)
        if len(level.attn):
            h = level.attn[index](h)
    return h


class Encoder(nn.Module):
    def __init__(
        self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, in_channels: int, z_channels: int,
        resolution: int, attn_resolutions: Sequence[int], dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        res = resolution
        for i, mult in enumerate(ch_mult):
            level = _Level()
            block_in = ch * in_mult[i]
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in, dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            check_interrupt()
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(
        self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, out_ch: int, z_channels: int,
        resolution: int, attn_resolutions: Sequence[int], dropout: float = 0.0,
    ) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout)
        levels: list[_Level] = []
        for i in reversed(range(len(ch_mult))):
            level = _Level()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, ch * ch_mult[i], dropout))
                block_in = ch * ch_mult[i]
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, level)  # up[0] is the full-resolution level, as in ldm
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            check_interrupt()
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass(frozen=True)
class DiagonalGaussian:
    """The encoder's posterior N(mean, std^2) per latent element; mean/std: (B, C, h, w)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "DiagonalGaussian":
        mean, logvar = moments.chunk(2, dim=1)
        # The same clamp as ldm keeps exp() finite for untrained or diverging encoders.
        return cls(mean, logvar.clamp(-30.0, 20.0))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None) -> torch.Tensor:
        """mean + std * noise; pass a generator so the draw is reproducible."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over (C, h, w): (B,)."""
        return 0.5 * torch.sum(self.mean**2 + torch.exp(self.logvar) - 1.0 - self.logvar, dim=(1, 2, 3))


class AutoencoderKL(nn.Module):
    """Encoder + quant convs + decoder; ``encode`` gives the posterior mean, ``decode`` images.

    ``decode`` returns the decoder's raw output, nominally in [-1, 1]; it is not clamped so
    that outputs match reference implementations (clamp when converting to pixels).
    """

    # Contiguous (NCHW) on CUDA: GroupNorm feeds almost every convolution here, at up to full
    # image resolution, and CUDA's group_norm works in NCHW only (see sgm.devices.use_channels_last).
    cuda_channels_last = False

    def __init__(
        self,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        in_channels: int = 3,
        out_ch: int = 3,
        z_channels: int = 4,
        embed_dim: int = 4,
        resolution: int = 256,
        attn_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, in_channels, z_channels, resolution, attn_resolutions, dropout)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, out_ch, z_channels, resolution, attn_resolutions, dropout)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.embed_dim = embed_dim
        self.downscale = 2 ** (len(ch_mult) - 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def encode_posterior(self, images: torch.Tensor) -> DiagonalGaussian:
        """images: (B, in_channels, H, W) in [-1, 1] -> posterior over (B, embed_dim, H/f, W/f)."""
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(images.to(self.dtype))))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, in_channels, H, W) in [-1, 1] -> posterior mean (B, embed_dim, H/f, W/f), unscaled."""
        return self.encode_posterior(images).mean

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: (B, embed_dim, h, w), unscaled -> images (B, out_ch, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(latents.to(self.dtype)))

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Training pass: reconstruct from a posterior sample; returns (reconstruction, posterior)."""
        posterior = self.encode_posterior(images)
        return self.decode(posterior.sample(generator)), posterior

    def decode_tiled(
        self, latents: torch.Tensor, tile_size: int = 64, overlap: int = 16, shared_norm: bool = True
    ) -> torch.Tensor:
        """Decode in overlapping latent tiles of ``tile_size`` (latent pixels) and blend them.

        Peak memory is that of one tile's decode plus the output. Overlaps are blended with
        linear ramps so tile borders leave no seam. ``shared_norm`` gives every tile the same
        GroupNorm statistics, estimated by one decode of the latents shrunk to a tile: per-tile
        statistics are what make tiles differ in brightness and colour.
        """
        return tiled_apply(self.decode, latents, tile_size, overlap, self.downscale, shared_norm, self)

    def encode_tiled(
        self, images: torch.Tensor, tile_size: int = 512, overlap: int = 64, shared_norm: bool = True
    ) -> torch.Tensor:
        """Posterior mean computed in overlapping image tiles of ``tile_size`` pixels, blended."""
        f = self.downscale
        if tile_size % f or overlap % f:
            raise ValueError(f"encode_tiled: tile_size ({tile_size}) and overlap ({overlap}) must be multiples of {f}")
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(f"encode_tiled: image size {tuple(images.shape[-2:])} must be a multiple of {f}")
        return tiled_apply(self.encode, images, tile_size, overlap, 1 / f, shared_norm, self)


class _SharedGroupNorm:
    """Record each GroupNorm's statistics in one pass, then normalise later passes with them.

    Used as ``with _SharedGroupNorm(model) as shared: fn(small); shared.apply(); fn(tile)``;
    calls are matched by order, so a module called several times keeps one entry per call.
    """

    def __init__(self, model: nn.Module) -> None:
        self.norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        self.stats: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.recording = True
        self.calls: dict[int, int] = {}

    def __enter__(self) -> "_SharedGroupNorm":
        self.handles = [m.register_forward_hook(self._hook) for m in self.norms]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def apply(self) -> None:
        self.recording = False

    def next_pass(self) -> None:
        self.calls = {}

    def _hook(self, module: nn.GroupNorm, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        x = inputs[0]
        grouped = x.float().reshape(x.shape[0], module.num_groups, -1)  # (B, G, C/G * H * W)
        if self.recording:
            var, mean = torch.var_mean(grouped, dim=-1, unbiased=False, keepdim=True)
            self.stats.setdefault(id(module), []).append((mean, var))
            return None
        index = self.calls.get(id(module), 0)
        self.calls[id(module)] = index + 1
        mean, var = self.stats[id(module)][index]
        normed = ((grouped - mean) * torch.rsqrt(var + module.eps)).reshape(x.shape).to(x.dtype)
        if module.affine:
            normed = normed * module.weight[:, None, None] + module.bias[:, None, None]
        return normed


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, fade_start: int, fade_end: int, device: torch.device) -> torch.Tensor:
    """Weights (length,) rising linearly over ``fade_start`` leading and ``fade_end`` trailing samples."""
    weight = torch.ones(length, device=device)
    if fade_start:
        weight[:fade_start] = torch.linspace(0, 1, fade_start + 2, device=device)[1:-1]
    if fade_end:
        weight[length - fade_end:] = torch.linspace(1, 0, fade_end + 2, device=device)[1:-1]
    return weight


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int, scale: float,
    shared_norm: bool = False, model: nn.Module | None = None,
) -> torch.Tensor:
    """Apply a spatial map ``fn`` tile by tile and blend the overlaps; returns float32.

    x: (B, C, H, W); ``fn`` maps a (B, C, h, w) tile to (B, C', h*scale, w*scale). Tiles are
    ``tile`` x ``tile`` with at least ``overlap`` shared samples; in each overlap the two tiles
    are mixed with linear ramps, so a map that is local gives exactly its untiled result away
    from tile borders and no discontinuity anywhere. ``shared_norm`` (needs ``model``) freezes
    every GroupNorm of ``model`` to statistics from one pass over the shrunk input.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"tiling needs 0 <= overlap < tile_size, got overlap={overlap}, tile_size={tile}")
    height, width = x.shape[-2:]
    ys, xs = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
    if len(ys) == len(xs) == 1:
        return fn(x)
    shared = _SharedGroupNorm(model) if shared_norm and model is not None else None
    if shared is not None:
        shared.__enter__()
        # Statistics from the whole input shrunk to one tile (area averaging keeps means).
        step = max(1, -(-max(height, width) // tile))
        multiple = round(1 / scale) if scale < 1 else 1  # encoders need sizes divisible by f
        size = [max(multiple, (s // step) // multiple * multiple) for s in (height, width)]
        fn(F.interpolate(x, size=size, mode="area") if step > 1 else x)
        shared.apply()
    try:
        out: torch.Tensor | None = None
        weight_sum = torch.zeros(1, 1, round(height * scale), round(width * scale), device=x.device)
        for y0 in ys:
            for x0 in xs:
                check_interrupt()
                if shared is not None:
                    shared.next_pass()
                piece = fn(x[..., y0:y0 + tile, x0:x0 + tile]).float()
                th, tw = piece.shape[-2:]
                oy, ox = round(y0 * scale), round(x0 * scale)
                # Fade only edges shared with a neighbour tile, over the width of the actual overlap.
                top = round((ys[ys.index(y0) - 1] + tile - y0) * scale) if y0 > 0 else 0
                bottom = round((y0 + tile - ys[ys.index(y0) + 1]) * scale) if y0 != ys[-1] else 0
                left = round((xs[xs.index(x0) - 1] + tile - x0) * scale) if x0 > 0 else 0
                right = round((x0 + tile - xs[xs.index(x0) + 1]) * scale) if x0 != xs[-1] else 0
                w = _ramp(th, top, bottom, x.device)[:, None] * _ramp(tw, left, right, x.device)[None, :]
                if out is None:
                    out = torch.zeros(*piece.shape[:2], *weight_sum.shape[-2:], device=x.device)
                out[..., oy:oy + th, ox:ox + tw] += piece * w
                weight_sum[..., oy:oy + th, ox:ox + tw] += w
    finally:
        if shared is not None:
            shared.__exit__()
    assert out is not None
    return out / weight_sum
