"""Guidance beyond one CFG pair: dual CFG (two prompts and a negative) and conditions that apply
only over part of the sampling (a timestep range).

Both wrap ``sgm.sampling.guiders.GuidedDenoiser`` and keep its contract
``model(x (B, C, H, W), sigma (B,)) -> denoised`` with a ``model_sampling`` attribute.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from sgm.sampling.denoisers import ModelSampling
from sgm.sampling.guiders import GuidanceHook, GuidedDenoiser
from sgm.sampling.sigma_ops import percent_to_sigma
from sgm.text.conditioning import Condition

DualStyle = Literal["regular", "nested"]
RANGE_KEY = "timestep_range"  # Condition.extra[RANGE_KEY] = (start, end), fractions of sampling


def dual_cfg(positive: torch.Tensor, middle: torch.Tensor, negative: torch.Tensor, cfg_conds: float,
             cfg_middle_negative: float, style: DualStyle = "regular") -> torch.Tensor:
    """Combine three denoised estimates by two guidance scales (ComfyUI's DualCFGGuider).

    regular: D = D_neg + s2 (D_mid - D_neg) + s1 (D_pos - D_mid), CFG (Ho & Salimans 2022, eq. 6)
    from the negative to the middle prompt plus a second term from the middle to the positive.
    nested:  D = D_neg + s2 (D_mid + s1 (D_pos - D_mid) - D_neg), CFG of the guided text estimate.
    """
    if style == "regular":
        return negative + cfg_middle_negative * (middle - negative) + cfg_conds * (positive - middle)
    if style == "nested":
        text = middle + cfg_conds * (positive - middle)
        return negative + cfg_middle_negative * (text - negative)
    raise ValueError(f"style must be 'regular' or 'nested', got {style!r}")


class DualCFGDenoiser:
    """Two prompts (cond1 = positive, cond2 = middle) and a negative, combined by ``dual_cfg``.

    Each branch is a ``GuidedDenoiser`` without guidance (one UNet call per branch per step).
    """

    def __init__(self, unet: nn.Module, model_sampling: ModelSampling, cond1: Sequence[Condition],
                 cond2: Sequence[Condition], negative: Sequence[Condition], cfg_conds: float,
                 cfg_cond2_negative: float, style: DualStyle = "regular",
                 inpaint_concat: torch.Tensor | None = None) -> None:
        if style not in ("regular", "nested"):
            raise ValueError(f"style must be 'regular' or 'nested', got {style!r}")
        self.model_sampling = model_sampling
        self.branches = [GuidedDenoiser(unet, model_sampling, list(conds), None, cfg=1.0,
                                        inpaint_concat=inpaint_concat)
                         for conds in (cond1, cond2, negative)]
        self.cfg_conds, self.cfg_cond2_negative, self.style = float(cfg_conds), float(cfg_cond2_negative), style

    @property
    def unet_calls(self) -> int:
        return sum(b.unet_calls for b in self.branches)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        positive, middle, negative = (branch(x, sigma) for branch in self.branches)
        return dual_cfg(positive, middle, negative, self.cfg_conds, self.cfg_cond2_negative, self.style)


def sigma_range(model_sampling: ModelSampling, start: float, end: float) -> tuple[float, float]:
    """(highest, lowest) sigma of the fractions [start, end] of sampling (0 = pure noise)."""
    return percent_to_sigma(model_sampling, start), percent_to_sigma(model_sampling, end)


def active_conditions(conditions: Sequence[Condition], model_sampling: ModelSampling,
                      sigma: float) -> tuple[int, ...]:
    """Indices of the conditions whose timestep range (``extra[RANGE_KEY]``) holds ``sigma``;
    a condition without a range always applies."""
    active = []
    for index, cond in enumerate(conditions):
        span = cond.extra.get(RANGE_KEY)
        if span is not None:
            high, low = sigma_range(model_sampling, *span)
            if not low <= sigma <= high:
                continue
        active.append(index)
    return tuple(active)


def has_timestep_ranges(*condition_lists: Sequence[Condition]) -> bool:
    return any(RANGE_KEY in c.extra for conds in condition_lists for c in conds)


class TimestepRangeDenoiser:
    """A ``GuidedDenoiser`` whose conditions each apply only inside their timestep range.

    At every call the conditions active at the current sigma are picked (per branch) and a
    ``GuidedDenoiser`` for that selection is used (made once per distinct selection). A branch
    with no active condition at some sigma is an error: the ranges leave a gap.
    """

    def __init__(self, unet: nn.Module, model_sampling: ModelSampling, positive: Sequence[Condition],
                 negative: Sequence[Condition] | None = None, cfg: float = 1.0,
                 inpaint_concat: torch.Tensor | None = None, cfg_rescale: float = 0.0,
                 guidance: GuidanceHook | None = None) -> None:
        self.unet, self.model_sampling = unet, model_sampling
        self.cfg_rescale = cfg_rescale
        self.guidance = guidance  # shared by every selection's denoiser: one run, one memory
        self.positive, self.negative = list(positive), None if negative is None else list(negative)
        self.cfg, self.inpaint_concat = float(cfg), inpaint_concat
        self._denoisers: dict[tuple[tuple[int, ...], tuple[int, ...] | None], GuidedDenoiser] = {}

    def _denoiser_at(self, sigma: float) -> GuidedDenoiser:
        pos = active_conditions(self.positive, self.model_sampling, sigma)
        neg = None if self.negative is None else active_conditions(self.negative, self.model_sampling, sigma)
        for name, conds, picked in (("positive", self.positive, pos), ("negative", self.negative, neg)):
            if conds and not picked:
                raise ValueError(
                    f"no {name} condition applies at sigma {sigma:.4g}: their timestep ranges leave a gap; "
                    "make the ranges (ConditioningSetTimestepRange start/end) cover 0..1 together")
        key = (pos, neg)
        if key not in self._denoisers:
            negative = None if neg is None else [self.negative[i] for i in neg]  # type: ignore[index]
            self._denoisers[key] = GuidedDenoiser(self.unet, self.model_sampling, [self.positive[i] for i in pos],
                                                  negative, cfg=self.cfg, inpaint_concat=self.inpaint_concat,
                                                  cfg_rescale=self.cfg_rescale, guidance=self.guidance)
        return self._denoisers[key]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self._denoiser_at(float(sigma.reshape(-1)[0]))(x, sigma)

    def denoise_with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._denoiser_at(float(sigma.reshape(-1)[0])).denoise_with_uncond(x, sigma)
