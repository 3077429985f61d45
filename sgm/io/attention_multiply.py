"""ComfyUI's attention multipliers as weight patches (``sgm.io.lora.WeightPatch``): the q / k / v / out
projections of the UNet's self- or cross-attention, or of the text encoders' self-attention, multiplied by
given factors while a model samples or encodes (``sgm.io.lora.patched`` applies and restores them, as it
does LoRAs); the weights themselves are never changed for good.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from sgm.io.lora import _text_module_names

@dataclass(frozen=True)
class ScaleWeight:
    """A weight patch (``sgm.io.lora.WeightPatch``): the parameter ``key`` of model part ``module``
    (rows ``rows`` of a fused weight) multiplied by ``factor``; the recorded strength is ignored."""

    module: str
    key: str
    factor: float
    rows: tuple[int, int] | None = None

    def patched_weight(self, current: torch.Tensor, strength: float,
                       pristine: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return current * self.factor


def attention_scale_targets(unet: nn.Module, layer: Literal["attn1", "attn2"], q: float, k: float, v: float,
                            out: float) -> tuple[ScaleWeight, ...]:
    """Targets that scale the UNet's self- (``attn1``) or cross-attention (``attn2``) projections:
    to_q/to_k/to_v by q/k/v and to_out.0 by out (weights and biases); factors of 1 are left out."""
    factors = {"to_q": q, "to_k": k, "to_v": v, "to_out.0": out}
    pattern = re.compile(rf"\.{layer}\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$")
    targets = []
    for key, _ in unet.named_parameters():
        match = pattern.search(key)
        if match and factors[match.group(1)] != 1.0:
            targets.append(ScaleWeight("unet", key, float(factors[match.group(1)])))
    return tuple(targets)


def text_attention_scale_targets(towers: Sequence[nn.Module], q: float, k: float, v: float,
                                 out: float) -> tuple[ScaleWeight, ...]:
    """Targets that scale the self-attention q/k/v/out projections (weights and biases) of every
    layer of each text tower (``te0``, ``te1``, ...): transformers' separate ``q_proj`` ... and
    OpenCLIP's fused ``in_proj_weight`` rows alike (``sgm.io.lora``'s CLIP name lookup)."""
    factors = {"q_proj": q, "k_proj": k, "v_proj": v, "out_proj": out}
    pattern = re.compile(r"text_model\.encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)")
    targets: list[ScaleWeight] = []
    for index, tower in enumerate(towers):
        params = dict(tower.named_parameters())
        seen: set[tuple[str, tuple[int, int] | None]] = set()
        for alias, (key, rows) in _text_module_names(tower).items():
            match = pattern.fullmatch(alias)
            if match is None or factors[match.group(1)] == 1.0 or (key, rows) in seen:
                continue
            seen.add((key, rows))
            factor = float(factors[match.group(1)])
            targets.append(ScaleWeight(f"te{index}", key, factor, rows))
            bias = re.sub(r"weight$", "bias", key)
            if bias != key and bias in params:
                targets.append(ScaleWeight(f"te{index}", bias, factor, rows))
    return tuple(targets)
