"""Conditioning values passed from text encoders to guiders.

A ``Condition`` is one prompt's worth of conditioning as the UNet consumes it. Nodes pass
lists of them (``CONDITIONING``); guiders combine them (areas, strengths, masks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass(frozen=True)
class Area:
    """A rectangle in latent pixels (x, y, width, height) where a condition applies."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Condition:
    """One prompt's conditioning.

    context: (B, T, C) cross-attention states (T = 77 * chunks).
    pooled:  (B, P) pooled text embedding, or None where the family has none.
    y:       (B, adm_in_channels) SDXL vector conditioning, or None.
    area:    optional region the condition is restricted to.
    strength: multiplier of this condition's contribution.
    mask:    optional (B or 1, H, W) latent-resolution mask in [0, 1].
    extra:   free-form metadata (e.g. the prompt text) that never reaches the UNet.
    control: a ControlNet / T2I-Adapter chain applied while this condition is evaluated
             (``sgm.nets.controlnet``), or None.
    unclip:  image embeddings for unCLIP models, one ``(embeds (B, D), strength, noise_augmentation)``
             per unCLIPConditioning, turned into the vector ``y`` when sampling.
    gligen:  GLIGEN grounding, ``(model, ((phrase_embedding (1, D), height, width, y, x), ...))``
             with boxes in latent pixels (``sgm.nets.gligen``), or None.
    """

    context: torch.Tensor
    pooled: torch.Tensor | None = None
    y: torch.Tensor | None = None
    area: Area | None = None
    strength: float = 1.0
    mask: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    control: Any = None
    unclip: tuple[tuple[torch.Tensor, float, float], ...] = ()
    gligen: Any = None

    def with_(self, **changes: Any) -> "Condition":
        """A copy with some fields replaced (conditions are never mutated)."""
        return replace(self, **changes)
