"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models") in the ldm/cldm layout, and the chain of controls a condition carries while sampling.

The network is a trainable copy of the UNet's encoder (``time_embed``, ``label_emb``,
``input_blocks``, ``middle_block``; the same key names as the UNet) plus
``input_hint_block`` (the hint image, at pixel resolution, down to the latent grid by eight
convolutions, the last one zero-initialised), one 1x1 zero convolution per input block
(``zero_convs.N.0``) and one after the middle block (``middle_block_out.0``). Its outputs are
``ControlResiduals`` the UNet adds to its skips and middle block (cldm's ``ControlledUnetModel``).
``ControlNet.run`` is the encoder pass given an encoded hint; union ControlNets
(``sgm.nets.controlnet_union``) encode theirs differently and reuse it.

``sgm.io.control_lora.ControlLoRA`` is Stability AI's control-LoRA: a ControlNet stored as low-rank differences from
the UNet it is used with, completed by that UNet when sampling starts (``ControlLoRA.for_unet``).

``ControlLink`` is one applied control: model, hint image, strength, start/end fraction of
sampling, and the previous link (stacked controls sum up). The guider evaluates the chain per
UNet call (``sgm.sampling.guiders``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sgm.nets.unet import ControlResiduals, TimestepEmbedSequential, UNetModel, timestep_embedding

# (out channels, stride) of the hint encoder's 3x3 convolutions after the first (hint -> 16);
# a zero-initialised one to the UNet's width follows (``input_hint_block.14``).
HINT_LAYERS = ((16, 1), (32, 2), (32, 1), (96, 2), (96, 1), (256, 2))


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    if conv.weight.device.type != "meta":
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


class ControlNet(nn.Module):
    """The cldm ``ControlNet``: ``forward(x, hint, timesteps, context, y) -> ControlResiduals``.

    Takes the UNet's constructor arguments (its encoder half is built from them) and
    ``hint_channels`` (3 for an RGB hint image). ``x`` is the UNet's (scaled) noisy input
    without inpainting channels, (B, in_channels, h, w); ``hint`` (B, hint_channels, 8h, 8w) in [0, 1].
    """

    def __init__(self, hint_channels: int = 3, **unet_config: object) -> None:
        super().__init__()
        unet_config = {k: v for k, v in unet_config.items() if k != "out_channels"}
        encoder = UNetModel(out_channels=0, with_decoder=False, **unet_config)  # type: ignore[arg-type]
        self.in_channels = encoder.in_channels
        self.model_channels = encoder.model_channels
        self.num_classes = encoder.num_classes
        self.time_embed = encoder.time_embed
        if encoder.num_classes is not None:
            self.label_emb = encoder.label_emb
        self.input_blocks = encoder.input_blocks
        self.middle_block = encoder.middle_block
        layers: list[nn.Module] = [nn.Conv2d(hint_channels, HINT_LAYERS[0][0], 3, padding=1), nn.SiLU()]
        ch = HINT_LAYERS[0][0]
        for out, stride in HINT_LAYERS:
            layers += [nn.Conv2d(ch, out, 3, padding=1, stride=stride), nn.SiLU()]
            ch = out
        final = nn.Conv2d(ch, self.model_channels, 3, padding=1)
        if final.weight.device.type != "meta":
            nn.init.zeros_(final.weight)
            nn.init.zeros_(final.bias)
        self.input_hint_block = TimestepEmbedSequential(*layers, final)
        self.zero_convs = nn.ModuleList(
            TimestepEmbedSequential(_zero_conv(c)) for c in encoder.skip_channels)
        self.middle_block_out = TimestepEmbedSequential(_zero_conv(encoder.skip_channels[-1]))

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> ControlResiduals:
        dtype = self.time_embed[0].weight.dtype
        guided_hint = self.input_hint_block(hint.to(dtype), None, None)  # (B, mc, h, w): convolutions only
        return self.run(x, guided_hint, timesteps, context, y)

    def run(
        self,
        x: torch.Tensor,
        guided_hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        extra_emb: torch.Tensor | None = None,
    ) -> ControlResiduals:
        """The encoder pass with an encoded hint (B, mc, h, w) added after the first input block.

        extra_emb: (B or 1, 4*mc) added to the time embedding (a union ControlNet's control type)."""
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))  # (B, 4*mc)
        if extra_emb is not None:
            emb = emb + extra_emb
        if self.num_classes is not None:
            if y is None:
                raise ValueError("this ControlNet takes vector conditioning y (an SDXL ControlNet); got None")
            emb = emb + self.label_emb(y.to(dtype) if y.is_floating_point() else y)
        if context is not None:
            context = context.to(dtype)
        h = x.to(dtype)
        skips = []
        for index, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if index == 0:
                h = h + guided_hint
            skips.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        return ControlResiduals(skips=tuple(skips), middle=self.middle_block_out(h, emb, context))

    # A ControlNet reads the noisy latent and the timestep: evaluated at every UNet call.
    depends_on_input = True
    # Shuffle ControlNets (control_v11e_sd15_shuffle) were trained with their residuals averaged over
    # the feature map (ControlNet 1.1's "global average pooling"); the file does not say so, the
    # loader sets this from the file name (``sgm.io.controlnet_files.wants_global_average_pooling``).
    global_average_pooling = False

    def residuals(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                  context: torch.Tensor | None, y: torch.Tensor | None) -> ControlResiduals:
        """The interface every control model has (``ControlLink.model``)."""
        out = self(x, hint, timesteps, context, y)
        return global_average_pool(out) if self.global_average_pooling else out


