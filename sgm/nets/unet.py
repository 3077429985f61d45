"""The latent diffusion UNet of ldm / sgm (``openaimodel.UNetModel``), readable top to bottom.

Constructor parameters carry the names of the original configs, and submodule names
produce the exact keys found under ``model.diffusion_model.`` in released checkpoints:
``time_embed.0/2``, ``label_emb.0.0/0.2``, ``input_blocks.N.M``, ``middle_block.N``,
``output_blocks.N.M``, ``out.0/2``. The architecture is the one of Rombach et al. 2022
("High-Resolution Image Synthesis with Latent Diffusion Models") and Podell et al. 2023
(SDXL: per-level transformer depth, vector conditioning through ``label_emb``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sgm.nets.attention import SpatialTransformer
from sgm.nets.interrupt import check_interrupt


class BlockHooks:
    """Changes to what ``UNetModel.forward`` passes between its blocks, installed only while a
    model patch samples (``sgm.nets.unet_patches.unet_patches_applied``). Every method defaults to
    "no change"; ``timesteps`` (B,) is the call's model timestep, ``index`` the block's position in
    ``input_blocks`` / ``output_blocks``."""

    def after_input_block(self, h: torch.Tensor, index: int, timesteps: torch.Tensor) -> torch.Tensor:
        """An input block's output (B, C, H, W) before it is kept as a skip connection."""
        return h

    def after_skip(self, h: torch.Tensor, index: int, timesteps: torch.Tensor) -> torch.Tensor:
        """An input block's output after its skip connection was kept (it goes on to the next block)."""
        return h

    def before_output_block(self, h: torch.Tensor, skip: torch.Tensor, index: int,
                            timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone features h (B, C, H, W) and the skip (B, C', H', W') an output block concatenates."""
        return h, skip


@dataclass(frozen=True)
class ControlResiduals:
    """What control models add to one UNet call (ldm's ``ControlledUnetModel``, T2I-Adapter).

    skips:  one tensor (or None) per input block, added to that block's skip connection where an
            output block takes it (ControlNet's zero-conv outputs), in input-block order.
    middle: added to the middle block's output (ControlNet's ``middle_block_out``).
    inputs: one tensor (or None) per input block, added to the block's output before it goes on
            and becomes a skip (T2I-Adapter features, Mou et al. 2023).
    Empty tuples mean "nothing there"; ``a + b`` sums two controls (stacked ControlNets).
    """

    skips: tuple[torch.Tensor | None, ...] = ()
    middle: torch.Tensor | None = None
    inputs: tuple[torch.Tensor | None, ...] = ()

    def __add__(self, other: "ControlResiduals") -> "ControlResiduals":
        def add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            return b if a is None else a if b is None else a + b

        def add_all(a: tuple, b: tuple) -> tuple:
            n = max(len(a), len(b))
            a, b = a + (None,) * (n - len(a)), b + (None,) * (n - len(b))
            return tuple(add(u, v) for u, v in zip(a, b))

        return ControlResiduals(add_all(self.skips, other.skips), add(self.middle, other.middle),
                                add_all(self.inputs, other.inputs))

    def scaled(self, strength: float) -> "ControlResiduals":
        def mul(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t * strength

        return ControlResiduals(tuple(map(mul, self.skips)), mul(self.middle), tuple(map(mul, self.inputs)))

    def rows(self, index: slice) -> "ControlResiduals":
        """The residuals of batch rows ``index`` (a UNet call split in chunks)."""
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return ControlResiduals(tuple(map(take, self.skips)), take(self.middle), tuple(map(take, self.inputs)))


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (fractional) timesteps, as in ldm.

    timesteps: (B,) -> (B, dim), float32.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.float()[:, None] * torch.exp(exponent)[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


class ResBlock(nn.Module):
    """Residual block with additive timestep embedding (``in_layers``/``emb_layers``/``out_layers``)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        out_channels: int | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W); emb: (B, E)
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        check_interrupt()
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (``op``)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling followed by a 3x3 convolution (``conv``)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        # An explicit size lets odd latent sizes (e.g. 8*k+4 pixels) meet their skip connection.
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(output_size), mode="nearest")
        return self.conv(x)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence whose layers each receive what they need: emb, context or output size."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        output_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, output_size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """The ldm/sgm diffusion UNet; ``forward(x, timesteps, context, y)`` returns the raw prediction.

    attention_resolutions: downsampling factors (1, 2, 4, ...) at which SpatialTransformers run.
    transformer_depth: int, or one depth per level (SDXL: [0, 2, 10]; a 0 still follows
        ``attention_resolutions`` in sgm but is treated here as "no transformer at this level").
    num_heads / num_head_channels: exactly one is -1; heads = channels // num_head_channels.
    num_classes: int for class-conditional models, "sequential" for SDXL's vector ``y``
        of size ``adm_in_channels``.
    with_decoder: False builds the time embedding, input and middle blocks only (ControlNet).
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        num_heads: int = -1,
        num_head_channels: int = -1,
        transformer_depth: int | Sequence[int] = 1,
        context_dim: int | None = None,
        use_linear_in_transformer: bool = False,
        adm_in_channels: int | None = None,
        num_classes: int | str | None = None,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
        transformer_depth_middle: int | None = None,
        *,
        with_decoder: bool = True,
    ) -> None:
        super().__init__()
        if (num_heads == -1) == (num_head_channels == -1):
            raise ValueError(
                f"UNetModel needs exactly one of num_heads ({num_heads}) or num_head_channels "
                f"({num_head_channels}); set the other to -1 (SD1 uses num_heads=8, SD2/SDXL num_head_channels=64)"
            )
        if isinstance(transformer_depth, int):
            transformer_depth = [transformer_depth] * len(channel_mult)
        transformer_depth = list(transformer_depth)
        if len(transformer_depth) != len(channel_mult):
            raise ValueError(
                f"transformer_depth has {len(transformer_depth)} entries but channel_mult has "
                f"{len(channel_mult)} levels; give one depth per level or a single int"
            )
        if transformer_depth_middle is None:
            transformer_depth_middle = transformer_depth[-1]
        if num_classes == "sequential" and adm_in_channels is None:
            raise ValueError('num_classes="sequential" (SDXL vector conditioning) needs adm_in_channels')
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.adm_in_channels = adm_in_channels
        self.context_dim = context_dim
        # Set only while a model patch samples (FreeU, Deep Shrink: ``sgm.nets.unet_patches``).
        self.block_hooks: tuple[BlockHooks, ...] = ()

        def heads_for(ch: int) -> tuple[int, int]:
            if num_head_channels == -1:
                return num_heads, ch // num_heads
            return ch // num_head_channels, num_head_channels

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            n_heads, d_head = heads_for(ch)
            return SpatialTransformer(
                ch, n_heads, d_head, depth, dropout, context_dim, use_linear_in_transformer, use_checkpoint
            )

        def resblock(ch: int, out_ch: int) -> ResBlock:
            return ResBlock(ch, time_embed_dim, dropout, out_ch, use_checkpoint)

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        if num_classes == "sequential":
            assert adm_in_channels is not None
            self.label_emb: nn.Module = nn.Sequential(
                nn.Sequential(
                    nn.Linear(adm_in_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
                )
            )
        elif isinstance(num_classes, int):
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)
        elif num_classes is not None:
            raise ValueError(f'num_classes must be None, an int or "sequential", got {num_classes!r}')

        def has_attention(level: int, ds: int) -> bool:
            return ds in attention_resolutions and transformer_depth[level] > 0

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                if has_attention(level, ds):
                    layers.append(transformer(ch, transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            resblock(ch, ch), transformer(ch, transformer_depth_middle), resblock(ch, ch)
        )
        # Channels of each input block's output: what a ControlNet's zero convolutions map.
        self.skip_channels: tuple[int, ...] = tuple(skip_channels)
        if not with_decoder:  # the encoder half only (a ControlNet's trainable copy)
            return

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if has_attention(level, ds):
                    layers.append(transformer(ch, transformer_depth[level]))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control: ControlResiduals | None = None,
    ) -> torch.Tensor:
        """x: (B, in_channels, H, W), timesteps: (B,), context: (B, S, context_dim),
        y: (B, adm_in_channels) or (B,) class ids -> (B, out_channels, H, W).
        control: residuals of ControlNets / T2I-Adapters for this call (``ControlResiduals``)."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError(
                "this UNet " + ("needs" if self.num_classes is not None else "takes no")
                + f" vector conditioning y (num_classes={self.num_classes!r}); got "
                + ("None" if y is None else f"a tensor of shape {tuple(y.shape)}")
            )
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        if control is not None:
            self._check_control(control)
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))  # (B, 4*mc)
        if y is not None:
            emb = emb + self.label_emb(y.to(dtype) if y.is_floating_point() else y)
        if context is not None:
            context = context.to(dtype)
        h = x.to(dtype)
        hooks = self.block_hooks
        skips = []
        # An interrupt lands between blocks (and inside attention): one call at a large size
        # can take minutes, the sampler only checks between steps.
        for index, block in enumerate(self.input_blocks):
            check_interrupt()
            h = block(h, emb, context)
            if control is not None and index < len(control.inputs) and control.inputs[index] is not None:
                h = h + self._fit(control.inputs[index], h)  # type: ignore[arg-type]
            for hook in hooks:
                h = hook.after_input_block(h, index, timesteps)
            skips.append(h)
            for hook in hooks:
                h = hook.after_skip(h, index, timesteps)
        check_interrupt()
        h = self.middle_block(h, emb, context)
        if control is not None and control.middle is not None:
            h = h + self._fit(control.middle, h)
        for index, block in enumerate(self.output_blocks):
            check_interrupt()
            skip = skips.pop()
            if control is not None and len(skips) < len(control.skips) and control.skips[len(skips)] is not None:
                skip = skip + self._fit(control.skips[len(skips)], skip)  # type: ignore[arg-type]
            for hook in hooks:
                h, skip = hook.before_output_block(h, skip, index, timesteps)
            h = torch.cat([h, skip], dim=1)
            # The next skip (if any) tells an Upsample its target size.
            size = skips[-1].shape[-2:] if skips else None
            h = block(h, emb, context, size)
        return self.out(h).to(x.dtype)

    def _fit(self, residual: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """A control residual in h's dtype; while a block patch runs that resized the features (Deep Shrink),
        resized to them too (bilinear). Without patches a size mismatch stays an error."""
        residual = residual.to(h.dtype)
        if self.block_hooks and residual.shape[-2:] != h.shape[-2:]:
            residual = F.interpolate(residual, size=tuple(h.shape[-2:]), mode="bilinear", align_corners=False)
        return residual

    def _check_control(self, control: ControlResiduals) -> None:
        n = len(self.input_blocks)
        for name, residuals in (("skips", control.skips), ("inputs", control.inputs)):
            if len(residuals) > n:
                raise ValueError(
                    f"control gives {len(residuals)} {name} residuals but this UNet has {n} input blocks; "
                    "the ControlNet / T2I-Adapter was made for another architecture (SD1 vs SDXL?)")
