"""Preprocessing and augmentation for captioned images.

All randomness comes from an explicit ``numpy.random.Generator`` so an item is a pure
function of its seed. A horizontal flip mirrors the scene, so it also swaps "left" and
"right" in the caption (:func:`flip_caption`): positional captions stay true.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from PIL import Image


class CropMode(str, Enum):
    CENTER = "center"
    RANDOM = "random"


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``size``, crop a ``size`` square, maybe flip.

    flip_probability: chance of a horizontal flip (the caption's left/right are swapped).
    """

    size: int = 64
    crop: CropMode = CropMode.CENTER
    flip_probability: float = 0.0


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def flip_caption(caption: str) -> str:
    """The caption of the mirrored image: every whole word "left" <-> "right" (case kept)."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, caption)


def resize_and_crop(image: Image.Image, preprocess: Preprocess, rng: np.random.Generator) -> Image.Image:
    """Resize so the short side is ``preprocess.size`` then crop a square (centre or random)."""
    image = image.convert("RGB")
    width, height = image.size
    scale = preprocess.size / min(width, height)
    new_w, new_h = max(preprocess.size, round(width * scale)), max(preprocess.size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    if preprocess.crop is CropMode.RANDOM:
        left = int(rng.integers(0, new_w - preprocess.size + 1))
        top = int(rng.integers(0, new_h - preprocess.size + 1))
    else:
        left, top = (new_w - preprocess.size) // 2, (new_h - preprocess.size) // 2
    return image.crop((left, top, left + preprocess.size, top + preprocess.size))


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_pixels(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8 (values outside the range are clipped)."""
    return image.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def augment(image: Image.Image, caption: str, preprocess: Preprocess,
            rng: np.random.Generator) -> tuple[torch.Tensor, str]:
    """Resize, crop and maybe flip one image; returns ((3, S, S) in [-1, 1], caption)."""
    image = resize_and_crop(image, preprocess, rng)
    pixels = np.asarray(image, dtype=np.uint8)
    if preprocess.flip_probability > 0 and rng.random() < preprocess.flip_probability:
        pixels = pixels[:, ::-1]
        caption = flip_caption(caption)
    return to_tensor(pixels), caption
