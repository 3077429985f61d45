"""CLIP text transformers in the two key layouts of the released checkpoints.

* ``ClipTextModel``: OpenAI CLIP-L as transformers names it (SD 1.x ``cond_stage_model.``,
  SDXL ``conditioner.embedders.0.``): ``transformer.text_model.embeddings.token_embedding``,
  ``encoder.layers.N.self_attn.{q,k,v,out}_proj``, ``layer_norm1/2``, ``mlp.fc1/fc2``,
  ``final_layer_norm``; quick-GELU.
* ``OpenClipTextModel``: OpenCLIP (SD 2.x ``cond_stage_model.``, SDXL
  ``conditioner.embedders.1.``, refiner ``conditioner.embedders.0.``): ``model.token_embedding``,
  ``model.positional_embedding``, ``model.transformer.resblocks.N.attn.in_proj_weight`` /
  ``out_proj``, ``ln_1``, ``ln_2``, ``mlp.c_fc`` / ``c_proj``, ``ln_final``, ``text_projection``;
  exact GELU.

Both expose one contract, ``forward(token_embeds, *, hidden_layer, final_norm, eos_index)``,
so the conditioner does not care which layout a checkpoint uses. Heads are width / 64 as in
every released CLIP text tower; the rest of the architecture is read from tensor shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

HEAD_DIM = 64
Activation = Literal["quick_gelu", "gelu"]


@dataclass(frozen=True)
class ClipTextConfig:
    """Architecture of one text tower (read from tensor shapes by ``infer_*_config``)."""

    width: int
    layers: int
    heads: int
    mlp_width: int
    vocab_size: int
    context_length: int
    projection_dim: int | None  # OpenCLIP text_projection output width, None without it
    activation: Activation


def _activation(name: Activation, x: torch.Tensor) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)  # OpenAI CLIP's approximation
    return F.gelu(x)


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """q, k, v: (B, T, C) -> (B, T, C), causal (text towers only look left)."""
    batch, tokens, width = q.shape
    q, k, v = (t.view(batch, tokens, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, d)
    return out.transpose(1, 2).reshape(batch, tokens, width)


class _TextTower(nn.Module):
    """Shared forward over layers; subclasses provide the layout."""

    config: ClipTextConfig

    def token_embedding_weight(self) -> torch.Tensor:  # (vocab, C)
        raise NotImplementedError

    def _positions(self) -> torch.Tensor:  # (T, C)
        raise NotImplementedError

    def _blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, T) int64 -> (B, T, C) token embeddings (positions are added in forward)."""
        return F.embedding(ids, self.token_embedding_weight())

    def forward(
        self,
        token_embeds: torch.Tensor,
        *,
        hidden_layer: int,
        final_norm: bool,
        eos_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states after ``hidden_layer`` blocks and, with ``eos_index``, the pooled output.

        token_embeds: (B, T, C); hidden_layer in 1..layers; ``final_norm`` applies the final
        layer norm to the returned hidden states (SD 1.x/2.x do, SDXL does not).
        eos_index: (B,) position of each window's end token; the pooled output is the final
        layer's normed state there, projected where the tower has a projection. Computing it
        needs every layer, so without it only ``hidden_layer`` blocks run.
        Returns (hidden (B, T, C), pooled (B, P) or None).
        """
        blocks = self._blocks()
        if not 1 <= hidden_layer <= len(blocks):
            raise ValueError(
                f"hidden_layer {hidden_layer} is out of range for a {len(blocks)}-layer text "
                f"encoder; use 1..{len(blocks)} (clip_skip k selects layer {len(blocks)} - k + 1)"
            )
        x = token_embeds + self._positions()[: token_embeds.shape[1]].to(token_embeds.dtype)
        run = len(blocks) if eos_index is not None else hidden_layer
        hidden = x
        for n, block in enumerate(blocks[:run], start=1):
            x = block(x)
            if n == hidden_layer:
                hidden = x
        if final_norm:
            hidden = self._final_norm(hidden)
        pooled = None
        if eos_index is not None:
            last = self._final_norm(x)
            pooled = self._project(last[torch.arange(last.shape[0], device=last.device), eos_index])
        return hidden, pooled


# ------------------------------------------------------------------ transformers layout


class _HfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _causal_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads)
        return self.out_proj(out)


class _HfMlp(nn.Module):
    def __init__(self, width: int, mlp_width: int, activation: Activation) -> None:
        super().__init__()
        self.activation: Activation = activation
        self.fc1 = nn.Linear(width, mlp_width)
        self.fc2 = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_activation(self.activation, self.fc1(x)))


class _HfLayer(nn.Module):
    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.self_attn = _HfAttention(config.width, config.heads)
        self.layer_norm1 = nn.LayerNorm(config.width)
        self.mlp = _HfMlp(config.width, config.mlp_width, config.activation)
        self.layer_norm2 = nn.LayerNorm(config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _HfEmbeddings(nn.Module):
    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.context_length, config.width)


class _HfEncoder(nn.Module):
    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_HfLayer(config) for _ in range(config.layers))


class _HfTextModel(nn.Module):
    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.embeddings = _HfEmbeddings(config)
        self.encoder = _HfEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.width)


class _HfTransformer(nn.Module):
    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.text_model = _HfTextModel(config)


class ClipTextModel(_TextTower):
    """OpenAI CLIP text tower with keys ``transformer.text_model.*`` (no projection)."""

    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = _HfTransformer(config)

    def token_embedding_weight(self) -> torch.Tensor:
        return self.transformer.text_model.embeddings.token_embedding.weight

    def _positions(self) -> torch.Tensor:
        return self.transformer.text_model.embeddings.position_embedding.weight

    def _blocks(self) -> list[nn.Module]:
        return list(self.transformer.text_model.encoder.layers)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer.text_model.final_layer_norm(x)


# ------------------------------------------------------------------ OpenCLIP layout


class _OpenClipAttention(nn.Module):
    """nn.MultiheadAttention's parameter names (packed q/k/v), our own forward."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(_causal_attention(q, k, v, self.heads))


class _OpenClipMlp(nn.Module):
    def __init__(self, width: int, mlp_width: int, activation: Activation) -> None:
        super().__init__()
        self.activation: Activation = activation
        self.c_fc = nn.Linear(width, mlp_width)
        self.c_proj = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(_activation(self.activation, self.c_fc(x)))


class _ResidualAttentionBlock(nn.Module):
    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width)
        self.attn = _OpenClipAttention(config.width, config.heads)
        self.ln_2 = nn.LayerNorm(config.width)
        self.mlp = _OpenClipMlp(config.width, config.mlp_width, config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _OpenClipTransformer(nn.Module):
    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualAttentionBlock(config) for _ in range(config.layers))


