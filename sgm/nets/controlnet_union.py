"""Union ControlNet (xinsir's "controlnet-union-sdxl-1.0" / "ControlNet++", ProMax): one ControlNet for
many kinds of hint image, told which kind it is given.

On top of the cldm ``ControlNet`` (``sgm.nets.controlnet``) it has:

``control_add_embedding``  the control type as a vector of ``num_control_types`` 0/1 entries, each
                           turned into 256 sinusoidal features (the timestep embedding of 0 or 1),
                           through ``linear_1 -> SiLU -> linear_2``; added to the time embedding.
``task_embedding``         one learnt vector per control type, (num_control_types, C_t).
``transformer_layes``      (sic, the file's name) CLIP-style residual attention blocks over the
                           condition tokens: a hint's encoded features, averaged over the image,
                           plus its type's ``task_embedding``.
``spatial_ch_projs``       C_t -> C: a per-channel offset the transformed token adds to the encoded hint.

How a call combines them (as ComfyUI runs these models; diffusers' ``ControlNetUnionModel`` agrees for
one hint and batch 1 -- it attends across the batch, a quirk of its sequence-first attention):

* with a control type t: hint features g = ``input_hint_block(hint)`` (B, C, h, w);
  token = mean_hw(g) + task_embedding[t]; token' = transformer(token);
  the guided hint is g + spatial_ch_projs(token'), broadcast over h, w.
* "auto" (no type): the type vector is all zeros and the guided hint is g itself.

The rest (time and label embeddings, encoder, zero convolutions) is the plain ControlNet's.
``UnionControlNet.with_type`` gives the model bound to a control type (ComfyUI's
``SetUnionControlNetType``); the model itself runs as "auto".
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sgm.nets.attention import ResidualAttentionBlock
from sgm.nets.controlnet import ControlNet
from sgm.nets.unet import ControlResiduals, timestep_embedding

# The control types of ComfyUI's SetUnionControlNetType and their index in the model (xinsir's
# numbering; the first union model knows 6 types, ProMax 8: tile and repaint are ProMax only).
UNION_TYPES: Mapping[str, int] = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}
AUTO = "auto"

# Union keys in the released files (diffusers names, kept as they are in our layout).
UNION_PREFIXES = ("task_embedding", "control_add_embedding.", "transformer_layes.", "spatial_ch_projs.")
TYPE_FEATURES = 256  # sinusoidal features per entry of the control-type vector


class ControlTypeEmbedding(nn.Module):
    """The control-type vector (num_types,) of 0/1 -> (1, time_embed_dim), added to the time embedding."""

    def __init__(self, num_types: int, time_embed_dim: int, features: int = TYPE_FEATURES) -> None:
        super().__init__()
        self.num_types = num_types
        self.features = features
        self.linear_1 = nn.Linear(features * num_types, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, control_type: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        vector = torch.zeros(self.num_types, device=device)
        if control_type:
            vector[list(control_type)] = 1.0
        features = timestep_embedding(vector, self.features).reshape(1, -1).to(dtype)  # (1, num_types * 256)
        return self.linear_2(F.silu(self.linear_1(features)))


class UnionControlNet(ControlNet):
    """A ``ControlNet`` that also takes the kind of its hint (``control_type``: type indices, empty = auto).

    num_control_types: 6 (controlnet-union-sdxl-1.0) or 8 (ProMax). token_channels / token_heads /
    token_layers: the condition transformer (320 / 8 / 1 in the released models); the projection
    maps tokens to the UNet's ``model_channels``.
    """

    def __init__(self, num_control_types: int, token_channels: int, token_heads: int = 8, token_layers: int = 1,
                 type_features: int = TYPE_FEATURES, hint_channels: int = 3, **unet_config: object) -> None:
        super().__init__(hint_channels=hint_channels, **unet_config)
        self.num_control_types = num_control_types
        self.task_embedding = nn.Parameter(torch.zeros(num_control_types, token_channels))
        self.transformer_layes = nn.ModuleList(ResidualAttentionBlock(token_channels, token_heads)
                                               for _ in range(token_layers))
        self.spatial_ch_projs = nn.Linear(token_channels, self.model_channels)
        self.control_add_embedding = ControlTypeEmbedding(num_control_types, self.model_channels * 4, type_features)

    def check_type(self, control_type: tuple[int, ...]) -> None:
        """Raise if a type index is beyond what this model was trained on (tile / repaint need ProMax)."""
        names = {index: name for name, index in UNION_TYPES.items()}
        unknown = [t for t in control_type if not 0 <= t < self.num_control_types]
        if unknown:
            raise ValueError(
                f"union ControlNet control type {names.get(unknown[0], unknown[0])!r} (index {unknown[0]}) is not "
                f"one of the {self.num_control_types} types this model knows; use another type, or the ProMax "
                "model (controlnet-union-sdxl-1.0 promax) for tile and repaint")

    def guided_hint(self, hint: torch.Tensor, control_type: tuple[int, ...]) -> torch.Tensor:
        """hint (B, hint_channels, 8h, 8w) -> what is added after the first input block, (B, C, h, w)."""
        features = self.input_hint_block(hint, None, None)  # (B, C, h, w)
        if not control_type:
            return features
        # One hint per application: its type's token alone goes through the transformer.
        token = features.mean(dim=(2, 3)) + self.task_embedding[control_type[0]].to(features)  # (B, C_t)
        tokens = token[:, None]  # (B, 1, C_t)
        for layer in self.transformer_layes:
            tokens = layer(tokens)
        return features + self.spatial_ch_projs(tokens[:, 0])[:, :, None, None]

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control_type: tuple[int, ...] = (),
    ) -> ControlResiduals:
        self.check_type(control_type)
        dtype = self.time_embed[0].weight.dtype
        type_emb = self.control_add_embedding(tuple(control_type), dtype, x.device)  # (1, 4*mc)
        return self.run(x, self.guided_hint(hint.to(dtype), tuple(control_type)), timesteps, context, y,
                        extra_emb=type_emb)

    def with_type(self, control_type: tuple[int, ...]) -> "TypedUnionControlNet":
        """This model told the kind of its hints (type indices; empty = auto)."""
        self.check_type(control_type)
        return TypedUnionControlNet(self, tuple(control_type))


class TypedUnionControlNet(nn.Module):
    """A union ControlNet bound to a control type: what ``SetUnionControlNetType`` outputs.

    Shares the network (no copy); ``residuals`` is the control-model interface of ``ControlLink``."""

    depends_on_input = True

    def __init__(self, net: UnionControlNet, control_type: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.control_type = control_type

    def residuals(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                  context: torch.Tensor | None, y: torch.Tensor | None) -> ControlResiduals:
        return self.net(x, hint, timesteps, context, y, self.control_type)

    def with_type(self, control_type: tuple[int, ...]) -> "TypedUnionControlNet":
        return self.net.with_type(control_type)


def union_type_index(name: str) -> tuple[int, ...]:
    """A ``SetUnionControlNetType`` choice -> type indices ("auto" -> ())."""
    if name == AUTO:
        return ()
    if name not in UNION_TYPES:
        raise ValueError(f"unknown union ControlNet type {name!r}; expected one of {[AUTO, *UNION_TYPES]}")
    return (UNION_TYPES[name],)