def global_average_pool(residuals: ControlResiduals) -> ControlResiduals:
    """Every skip residual and the middle residual replaced by its mean over the feature map,
    (B, C, h, w) -> (B, C, h, w) constant per channel; T2I-Adapter ``inputs`` are left as they are."""
    def pool(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.mean(dim=(2, 3), keepdim=True).expand_as(t)

    return ControlResiduals(skips=tuple(pool(t) for t in residuals.skips), middle=pool(residuals.middle),
                            inputs=residuals.inputs)


# ------------------------------------------------------------------ control-LoRA

# ------------------------------------------------------------------ applied controls


@dataclass(frozen=True, eq=False)
class ControlLink:
    """One applied control and the ones applied before it (``previous``): their residuals add up.

    hint: (B or 1, C, H, W) image in [0, 1], resized to the image being sampled when used.
    start / end: the fractions of sampling (0 = pure noise, 1 = done) inside which it acts.
    Identity matters (eq=False): conditions that share a link share one evaluation.
    """

    model: nn.Module  # ControlNet or T2IAdapter: ``residuals(x, hint, timesteps, context, y)``
    hint: torch.Tensor
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    previous: "ControlLink | None" = None

    def chain(self) -> list["ControlLink"]:
        """This link and every previous one, the oldest first."""
        links, link = [], self
        while link is not None:
            links.append(link)
            link = link.previous
        return links[::-1]

    def models(self) -> list[nn.Module]:
        """The distinct control models of the chain (to place on the sampling device)."""
        seen: dict[int, nn.Module] = {}
        for link in self.chain():
            seen.setdefault(id(link.model), link.model)
        return list(seen.values())


def resize_hint(hint: torch.Tensor, height: int, width: int, batch: int) -> torch.Tensor:
    """The hint for an image of ``height`` x ``width`` pixels and ``batch`` items.

    Scaled to cover (nearest-exact, aspect kept) and centre-cropped, as ComfyUI prepares hints;
    a batch of 1 is broadcast, a shorter batch repeats its items cyclically.
    hint: (b, C, H', W') -> (batch, C, height, width).
    """
    if hint.ndim != 4:
        raise ValueError(f"a control hint must be (B, C, H, W), got shape {tuple(hint.shape)}")
    if hint.shape[-2:] != (height, width):
        h, w = hint.shape[-2:]
        scale = max(height / h, width / w)
        size = (max(height, round(h * scale)), max(width, round(w * scale)))
        hint = F.interpolate(hint.float(), size=size, mode="nearest-exact")
        top, left = (size[0] - height) // 2, (size[1] - width) // 2
        hint = hint[:, :, top:top + height, left:left + width]
    if hint.shape[0] != batch:
        index = torch.arange(batch, device=hint.device) % hint.shape[0]
        hint = hint[index]
    return hint
