"""CLIP's image encoder (a ViT with a projection), the tower behind unCLIP, SDXL Revision and
IP-Adapter.

The module is named as transformers' ``CLIPVisionModelWithProjection`` names its weights
(``vision_model.embeddings.*``, ``vision_model.encoder.layers.N.self_attn.{q,k,v,out}_proj``,
``layer_norm1/2``, ``mlp.fc1/fc2``, ``pre_layrnorm`` (sic), ``post_layernorm``,
``visual_projection``), the layout of the files in ``models/clip_vision/``; open_clip's
``visual.*`` layout is converted on loading (``sgm.io.clip_vision_files``).

Forward pass (Radford et al. 2021, Dosovitskiy et al. 2021):
patches (conv, no bias) -> prepend the class token -> add positions -> LayerNorm ("pre") ->
pre-norm transformer layers -> the class token's final state, LayerNorm ("post") -> projection.
``ClipVisionOutput`` carries what the nodes downstream read: the projected image embedding,
the last layer's states and the penultimate layer's states.

Image preprocessing for the tower (``clip_preprocess``) is ComfyUI's: shortest side to 224
(bicubic, antialiased), centre crop (or a plain resize to 224x224), 8-bit rounding, CLIP's
mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["quick_gelu", "gelu"]
Crop = Literal["center", "none"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipVisionConfig:
    """Architecture of one image tower; the released sizes are in ``CLIP_VISION_CONFIGS``."""

    width: int
    layers: int
    heads: int
    mlp_width: int
    patch_size: int
    image_size: int
    projection_dim: int
    activation: Activation
    layer_norm_eps: float = 1e-5

    @property
    def positions(self) -> int:
        """Patch tokens plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1


# OpenAI's ViT-L/14 uses quick-GELU; LAION's open_clip ViT-H/14 and ViT-bigG/14 exact GELU.
CLIP_VISION_CONFIGS: dict[str, ClipVisionConfig] = {
    "ViT-L/14": ClipVisionConfig(1024, 24, 16, 4096, 14, 224, 768, "quick_gelu"),
    "ViT-H/14": ClipVisionConfig(1280, 32, 16, 5120, 14, 224, 1024, "gelu"),
    "ViT-bigG/14": ClipVisionConfig(1664, 48, 16, 8192, 14, 224, 1280, "gelu"),
}


@dataclass(frozen=True, eq=False)
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: what one encoded image batch gives.

    image_embeds:              (B, P) projected class token (unCLIP, Revision)
    last_hidden_state:         (B, T, W) last layer's states (before the post LayerNorm)
    penultimate_hidden_states: (B, T, W) the layer before it (IP-Adapter plus models)
    """

    image_embeds: torch.Tensor
    last_hidden_state: torch.Tensor
    penultimate_hidden_states: torch.Tensor

    def __getitem__(self, name: str) -> torch.Tensor:  # ComfyUI-style access: output["image_embeds"]
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None


def _activation(name: Activation, x: torch.Tensor) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)  # OpenAI CLIP's approximation
    return F.gelu(x)


class _Embeddings(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(config.width))
        self.patch_embedding = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(config.positions, config.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))  # (B, W, h, w)
        patches = patches.flatten(2).transpose(1, 2)  # (B, h*w, W)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1)  # (B, T, W)
        if tokens.shape[1] != self.position_embedding.num_embeddings:
            side = int((self.position_embedding.num_embeddings - 1) ** 0.5) * self.patch_embedding.stride[0]
            raise ValueError(f"CLIP vision: the image gives {tokens.shape[1] - 1} patches, the model has positions "
                             f"for {self.position_embedding.num_embeddings - 1}; preprocess images to {side}x{side}")
        return tokens + self.position_embedding.weight.to(tokens.dtype)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = (p(x).view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d): every token sees every token
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class _Mlp(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.activation = config.activation
        self.fc1 = nn.Linear(config.width, config.mlp_width)
        self.fc2 = nn.Linear(config.mlp_width, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_activation(self.activation, self.fc1(x)))


class _EncoderLayer(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.self_attn = _Attention(config.width, config.heads)
        self.layer_norm2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = _Mlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_EncoderLayer(config) for _ in range(config.layers))


class _VisionTransformer(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)  # transformers' spelling
        self.encoder = _Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)


class ClipVisionModel(nn.Module):
    """CLIP's image tower with its projection; ``forward(pixels (B, 3, S, S)) -> ClipVisionOutput``."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"CLIP vision: width {config.width} is not a multiple of {config.heads} heads")
        self.config = config
        self.vision_model = _VisionTransformer(config)
        self.visual_projection = nn.Linear(config.width, config.projection_dim, bias=False)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def forward(self, pixels: torch.Tensor) -> ClipVisionOutput:
        tower = self.vision_model
        x = tower.pre_layrnorm(tower.embeddings(pixels))  # (B, T, W)
        penultimate = x
        for index, layer in enumerate(tower.encoder.layers):
            x = layer(x)
            if index == len(tower.encoder.layers) - 2:
                penultimate = x
        pooled = tower.post_layernorm(x[:, 0])  # (B, W): the class token
        return ClipVisionOutput(image_embeds=self.visual_projection(pooled), last_hidden_state=x,
                                penultimate_hidden_states=penultimate)


