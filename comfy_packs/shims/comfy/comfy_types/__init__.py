"""ComfyUI's ``comfy.comfy_types``: the ``IO`` type names and the node base class packs annotate with."""

from __future__ import annotations

import enum as _enum
from typing import Any, TypedDict


class IO(str, _enum.Enum):
    STRING = "STRING"
    IMAGE = "IMAGE"
    MASK = "MASK"
    LATENT = "LATENT"
    BOOLEAN = "BOOLEAN"
    INT = "INT"
    FLOAT = "FLOAT"
    COMBO = "COMBO"
    CONDITIONING = "CONDITIONING"
    SAMPLER = "SAMPLER"
    SIGMAS = "SIGMAS"
    GUIDER = "GUIDER"
    NOISE = "NOISE"
    CLIP = "CLIP"
    CONTROL_NET = "CONTROL_NET"
    VAE = "VAE"
    MODEL = "MODEL"
    CLIP_VISION = "CLIP_VISION"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    ANY = "*"
    NUMBER = "FLOAT,INT"
    PRIMITIVE = "STRING,FLOAT,INT,BOOLEAN"

    def __str__(self) -> str:
        return self.value


class InputTypeDict(TypedDict, total=False):
    required: dict[str, Any]
    optional: dict[str, Any]
    hidden: dict[str, Any]


class ComfyNodeABC:
    """Base class ComfyUI offers for type hints; nothing to implement here."""


class CheckLazyMixin:
    def check_lazy_status(self, **kwargs: Any) -> list[str]:
        return [name for name, value in kwargs.items() if value is None]
