"""Pieces every training task shares: settings, learning-rate warm-up, EMA, precision.

Kept free of any particular model so that the VAE, diffusion and LoRA tasks (and the
tests' tiny stand-ins) run through the same loop in :mod:`sgm.training.loop`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from enum import Enum
from typing import Iterator

import torch
from torch import nn


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"  # autocast to bfloat16; no loss scaling needed
    FP16 = "fp16"  # autocast to float16 with a dynamic loss scaler


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation and bookkeeping settings shared by every task.

    steps: optimiser steps in total (a resumed run continues to the same total).
    batch_size: images per micro-batch; ``grad_accumulation`` micro-batches per step.
    warmup_steps: linear learning-rate warm-up from 0, then constant (``decay="cosine"``
        anneals to 10 % of ``lr`` at ``steps``).
    ema_decay: 0 disables the exponential moving average of the weights.
    checkpoint_every / sample_every / log_every: in optimiser steps (0 disables).
    """

    steps: int = 1000
    batch_size: int = 32
    grad_accumulation: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    decay: str = "constant"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: Precision = Precision.FP32
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 0
    log_every: int = 10
    workers: int = 0


def learning_rate(settings: TrainSettings, step: int) -> float:
    """The learning rate for optimiser step ``step`` (0-based): warm-up, then constant/cosine."""
    if settings.warmup_steps > 0 and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    if settings.decay == "cosine":
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return settings.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    if settings.decay != "constant":
        raise ValueError(f"unknown learning-rate decay {settings.decay!r}; use 'constant' or 'cosine'")
    return settings.lr


class EMA:
    """Exponential moving average of a set of named parameters.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so early averages
    are not dominated by the random initialisation.
    """

    def __init__(self, named_parameters: Iterator[tuple[str, nn.Parameter]], decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone().float() for name, p in named_parameters if p.requires_grad
        }

    @torch.no_grad()
    def update(self, named_parameters: Iterator[tuple[str, nn.Parameter]]) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, p in named_parameters:
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, named_parameters: Iterator[tuple[str, nn.Parameter]]) -> None:
        """Write the averaged values into the given (e.g. a copy of the model's) parameters."""
        for name, p in named_parameters:
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.decay = float(state["decay"])  # type: ignore[arg-type]
        self.num_updates = int(state["num_updates"])  # type: ignore[arg-type]
        shadow = state["shadow"]
        assert isinstance(shadow, dict)
        missing = set(self.shadow) - set(shadow)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}...; was it saved by another model?")
        self.shadow = {name: shadow[name].clone().float() for name in self.shadow}


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward-pass autocast context for ``precision`` (a no-op for fp32)."""
    if precision is Precision.FP32:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision is Precision.BF16 else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def grid_image(images: torch.Tensor, columns: int) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (3, rows*H, columns*W) with empty cells black (-1)."""
    count, channels, height, width = images.shape
    rows = math.ceil(count / columns)
    grid = images.new_full((channels, rows * height, columns * width), -1.0)
    for index in range(count):
        row, column = divmod(index, columns)
        grid[:, row * height:(row + 1) * height, column * width:(column + 1) * width] = images[index]
    return grid
