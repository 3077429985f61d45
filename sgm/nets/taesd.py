"""TAESD: the Tiny AutoEncoder for Stable Diffusion (Ollin Boer Bohan, madebyollin/taesd, 2023).

A distilled stand-in for the SD / SDXL VAE: plain 3x3 convolutions and ReLUs, no
normalisation and no attention, about 1.2M parameters per half. It works on *scaled*
latents (what the UNet sees): the encoder maps images in [0, 1] to scaled latents and the
decoder maps scaled latents back to images in ~[0, 1]. Good for live previews and fast
drafts; colours and fine detail are a little off compared with the full VAE.

Key names are those of the released ``taesd_encoder.pth`` / ``taesd_decoder.pth`` (and
``taesdxl_*``) files: each half is one ``nn.Sequential``, so a layer is named by its index
(``0.weight``, ``1.conv.0.weight``, ``3.conv.4.bias``, ...). Index layout, with w = 64:

    encoder: 0 conv(3, w) | 1 Block | 2 conv/2 | 3-5 Block | 6 conv/2 | 7-9 Block
             | 10 conv/2 | 11-13 Block | 14 conv(w, latent)            (conv/2: stride 2, no bias)
    decoder: 0 Clamp | 1 conv(latent, w) | 2 ReLU | 3-5 Block | 6 Up | 7 conv | 8-10 Block
             | 11 Up | 12 conv | 13-15 Block | 16 Up | 17 conv | 18 Block | 19 conv(w, 3)
                                                    (Up: nearest 2x; the convs after it have no bias)

:class:`TinyAutoencoder` wraps the two halves behind :class:`sgm.nets.autoencoder.AutoencoderKL`'s
interface: images in [-1, 1] and *unscaled* latents, so the nodes' VAE code runs unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from sgm.nets.autoencoder import tiled_apply
from sgm.nets.interrupt import check_interrupt

LATENT_MAGNITUDE = 3.0  # the decoder soft-clamps its input to (-3, 3)
ENCODER_BLOCKS = (1, 3, 3, 3)  # Blocks after the input conv and after each stride-2 conv
DECODER_BLOCKS = (3, 3, 3, 1)  # Blocks before each 2x upsample, then before the output conv


def _conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp ``3 tanh(x / 3)``: near identity for |x| < 1, bounded by +-3 (decoder input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / LATENT_MAGNITUDE) * LATENT_MAGNITUDE


class Block(nn.Module):
    """conv-ReLU-conv-ReLU-conv plus the input, then ReLU (keys ``conv.{0,2,4}``, ``skip``, ``fuse``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(), _conv(channels, channels)
        )
        self.skip = nn.Identity()  # a 1x1 conv in the reference only where widths differ: never in TAESD
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def _run(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Apply ``layers`` in order with an interrupt point before every Block (each is 3 convs)."""
    for layer in layers:
        if isinstance(layer, Block):
            check_interrupt()
        x = layer(x)
    return x


class TinyEncoder(nn.Sequential):
    """Images (B, 3, H, W) in [0, 1] -> scaled latents (B, latent_channels, H/8, W/8)."""

    def __init__(self, latent_channels: int = 4, width: int = 64) -> None:
        layers: list[nn.Module] = []
        for stage, blocks in enumerate(ENCODER_BLOCKS):
            layers.append(_conv(3, width) if stage == 0 else _conv(width, width, stride=2, bias=False))
            layers.extend(Block(width) for _ in range(blocks))
        layers.append(_conv(width, latent_channels))
        super().__init__(*layers)
        self.latent_channels = latent_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _run(self, images)


class TinyDecoder(nn.Sequential):
    """Scaled latents (B, latent_channels, h, w) -> images (B, 3, 8h, 8w) in ~[0, 1] (not clamped)."""

    def __init__(self, latent_channels: int = 4, width: int = 64) -> None:
        layers: list[nn.Module] = [Clamp(), _conv(latent_channels, width), nn.ReLU()]
        for stage, blocks in enumerate(DECODER_BLOCKS):
            layers.extend(Block(width) for _ in range(blocks))
            if stage < len(DECODER_BLOCKS) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(width, width, bias=False)]
        layers.append(_conv(width, 3))
        super().__init__(*layers)
        self.latent_channels = latent_channels

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return _run(self, latents)


class TinyAutoencoderError(ValueError):
    """A TAESD used for what it cannot do (encoding without an encoder, decoding without a decoder)."""


class TinyAutoencoder(nn.Module):
    """TAESD halves behind AutoencoderKL's interface: images in [-1, 1], *unscaled* latents.

    TAESD works on diffusion-space latents ``z_s = (z - shift) * scale``; the wrapper carries
    the family's ``scale_factor`` (SD 1.x/2.x 0.18215, SDXL 0.13025) and ``shift_factor``
    (0 for both) so that ``encode`` / ``decode`` speak the unscaled latents of the full VAE,
    as the nodes expect (they divide by the VAE value's scale before ``decode`` and multiply
    after ``encode``). Either half may be missing: using it then raises
    :class:`TinyAutoencoderError` saying which file to add.
    """

    downscale = 8  # three stride-2 convs / 2x upsamples

    def __init__(
        self,
        encoder: TinyEncoder | None,
        decoder: TinyDecoder | None,
        scale_factor: float,
        shift_factor: float = 0.0,
        family: str = "sd1",
    ) -> None:
        super().__init__()
        if encoder is None and decoder is None:
            raise TinyAutoencoderError("a TAESD needs an encoder, a decoder or both; got neither")
        self.encoder = encoder
        self.decoder = decoder
        self.scale_factor = float(scale_factor)
        self.shift_factor = float(shift_factor)
        self.family = family

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        half = self.decoder if self.decoder is not None else self.encoder
        assert half is not None
        return half.latent_channels

    def _missing(self, half: str, use: str) -> TinyAutoencoderError:
        prefix = "taesdxl" if self.family.startswith("sdxl") else "taesd"
        return TinyAutoencoderError(
            f"this TAESD ({self.family}) was loaded without its {half}, so it cannot {use}; put "
            f"{prefix}_{half}.safetensors (or .pth) in models/vae_approx/ next to the other file, or use a full VAE")

    def to_scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled VAE latents -> the diffusion-space latents TAESD works on: (z - shift) * scale."""
        return (latents - self.shift_factor) * self.scale_factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [-1, 1], H and W multiples of 8 -> unscaled latents (B, 4, H/8, W/8)."""
        if self.encoder is None:
            raise self._missing("encoder", "encode images")
        scaled = self.encoder((images.to(self.dtype) + 1) / 2)  # TAESD's images are in [0, 1]
        return scaled / self.scale_factor + self.shift_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: (B, 4, h, w), unscaled -> images (B, 3, 8h, 8w) in ~[-1, 1] (not clamped)."""
        return self.decode_scaled(self.to_scaled(latents))

    def decode_scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: (B, 4, h, w) in diffusion space (already scaled) -> images (B, 3, 8h, 8w) in ~[-1, 1]."""
        if self.decoder is None:
            raise self._missing("decoder", "decode latents")
        return self.decoder(latents.to(self.dtype)) * 2 - 1

    def decode_tiled(
        self, latents: torch.Tensor, tile_size: int = 64, overlap: int = 16, shared_norm: bool = True
    ) -> torch.Tensor:
        """``decode`` in overlapping latent tiles of ``tile_size`` blended with linear ramps (float32).

        ``shared_norm`` is accepted for AutoencoderKL's signature; TAESD has no normalisation
        layers, so tiles need no shared statistics and it changes nothing.
        """
        if self.decoder is None:
            raise self._missing("decoder", "decode latents")
        return tiled_apply(self.decode, latents, tile_size, overlap, self.downscale)

    def encode_tiled(
        self, images: torch.Tensor, tile_size: int = 512, overlap: int = 64, shared_norm: bool = True
    ) -> torch.Tensor:
        """``encode`` in overlapping image tiles of ``tile_size`` pixels, blended (float32);
        ``shared_norm`` changes nothing (no normalisation layers)."""
        if self.encoder is None:
            raise self._missing("encoder", "encode images")
        f = self.downscale
        if tile_size % f or overlap % f:
            raise ValueError(f"encode_tiled: tile_size ({tile_size}) and overlap ({overlap}) must be multiples of {f}")
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(f"encode_tiled: image size {tuple(images.shape[-2:])} must be a multiple of {f}")
        return tiled_apply(self.encode, images, tile_size, overlap, 1 / f)