def clip_preprocess(images: torch.Tensor, size: int = 224, crop: Crop = "center") -> torch.Tensor:
    """IMAGE (B, H, W, C) in [0, 1] -> CLIP's input (B, 3, size, size), as ComfyUI prepares it.

    ``crop="center"``: the shortest side is resized to ``size`` (bicubic, antialiased) and the
    centre cut out; ``"none"``: the whole image is resized to ``size`` x ``size`` (aspect not kept).
    An image already ``size`` x ``size`` is not resampled. Values are rounded to 8 bits (as a
    saved picture would be), then normalised by CLIP's mean and std. Alpha is dropped.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"CLIP vision: expected an IMAGE (B, H, W, 3), got shape {tuple(images.shape)}")
    if crop not in ("center", "none"):
        raise ValueError(f'CLIP vision: crop must be "center" or "none", got {crop!r}')
    pixels = images[..., :3].float()
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(*pixels.shape[:-1], 3)
    pixels = pixels.movedim(-1, 1)  # (B, 3, H, W)
    height, width = pixels.shape[-2:]
    if (height, width) != (size, size):
        if crop == "center":
            scale = size / min(height, width)
            target = (round(scale * height), round(scale * width))
        else:
            target = (size, size)
        pixels = F.interpolate(pixels, size=target, mode="bicubic", antialias=True)
        top, left = (target[0] - size) // 2, (target[1] - size) // 2
        pixels = pixels[:, :, top:top + size, left:left + size]
    pixels = torch.clamp(255.0 * pixels, 0, 255).round() / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def encode_image(model: ClipVisionModel, images: torch.Tensor, crop: Crop = "center",
                 device: torch.device | str | None = None) -> ClipVisionOutput:
    """IMAGE (B, H, W, C) -> ClipVisionOutput on the CPU in float32 (preprocessing included)."""
    parameter = next(model.parameters())
    device = parameter.device if device is None else torch.device(device)
    pixels = clip_preprocess(images, model.image_size, crop).to(device)
    with torch.no_grad():
        out = model(pixels)
    return ClipVisionOutput(*(t.float().cpu() for t in (out.image_embeds, out.last_hidden_state,
                                                        out.penultimate_hidden_states)))


def describe(model: Any) -> str:
    """A short name of a tower's size for messages ("ViT-H/14", or its widths)."""
    config = getattr(model, "config", None)
    for name, known in CLIP_VISION_CONFIGS.items():
        if config is not None and (config.width, config.layers) == (known.width, known.layers):
            return name
    if config is None:
        return type(model).__name__
    return f"width {config.width}, {config.layers} layers, embeds {config.projection_dim}"
