"""T2I-Adapter (Mou et al. 2023, "T2I-Adapter: Learning Adapters to Dig out More Controllable
Ability for Text-to-Image Diffusion Models"), the full adapter in the released (TencentARC) layout.

The hint image is pixel-unshuffled by 8 to the latent grid, projected by ``conv_in`` and passed
through ``levels x num_res_blocks`` residual blocks (``body.N``: optional ``in_conv`` where the
width changes, ``block1`` 3x3, ReLU, ``block2`` 1x1 or 3x3, and either the identity or a
``skep`` convolution as the shortcut); a level after the first starts with a 2x average pool.
Each level's last output is one feature, added to the UNet's activation after the last
residual block of the matching level (before its downsampling), so it also reaches that skip.
The features do not depend on the noisy latent or the timestep: computed once per hint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sgm.nets.unet import ControlResiduals


class AdapterResnetBlock(nn.Module):
    """``body.N``: [2x avg pool] -> [in_conv] -> x + block2(relu(block1(x))) (or + skep(x))."""

    def __init__(self, in_channels: int, out_channels: int, down: bool, kernel_size: int = 1,
                 skip_conv: bool = False) -> None:
        super().__init__()
        self.down = nn.AvgPool2d(2, 2, ceil_mode=True) if down else None
        self.in_conv = (nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
                        if in_channels != out_channels or skip_conv else None)
        self.block1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(out_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.skep = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2) if skip_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            x = self.down(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        h = self.block2(self.act(self.block1(x)))
        return h + (x if self.skep is None else self.skep(x))


class T2IAdapter(nn.Module):
    """Full T2I-Adapter: ``forward(hint (B, C, 8h, 8w)) -> features`` per level
    ((B, channels[k], h / 2^k, w / 2^k)).

    hint_channels: 1 for sketch/canny/depth adapters, 3 for RGB ones. ``unet_res_blocks``: the
    residual blocks per level of the UNet it feeds (2 in SD 1.x / 2.x / XL), which places the features.
    xl: the SDXL adapter: 16x unshuffle (features start at half the latent size), one 2x pool (third
    level); the features go after the UNet's first downsampling, after the last residual block of
    the next levels, and the last one after the middle block (diffusers' ``full_adapter_xl``).
    """

    def __init__(self, hint_channels: int = 3, channels: Sequence[int] = (320, 640, 1280, 1280),
                 num_res_blocks: int = 2, kernel_size: int = 1, skip_conv: bool = False,
                 downscale: int = 8, unet_res_blocks: int = 2, xl: bool = False) -> None:
        super().__init__()
        self.xl = xl
        self.hint_channels = hint_channels
        self.channels = tuple(channels)
        self.num_res_blocks = num_res_blocks
        self.unet_res_blocks = unet_res_blocks
        self.unshuffle = nn.PixelUnshuffle(downscale)
        self.conv_in = nn.Conv2d(hint_channels * downscale**2, self.channels[0], 3, padding=1)
        body = []
        for level, width in enumerate(self.channels):
            for block in range(num_res_blocks):
                first = level > 0 and block == 0
                down = first and (level == 2 if xl else True)
                body.append(AdapterResnetBlock(self.channels[level - 1] if first else width, width, down=down,
                                               kernel_size=kernel_size, skip_conv=skip_conv))
        self.body = nn.ModuleList(body)

    def forward(self, hint: torch.Tensor) -> list[torch.Tensor]:
        dtype = self.conv_in.weight.dtype
        if hint.shape[1] != self.hint_channels:
            if self.hint_channels == 1:  # a grey-scale adapter given an RGB image: its mean
                hint = hint.mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"this T2I-Adapter takes {self.hint_channels}-channel hints, got {hint.shape[1]}")
        x = self.conv_in(self.unshuffle(hint.to(dtype)))
        features = []
        for level in range(len(self.channels)):
            for block in range(self.num_res_blocks):
                x = self.body[level * self.num_res_blocks + block](x)
            features.append(x)
        return features

    # The features depend on the hint only: one evaluation serves every step.
    depends_on_input = False

    def residuals(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                  context: torch.Tensor | None, y: torch.Tensor | None) -> ControlResiduals:
        """The features placed after the last residual block of each UNet level (input-block index
        ``(k + 1) (R + 1) - 1`` for level k, R = ``unet_res_blocks``); XL: see the class."""
        return place_features(self(hint), self.unet_res_blocks, self.xl)


def place_features(features: Sequence[torch.Tensor], unet_res_blocks: int, xl: bool = False) -> ControlResiduals:
    """Adapter features as UNet residuals: feature k after the last residual block of level k
    (input block ``(k + 1) (R + 1) - 1``); for XL adapters the first after the first downsampling
    and the last after the middle block."""
    per_level = unet_res_blocks + 1
    # as many entries as input blocks up to the last one fed (the UNet checks the count)
    levels = len(features) - 1 if xl else len(features)
    inputs: list[torch.Tensor | None] = [None] * (levels * per_level)
    if not xl:
        for level, feature in enumerate(features):
            inputs[(level + 1) * per_level - 1] = feature
        return ControlResiduals(inputs=tuple(inputs))
    inputs[per_level] = features[0]  # the output of the first downsampling
    for level, feature in enumerate(features[1:-1], start=1):
        inputs[(level + 1) * per_level - 1] = feature
    return ControlResiduals(middle=features[-1], inputs=tuple(inputs))


class LightResnetBlock(nn.Module):
    """``body.L.body.j``: x + block2(relu(block1(x))), both 3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(self.act(self.block1(x)))


class LightLevel(nn.Module):
    """``body.L``: [2x avg pool] -> in_conv (1x1, to a quarter width) -> residual blocks -> out_conv (1x1)."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, down: bool) -> None:
        super().__init__()
        inner = out_channels // 4
        self.down = nn.AvgPool2d(2, 2, ceil_mode=True) if down else None
        self.in_conv = nn.Conv2d(in_channels, inner, 1)
        self.body = nn.Sequential(*(LightResnetBlock(inner) for _ in range(num_res_blocks)))
        self.out_conv = nn.Conv2d(inner, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            x = self.down(x)
        return self.out_conv(self.body(self.in_conv(x)))


class LightT2IAdapter(nn.Module):
    """The light T2I-Adapter (the released colour adapter): one ``LightLevel`` per UNet level, each
    level after the first pooled 2x; features placed as the full adapter's."""

    def __init__(self, hint_channels: int = 3, channels: Sequence[int] = (320, 640, 1280, 1280),
                 num_res_blocks: int = 4, downscale: int = 8, unet_res_blocks: int = 2) -> None:
        super().__init__()
        self.hint_channels = hint_channels
        self.channels = tuple(channels)
        self.unet_res_blocks = unet_res_blocks
        self.unshuffle = nn.PixelUnshuffle(downscale)
        widths = (hint_channels * downscale**2, *self.channels)
        self.body = nn.ModuleList(LightLevel(widths[i], widths[i + 1], num_res_blocks, down=i > 0)
                                  for i in range(len(self.channels)))

    def forward(self, hint: torch.Tensor) -> list[torch.Tensor]:
        x = self.unshuffle(hint.to(self.body[0].in_conv.weight.dtype))
        features = []
        for level in self.body:
            x = level(x)
            features.append(x)
        return features

    depends_on_input = False

    def residuals(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                  context: torch.Tensor | None, y: torch.Tensor | None) -> ControlResiduals:
        return place_features(self(hint), self.unet_res_blocks)