class _OpenClipModel(nn.Module):
    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = _OpenClipTransformer(config)
        self.ln_final = nn.LayerNorm(config.width)
        if config.projection_dim is not None:
            # Used as x @ text_projection: (C, P), the transpose of a Linear weight.
            self.text_projection = nn.Parameter(torch.empty(config.width, config.projection_dim))


class OpenClipTextModel(_TextTower):
    """OpenCLIP text tower with keys ``model.*``."""

    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.config = config
        self.model = _OpenClipModel(config)

    def token_embedding_weight(self) -> torch.Tensor:
        return self.model.token_embedding.weight

    def _positions(self) -> torch.Tensor:
        return self.model.positional_embedding

    def _blocks(self) -> list[nn.Module]:
        return list(self.model.transformer.resblocks)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.ln_final(x)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.config.projection_dim is None:
            return pooled
        return pooled @ self.model.text_projection.to(pooled.dtype)


# ------------------------------------------------------------------ shapes -> config


def _count_layers(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {int(k[len(prefix) :].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(
            f"text encoder layers under {prefix!r} are missing or not numbered 0..N-1 "
            f"(found {sorted(indices)[:10]}); the file is truncated or has an unknown layout"
        )
    return len(indices)


def _heads(width: int) -> int:
    if width % HEAD_DIM:
        raise ValueError(f"text encoder width {width} is not a multiple of the head size {HEAD_DIM}")
    return width // HEAD_DIM


def infer_clip_config(state_dict: Mapping[str, torch.Tensor], activation: Activation) -> ClipTextConfig:
    """Config of a ``transformer.text_model.*`` state dict (prefix already stripped)."""
    p = "transformer.text_model."
    vocab, width = state_dict[p + "embeddings.token_embedding.weight"].shape
    return ClipTextConfig(
        width=width,
        layers=_count_layers(state_dict, p + "encoder.layers."),
        heads=_heads(width),
        mlp_width=state_dict[p + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        vocab_size=vocab,
        context_length=state_dict[p + "embeddings.position_embedding.weight"].shape[0],
        projection_dim=None,
        activation=activation,
    )


def infer_open_clip_config(state_dict: Mapping[str, torch.Tensor], activation: Activation) -> ClipTextConfig:
    """Config of a ``model.*`` OpenCLIP state dict (prefix already stripped)."""
    vocab, width = state_dict["model.token_embedding.weight"].shape
    projection = state_dict.get("model.text_projection")
    return ClipTextConfig(
        width=width,
        layers=_count_layers(state_dict, "model.transformer.resblocks."),
        heads=_heads(width),
        mlp_width=state_dict["model.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        vocab_size=vocab,
        context_length=state_dict["model.positional_embedding"].shape[0],
        projection_dim=None if projection is None else projection.shape[1],
        activation=activation,
    )
